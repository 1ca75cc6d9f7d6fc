"""overlay collector: MTU arithmetic, rtnetlink wire parsers, topology decisions. No kernel needed:
fixtures are files the kernel wrote (see fixtures README)."""

from __future__ import annotations

import re
import struct

import pytest

from collectors import netlink, overlay
from collectors import overlay_rtnl as rtnl
from collectors.overlay import (
    TunnelConfig,
    build_topology,
    encapsulation_overhead,
    mtu_mismatch,
    needs_refresh,
    tunnel_config,
)
from exporter.contract import Context
from tests.helpers import FIXTURES

FX = FIXTURES / "overlay"


def fixture_link(name: str) -> rtnl.LinkSummary:
    return rtnl.parse_link(FX.joinpath("netlink", f"link-{name}.bin").read_bytes())


# --- MTU arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, expected",
    [
        # vxlan: outer IP + UDP 8 + VXLAN 8 + inner Ethernet 14 (the kernel's VXLAN_HEADROOM)
        (TunnelConfig("vxlan", outer_family=4), 50),
        (TunnelConfig("vxlan", outer_family=6), 70),
        (TunnelConfig("vxlan"), 50),  # family unknown: IPv4, as the kernel assumes
        (TunnelConfig("vxlan", outer_family=4, no_inner_ethernet=True), 36),  # VXLAN-GPE
        (TunnelConfig("geneve", outer_family=4), 50),
        (TunnelConfig("geneve", outer_family=6), 70),
        (TunnelConfig("wireguard", outer_family=4), 60),
        (TunnelConfig("wireguard", outer_family=6), 80),
        (TunnelConfig("ipip", outer_family=4), 20),
        (TunnelConfig("sit", outer_family=4), 20),
        (TunnelConfig("ipip", outer_family=4, encap_type=overlay.ENCAP_FOU), 28),
        (TunnelConfig("ipip", outer_family=4, encap_type=overlay.ENCAP_GUE), 32),
        (TunnelConfig("ip6tnl", outer_family=6), 48),  # + 8 byte encapsulation limit option
        (TunnelConfig("ip6tnl", outer_family=6, ignore_encap_limit=True), 40),
        (TunnelConfig("gre", outer_family=4), 24),
        (TunnelConfig("gre", outer_family=4, gre_oflags=overlay.GRE_KEY), 28),
        (
            TunnelConfig(
                "gre", outer_family=4, gre_oflags=overlay.GRE_KEY | overlay.GRE_CSUM | overlay.GRE_SEQ
            ),
            36,
        ),
        (TunnelConfig("gretap", outer_family=4), 38),
        (TunnelConfig("ip6gre", outer_family=6), 52),
        (TunnelConfig("ip6gretap", outer_family=6, ignore_encap_limit=True), 58),
    ],
)
def test_encapsulation_overhead_per_kind(cfg, expected):
    assert encapsulation_overhead(cfg) == expected


@pytest.mark.parametrize(
    "cfg",
    [
        TunnelConfig("erspan", outer_family=4),
        TunnelConfig("bareudp"),
        TunnelConfig("xfrm"),
        TunnelConfig("ipip", outer_family=4, encap_type=3),  # MPLS encapsulation: not fixed
    ],
)
def test_overhead_unknown_when_config_does_not_fix_it(cfg):
    assert encapsulation_overhead(cfg) is None


def test_mtu_mismatch_boundaries():
    assert not mtu_mismatch(1450, 50, 1500)  # exactly fits: the kernel's own default
    assert mtu_mismatch(1451, 50, 1500)
    assert mtu_mismatch(1500, 50, 1500)  # vxlan without dev keeps 1500
    assert mtu_mismatch(1450, 50, 1400)  # underlay lowered later
    assert not mtu_mismatch(1430, 70, 1500)
    assert mtu_mismatch(1450, 70, 1500)  # IPv6 underlay needs 20 more


# --- rtnetlink wire format (messages captured from the kernel) --------------------------------


def test_parse_link_veth_and_vxlan():
    ul0, vx0 = fixture_link("ul0"), fixture_link("vx0")
    assert (ul0.index, ul0.name, ul0.mtu, ul0.kind) == (3, "ul0", 1500, "veth")
    assert (vx0.name, vx0.mtu, vx0.kind, vx0.link_netnsid) == ("vx0", 1450, "vxlan", None)


def test_tunnel_config_of_captured_vxlan_devices():
    cfg = tunnel_config(fixture_link("vx0"))
    assert (cfg.vni, cfg.port, cfg.link) == ("42", "4789", 3)
    assert (cfg.remote, cfg.local, cfg.outer_family) == ("198.18.0.2", "198.18.0.1", 4)
    cfg6 = tunnel_config(fixture_link("vx6"))
    assert (cfg6.vni, cfg6.remote, cfg6.outer_family, cfg6.link) == ("7", "2001:db8::2", 6, None)
    assert encapsulation_overhead(cfg6) == 70
    ext = tunnel_config(fixture_link("vxe"))
    assert (ext.vni, ext.port, ext.remote, ext.local) == ("external", "8472", None, None)


def test_parse_stats64_field_order():
    ula = rtnl.parse_stats64(FX.joinpath("netlink", "stats-ula.bin").read_bytes())
    assert (ula["rx_packets"], ula["tx_packets"], ula["rx_bytes"], ula["tx_bytes"]) == (5, 5, 794, 710)
    assert (ula["tx_dropped"], ula["rx_dropped"], ula["tx_errors"]) == (5, 0, 0)
    vx2 = rtnl.parse_stats64(FX.joinpath("netlink", "stats-vx2.bin").read_bytes())
    assert (vx2["tx_errors"], vx2["tx_carrier_errors"], vx2["tx_dropped"]) == (4, 4, 0)
    assert len(vx2) == len(rtnl.STATS64_FIELDS)  # kernel 6.18 sends all 25 fields


def test_parse_stats64_accepts_shorter_struct_of_older_kernels():
    msg = bytearray(FX.joinpath("netlink", "stats-vx2.bin").read_bytes())
    # cut the attribute to the 23 fields of kernels before 4.6 (no rx_nohandler, no otherhost)
    attr_at = rtnl.NLMSGHDR.size + rtnl.IFSTATSMSG.size
    netlink.NLA.pack_into(msg, attr_at, 4 + 23 * 8, rtnl.IFLA_STATS_LINK_64)
    short = msg[: attr_at + 4 + 23 * 8]
    rtnl.NLMSGHDR.pack_into(short, 0, len(short), rtnl.RTM_NEWSTATS, 0, 0, 0)
    stats = rtnl.parse_stats64(bytes(short))
    assert len(stats) == 23 and stats["tx_carrier_errors"] == 4


def test_truncated_messages_raise_format_error():
    data = FX.joinpath("netlink", "link-vx0.bin").read_bytes()
    with pytest.raises(rtnl.NetlinkFormatError):
        list(rtnl.iter_messages(data[:100]))  # header says 1340 bytes
    with pytest.raises(rtnl.NetlinkFormatError):
        rtnl.parse_link(data[:20])
    with pytest.raises(rtnl.NetlinkFormatError):
        list(rtnl.iter_attrs(b"\xff\x00\x03\x00abcd"))


def test_iter_messages_splits_a_dump_buffer():
    parts = [FX.joinpath("netlink", f"link-{n}.bin").read_bytes() for n in ("ul0", "vx0", "vx6")]
    found = [(t, rtnl.parse_link(m).name) for t, _f, _s, m in rtnl.iter_messages(b"".join(parts))]
    assert found == [(rtnl.RTM_NEWLINK, "ul0"), (rtnl.RTM_NEWLINK, "vx0"), (rtnl.RTM_NEWLINK, "vx6")]


# --- topology decisions -----------------------------------------------------------------------


def no_lookup(_address):
    raise AssertionError("no route/address lookup expected")


def test_underlay_from_link_attribute_without_lookups():
    links = [fixture_link("ul0"), fixture_link("vx0")]
    topo = build_topology(links, lambda n: True, no_lookup, no_lookup)
    (t,) = topo.tunnels
    assert (t.name, t.underlay, t.underlay_index, t.underlay_mtu, t.overhead) == ("vx0", "ul0", 3, 1500, 50)
    assert not t.via_route and not topo.route_dependent
    assert topo.watched == {3, t.index}


def test_underlay_by_route_then_unknown():
    links = [fixture_link("ul0"), fixture_link("vx6"), fixture_link("vxe")]
    asked = []

    def route_oif(addr):
        asked.append(addr)
        return 3

    topo = build_topology(links, lambda n: True, route_oif, no_lookup)
    by_name = {t.name: t for t in topo.tunnels}
    assert asked == ["2001:db8::2"]
    assert (by_name["vx6"].underlay, by_name["vx6"].via_route) == ("ul0", True)
    # external (flow-based) device: no remote, no local, no dev: said so, not guessed
    assert (by_name["vxe"].underlay, by_name["vxe"].underlay_mtu) == ("unknown", None)
    assert topo.route_dependent


def test_unroutable_remote_gives_unknown_underlay():
    topo = build_topology([fixture_link("vx6")], lambda n: True, lambda a: None, no_lookup)
    assert topo.tunnels[0].underlay == "unknown"


def test_route_to_vanished_index_gives_unknown_underlay():
    topo = build_topology([fixture_link("vx6")], lambda n: True, lambda a: 999, no_lookup)
    assert topo.tunnels[0].underlay == "unknown"


def test_non_tunnel_devices_and_filtered_names_are_skipped():
    links = [fixture_link("ul0"), fixture_link("vx0"), fixture_link("vx6")]
    topo = build_topology(links, lambda n: n != "vx6", no_lookup, no_lookup)
    assert [t.name for t in topo.tunnels] == ["vx0"]


def _event(kind: str | None, index: int, mtype: int = rtnl.RTM_NEWLINK) -> rtnl.Event:
    return rtnl.Event(mtype, rtnl.LinkSummary(index, f"if{index}", 1500, kind, None, b""))


def test_refresh_only_for_relevant_events():
    topo = build_topology([fixture_link("ul0"), fixture_link("vx0")], lambda n: True, no_lookup, no_lookup)
    vx_index = topo.tunnels[0].index
    assert not needs_refresh(topo, [])
    assert not needs_refresh(topo, [_event("veth", 500), _event(None, 501, rtnl.RTM_DELLINK)])
    assert needs_refresh(topo, [_event("vxlan", 502)])  # a new tunnel
    assert needs_refresh(topo, [_event("veth", 3)])  # the underlay changed (MTU, name, ...)
    assert needs_refresh(topo, [_event("vxlan", vx_index, rtnl.RTM_DELLINK)])
    route_event = rtnl.Event(rtnl.RTM_NEWROUTE, None)
    assert not needs_refresh(topo, [route_event])  # underlays all bound by dev: routes irrelevant
    by_route = build_topology([fixture_link("vx6")], lambda n: True, lambda a: None, no_lookup)
    assert needs_refresh(by_route, [route_event])


# --- options ----------------------------------------------------------------------------------


def test_include_exclude_are_unanchored_regexes():
    c = overlay.OverlayCollector(
        Context(options={"device-include": re.compile("vx|flannel"), "device-exclude": re.compile("^vx9")})
    )
    assert c.selected("flannel.1") and c.selected("vx0")
    assert not c.selected("vx9") and not c.selected("tunl0")
    default = overlay.OverlayCollector(Context())
    assert default.selected("anything")


def test_options_are_declared_for_the_cli():
    names = {(o.name, o.kind) for o in overlay.OverlayCollector.options}
    assert names == {
        ("device-include", "regex"),
        ("device-exclude", "regex"),
        ("topology-refresh-interval", "duration"),
    }


def synthesized_link(kind: str, index: int, data: list[tuple[int, bytes]]) -> rtnl.LinkSummary:
    """An RTM_NEWLINK laid out as in linux/if_link.h and if_tunnel.h. Only for kinds whose module
    this test kernel lacks (ip_gre, ip6_gre): vxlan and veth fixtures above are captured."""
    info = netlink.attribute(rtnl.IFLA_INFO_KIND, kind.encode() + b"\0")
    info += netlink.attribute(
        overlay.IFLA_INFO_DATA | 0x8000, b"".join(netlink.attribute(t, p) for t, p in data)
    )
    body = rtnl.IFINFOMSG.pack(0, 778, index, 0, 0)
    body += netlink.attribute(rtnl.IFLA_IFNAME, f"{kind}1".encode() + b"\0")
    body += netlink.attribute(rtnl.IFLA_MTU, struct.pack("=I", 1400))
    body += netlink.attribute(rtnl.IFLA_LINKINFO | 0x8000, info)
    header = rtnl.NLMSGHDR.pack(rtnl.NLMSGHDR.size + len(body), rtnl.RTM_NEWLINK, 0, 0, 0)
    return rtnl.parse_link(header + body)


def test_gre_key_and_checksum_flags_are_read_big_endian():
    flags = struct.pack(">H", overlay.GRE_KEY | overlay.GRE_CSUM)
    gre = synthesized_link(
        "gre",
        9,
        [(1, struct.pack("=I", 3)), (3, flags), (6, bytes([198, 18, 0, 1])), (7, bytes([198, 18, 0, 2]))],
    )
    cfg = tunnel_config(gre)
    assert (cfg.link, cfg.remote, cfg.local, cfg.outer_family) == (3, "198.18.0.2", "198.18.0.1", 4)
    assert cfg.gre_oflags == overlay.GRE_KEY | overlay.GRE_CSUM
    assert encapsulation_overhead(cfg) == 20 + 4 + 4 + 4
    ip6gre = synthesized_link("ip6gretap", 10, [(3, struct.pack(">H", overlay.GRE_KEY))])
    cfg6 = tunnel_config(ip6gre)
    assert cfg6.gre_oflags == overlay.GRE_KEY
    assert encapsulation_overhead(cfg6) == 40 + 8 + 4 + 4 + 14


def test_a_tunnel_message_that_does_not_decode_is_a_parse_error_not_a_crash():
    import dataclasses

    from exporter.contract import ParseError

    good = fixture_link("vx0")
    for cut in (20, 40, len(good.message) - 3):
        broken = dataclasses.replace(good, message=good.message[:cut])
        try:
            tunnel_config(broken)
        except ParseError:
            pass


def test_build_topology_keeps_a_tunnel_whose_attributes_do_not_decode():
    import dataclasses

    from collectors.overlay import build_topology

    broken = dataclasses.replace(fixture_link("vx0"), message=b"\x00" * 7)
    topo = build_topology([broken], lambda name: True, lambda a: None, lambda a: None)
    assert [t.name for t in topo.tunnels] == ["vx0"]
