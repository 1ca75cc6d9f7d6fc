"""IPVS collector: /proc/net/ip_vs parsing on fixtures in the kernel's printf formats, the netlink
decoder on messages that pyroute2 encodes the way the kernel lays them out, source selection and
fallback, the series cap, black-hole gauges, kernel modules and sysctls."""

from __future__ import annotations

import errno
import logging
import shutil
import socket
import struct

import pytest
from pyroute2.netlink import ctrlmsg, nlmsgerr
from pyroute2.netlink.generic.ipvs import ipvsmsg
from pyroute2.netlink.marshal import Marshal

from collectors import ipvs, netlink
from exporter.contract import Context, ParseError, Paths, SourceUnavailable
from tests.helpers import FIXTURES, collector_metrics, samples, value

FIX = FIXTURES / "ipvs"


def scrape(collector) -> dict:
    """Exposition text as the exporter encodes it, parsed back into {(name, labels): value}."""
    return collector_metrics(collector)


def make(tree: str = "full", sysfs: str | None = None, **options):
    opts = {"source": "procfs", **options}
    paths = Paths(procfs=str(FIX / tree), sysfs=str(sysfs or FIX / "sysfs"))
    collector = ipvs.IpvsCollector(Context(paths=paths, options=opts))
    collector.probe()
    return collector


# --- /proc/net/ip_vs ----------------------------------------------------------------------------


def by_identity(services):
    return {(s.protocol, s.address, s.port, s.fwmark): s for s in services}


def test_parse_full_table_identities_and_flags():
    services = ipvs.parse_ip_vs((FIX / "full/net/ip_vs").read_text(), want_dests=True)
    table = by_identity(services)
    assert len(services) == 11
    api = table[("TCP", "10.96.0.1", 443, 0)]
    assert (api.scheduler, api.backends, api.active, api.inactive, api.weight_zero) == ("rr", 2, 14, 43, 1)
    # the "ops" flag and "persistent <timeout> <netmask>" never leak into the scheduler
    ops = table[("UDP", "10.96.5.5", 514, 0)]
    assert (ops.scheduler, ops.one_packet, ops.persistent) == ("rr", True, False)
    sticky = table[("TCP", "10.96.7.7", 8080, 0)]
    assert (sticky.scheduler, sticky.persistent, sticky.one_packet) == ("sh", True, False)
    # IPv6 %pI6 (full form) becomes the compressed form
    v6 = table[("TCP", "2001:db8::1", 443, 0)]
    assert (v6.scheduler, v6.backends, v6.active, v6.inactive) == ("wrr", 2, 10, 2)
    assert v6.dests[0] == ("2001:db8:1::a", 8443, "masq", 100, 7, 2)
    assert table[("UDP", "fd00:10:96::a", 53, 0)].backends == 0
    # firewall-mark services: hex mark, no protocol/address/port
    assert table[("", "", 0, 1)].scheduler == "wlc"
    mark10 = table[("", "", 0, 10)]
    assert (mark10.scheduler, mark10.one_packet, mark10.persistent, mark10.backends) == ("lc", True, True, 0)


def test_parse_forwarding_methods_and_zero_weights():
    table = by_identity(ipvs.parse_ip_vs((FIX / "full/net/ip_vs").read_text(), want_dests=True))
    assert [d[2] for d in table[("TCP", "10.96.7.7", 8080, 0)].dests] == ["route", "tunnel"]
    assert table[("TCP", "198.18.0.1", 30080, 0)].dests == [("198.18.0.1", 8080, "local", 1, 1, 0)]
    assert table[("TCP", "10.96.0.1", 443, 0)].dests[1] == ("198.18.0.12", 6443, "masq", 0, 2, 40)
    all_zero = table[("TCP", "10.96.9.9", 80, 0)]
    assert (all_zero.backends, all_zero.weight_zero) == (2, 2)


def test_parse_without_dests_keeps_sums_only():
    services = ipvs.parse_ip_vs((FIX / "full/net/ip_vs").read_text())
    assert all(s.dests is None for s in services)
    assert sum(s.backends for s in services) == 13


def test_service_line_cache_follows_the_table():
    text = (FIX / "full/net/ip_vs").read_text()
    known: dict = {}
    first = ipvs.parse_ip_vs(text, known=known)
    lines = {k for k in known if "\n" not in k}
    assert len(lines) == len(first) == 11  # one entry per service line
    blocks = {k for k in known if "\n" in k}  # each service with backends: its whole block
    assert len(blocks) == sum(1 for s in first if s.backends)
    again = ipvs.parse_ip_vs(text, known=known)
    assert again == first
    assert all(a.labels is b.labels for a, b in zip(first, again))  # parsed once, reused
    # a service whose connection counts changed is summed again, with the same labels
    changed = text.replace("Masq    1      12         3", "Masq    1      13         3", 1)
    third = ipvs.parse_ip_vs(changed, known=known)
    assert third[0].active == first[0].active + 1 and third[0].labels is first[0].labels
    assert third[1:] == first[1:]
    ipvs.parse_ip_vs((FIX / "empty/net/ip_vs").read_text(), known=known)
    assert known == {}  # services that disappeared are forgotten


def test_parse_header_only_table():
    assert ipvs.parse_ip_vs((FIX / "empty/net/ip_vs").read_text()) == []


@pytest.mark.parametrize(
    "text, line",
    [
        ("garbage\n", 1),
        ((FIX / "malformed/net/ip_vs").read_text(), 5),
        ((FIX / "empty/net/ip_vs").read_text() + "  -> 0A000001:01BB      Masq    1      0          0\n", 4),
        ((FIX / "empty/net/ip_vs").read_text() + "TCP  ZZZZZZZZ:01BB rr  \n", 4),
        ((FIX / "empty/net/ip_vs").read_text() + "TCP  [2001:0db8::zz]:01BB rr \n", 4),
        ((FIX / "empty/net/ip_vs").read_text() + "TCP  0A000001:01BB\n", 4),
    ],
)
def test_parse_errors_name_file_and_line(text, line):
    with pytest.raises(ParseError, match=rf"^/x/ip_vs:{line}: "):
        ipvs.parse_ip_vs(text, "/x/ip_vs")


def test_parse_ip_vs_stats_hex_counters():
    totals = ipvs.parse_ip_vs_stats((FIX / "full/net/ip_vs_stats").read_text())
    assert totals == (0x1A2B, 0x123456789, 0xABCDEF, 0x1122334455667788, 0xFEDCBA98)
    with pytest.raises(ParseError, match="ip_vs_stats:3"):
        ipvs.parse_ip_vs_stats("   Total\n   Conns\n 1 2 3\n")


# --- the collector on fixture trees ----------------------------------------------------------


def test_collect_totals_table_shape_and_black_holes():
    m = scrape(make())
    assert value(m, "netstack_ipvs_source_info", source="procfs") == 1
    assert value(m, "netstack_ipvs_connections_total") == 0x1A2B
    assert value(m, "netstack_ipvs_incoming_bytes_total") == 0x1122334455667788  # exact, past 2**53
    assert value(m, "netstack_ipvs_outgoing_bytes_total") == 0xFEDCBA98
    assert value(m, "netstack_ipvs_services") == 11
    assert value(m, "netstack_ipvs_backends") == 13
    # TCP 10.96.0.10:53, UDP [fd00:10:96::a]:53 and fwmark 10 have no backend
    assert value(m, "netstack_ipvs_services_without_backends") == 3
    # TCP 10.96.9.9:80 has backends, all with weight 0
    assert value(m, "netstack_ipvs_services_without_weighted_backends") == 1
    assert value(m, "netstack_ipvs_backends_weight_zero") == 3
    assert value(m, "netstack_ipvs_series_capped") == 0


def test_collect_per_service_labels():
    m = scrape(make())
    assert (
        value(
            m,
            "netstack_ipvs_service_backends",
            protocol="TCP",
            address="10.96.0.10",
            port="53",
            scheduler="rr",
        )
        == 0
    )
    assert (
        value(m, "netstack_ipvs_service_connections_active", protocol="TCP", address="10.96.0.1", port="443")
        == 14
    )
    assert (
        value(
            m, "netstack_ipvs_service_connections_inactive", protocol="TCP", address="10.96.0.1", port="443"
        )
        == 43
    )
    assert value(m, "netstack_ipvs_service_backends", address="2001:db8::1", port="443") == 2
    fw = samples(m, "netstack_ipvs_service_backends", fwmark="10")
    assert list(fw.items()) == [
        (("netstack_ipvs_service_backends", (("fwmark", "10"), ("scheduler", "lc"))), 0)
    ]
    assert len(samples(m, "netstack_ipvs_service_backends")) == 11
    # procfs has no per-service traffic counters, and backends are off by default
    assert not samples(m, "netstack_ipvs_service_connections_total")
    assert not samples(m, "netstack_ipvs_backend_weight")


def test_collect_backends_option():
    m = scrape(make(backends=True))
    assert len(samples(m, "netstack_ipvs_backend_weight")) == 13
    assert (
        value(
            m,
            "netstack_ipvs_backend_weight",
            address="10.96.0.1",
            port="443",
            backend_address="198.18.0.12",
            backend_port="6443",
            forward="masq",
        )
        == 0
    )
    assert value(m, "netstack_ipvs_backend_connections_inactive", backend_address="198.18.0.12") == 40
    assert (
        value(
            m,
            "netstack_ipvs_backend_connections_active",
            fwmark="1",
            backend_address="198.18.5.1",
            forward="route",
        )
        == 2
    )
    assert (
        value(
            m,
            "netstack_ipvs_backend_connections_active",
            address="2001:db8::1",
            backend_address="2001:db8:1::b",
        )
        == 3
    )


def test_cap_drops_backends_first_then_services():
    # 11 services x 3 series = 33; 13 backends x 3 series = 39
    m = scrape(make(backends=True, **{"max-series": 33}))
    assert value(m, "netstack_ipvs_series_capped") == 1
    assert not samples(m, "netstack_ipvs_backend_weight")
    assert len(samples(m, "netstack_ipvs_service_backends")) == 11

    m = scrape(make(backends=True, **{"max-series": 32}))
    assert value(m, "netstack_ipvs_series_capped") == 1
    assert not samples(m, "netstack_ipvs_service_backends")
    assert not samples(m, "netstack_ipvs_backend_weight")
    # totals and table shape survive the cap
    assert value(m, "netstack_ipvs_services") == 11
    assert value(m, "netstack_ipvs_services_without_backends") == 3
    assert value(m, "netstack_ipvs_connections_total") == 0x1A2B

    m = scrape(make(backends=True, **{"max-series": 72}))
    assert value(m, "netstack_ipvs_series_capped") == 0
    assert len(samples(m, "netstack_ipvs_backend_weight")) == 13


def test_empty_table():
    m = scrape(make("empty"))
    assert value(m, "netstack_ipvs_services") == 0
    assert value(m, "netstack_ipvs_services_without_backends") == 0
    assert value(m, "netstack_ipvs_connections_total") == 0
    assert not samples(m, "netstack_ipvs_service_backends")


def test_fwmark_shared_by_ipv4_and_ipv6_is_one_series():
    m = scrape(make("fwmark_dup", backends=True))
    assert value(m, "netstack_ipvs_services") == 2
    assert value(m, "netstack_ipvs_service_backends", fwmark="7") == 2
    assert value(m, "netstack_ipvs_service_connections_active", fwmark="7") == 3
    assert len(samples(m, "netstack_ipvs_backend_weight", fwmark="7")) == 2


def test_services_kept_between_collections_are_not_summed_twice():
    """The default parser uses a service's object again while its block is unchanged: merging a
    firewall-mark pair must not add into it, and counters a collection set are not carried into
    one that has none (netlink lost: procfs this time)."""
    collector = make("fwmark_dup")  # no per-backend series: the summing parser
    for _ in range(3):
        m = scrape(collector)
        assert value(m, "netstack_ipvs_service_backends", fwmark="7") == 2
        assert value(m, "netstack_ipvs_service_connections_active", fwmark="7") == 3
    text = (FIX / "full/net/ip_vs").read_text()
    known: dict = {}
    first = ipvs.parse_ip_vs(text, known=known)
    for n, svc in enumerate(first):
        svc.stats = (n, 0, 0, 0, 0)
    again = ipvs.parse_ip_vs(text, known=known)
    assert any(a is b for a, b in zip(first, again))  # kept
    assert all(svc.stats is None for svc in again)


def test_malformed_table_fails_the_collection_with_one_line():
    collector = make("malformed")
    with pytest.raises(ParseError) as e:
        scrape(collector)
    assert "\n" not in str(e.value) and "ip_vs:5" in str(e.value)


def test_missing_ip_vs_stats_drops_only_totals(tmp_path):
    (tmp_path / "net").mkdir()
    shutil.copy(FIX / "full/net/ip_vs", tmp_path / "net/ip_vs")
    paths = Paths(procfs=str(tmp_path), sysfs=str(tmp_path))
    collector = ipvs.IpvsCollector(Context(paths=paths, options={"source": "procfs"}))
    collector.probe()
    m = scrape(collector)
    assert not samples(m, "netstack_ipvs_connections_total")
    assert value(m, "netstack_ipvs_services") == 11


def test_table_removed_after_probe_is_unavailable(tmp_path):
    (tmp_path / "net").mkdir()
    shutil.copy(FIX / "full/net/ip_vs", tmp_path / "net/ip_vs")
    collector = ipvs.IpvsCollector(Context(paths=Paths(procfs=str(tmp_path)), options={"source": "procfs"}))
    collector.probe()
    (tmp_path / "net/ip_vs").unlink()
    with pytest.raises(SourceUnavailable, match="ip_vs does not exist"):
        list(collector.collect())


# --- kernel modules and sysctls -------------------------------------------------------------------


def test_modules_from_proc_modules_and_builtin_from_sysfs():
    m = scrape(make())
    for module in ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh"):
        assert value(m, "netstack_kernel_module_loaded", module=module) == 1
    # nf_conntrack is not in /proc/modules; /sys/module/nf_conntrack says it is built in
    assert value(m, "netstack_kernel_module_loaded", module="nf_conntrack") == 1


def test_modules_absent_and_no_proc_modules(tmp_path):
    (tmp_path / "net").mkdir()
    shutil.copy(FIX / "full/net/ip_vs", tmp_path / "net/ip_vs")  # no /proc/modules: CONFIG_MODULES=n
    paths = Paths(procfs=str(tmp_path), sysfs=str(FIX / "sysfs"))
    collector = ipvs.IpvsCollector(
        Context(paths=paths, options={"source": "procfs", "modules": ["ip_vs", "nf_conntrack", "ip_vs_lc"]})
    )
    collector.probe()
    m = scrape(collector)
    assert samples(m, "netstack_kernel_module_loaded") == {
        ("netstack_kernel_module_loaded", (("module", "ip_vs"),)): 0,
        ("netstack_kernel_module_loaded", (("module", "nf_conntrack"),)): 1,
        ("netstack_kernel_module_loaded", (("module", "ip_vs_lc"),)): 0,
    }


def test_sysctls_present_and_absent(tmp_path):
    m = scrape(make())
    assert value(m, "netstack_ipvs_sysctl", sysctl="net.ipv4.vs.conntrack") == 1
    assert value(m, "netstack_ipvs_sysctl", sysctl="net.ipv4.vs.expire_nodest_conn") == 1
    assert value(m, "netstack_ipvs_sysctl", sysctl="net.ipv4.conf.all.arp_ignore") == 1
    assert value(m, "netstack_ipvs_sysctl", sysctl="net.ipv4.conf.all.arp_announce") == 2

    shutil.copytree(FIX / "full", tmp_path / "proc")
    shutil.rmtree(tmp_path / "proc/sys/net/ipv4/vs")
    collector = ipvs.IpvsCollector(
        Context(paths=Paths(procfs=str(tmp_path / "proc")), options={"source": "procfs"})
    )
    collector.probe()
    m = scrape(collector)
    assert set(k[1][0][1] for k in samples(m, "netstack_ipvs_sysctl")) == {
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
    }


# --- netlink: kernel-shaped messages encoded by pyroute2 ------------------------------------------

FAMILY = 0x23


def _raw_addr(cls):
    # The kernel always sends union nf_inet_addr (16 bytes); pyroute2 would send 4 for IPv4.
    return tuple((n, "cdata" if n.endswith("_ATTR_ADDR") else t) for n, t in cls.nla_map)


class kernel_ipvsmsg(ipvsmsg):
    class service(ipvsmsg.service):
        nla_map = _raw_addr(ipvsmsg.service)

    class dest(ipvsmsg.dest):
        nla_map = _raw_addr(ipvsmsg.dest)


def inet(address: str) -> tuple[int, bytes]:
    if ":" in address:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address)
    return socket.AF_INET, socket.inet_aton(address) + b"\0" * 12


def stats_attrs(values, wide=True):
    names = ("CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES", "CPS", "INPPS", "OUTPPS", "INBPS", "OUTBPS")
    return {"attrs": [(f"IPVS_STATS_ATTR_{n}", v) for n, v in zip(names, list(values) + [0] * 5)]}


def service_attrs(
    address=None, port=0, protocol=6, fwmark=0, family=None, sched="rr", flags=0x2, stats=(0, 0, 0, 0, 0)
):
    """What ip_vs_genl_fill_service() puts in IPVS_CMD_ATTR_SERVICE."""
    if fwmark:
        attrs = [("IPVS_SVC_ATTR_AF", family or socket.AF_INET), ("IPVS_SVC_ATTR_FWMARK", fwmark)]
    else:
        af, raw = inet(address)
        attrs = [
            ("IPVS_SVC_ATTR_AF", af),
            ("IPVS_SVC_ATTR_PROTOCOL", protocol),
            ("IPVS_SVC_ATTR_ADDR", raw),
            ("IPVS_SVC_ATTR_PORT", port),
        ]
    # 32-bit STATS hold the low bits, as in ip_vs_genl_fill_stats(); STATS64 the full values
    low = [v & 0xFFFFFFFF for v in stats[:3]] + list(stats[3:])
    return attrs + [
        ("IPVS_SVC_ATTR_SCHED_NAME", sched),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", 0),
        ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255"),
        ("IPVS_SVC_ATTR_STATS", stats_attrs(low)),
        ("IPVS_SVC_ATTR_STATS64", stats_attrs(stats)),
    ]


def dest_attrs(address, port, fwd=0, weight=1, active=0, inactive=0):
    """What ip_vs_genl_fill_dest() puts in IPVS_CMD_ATTR_DEST (ADDR_FAMILY comes last)."""
    af, raw = inet(address)
    return [
        ("IPVS_DEST_ATTR_ADDR", raw),
        ("IPVS_DEST_ATTR_PORT", port),
        ("IPVS_DEST_ATTR_FWD_METHOD", fwd),
        ("IPVS_DEST_ATTR_WEIGHT", weight),
        ("IPVS_DEST_ATTR_TUN_TYPE", 0),
        ("IPVS_DEST_ATTR_TUN_PORT", 0),
        ("IPVS_DEST_ATTR_TUN_FLAGS", 0),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
        ("IPVS_DEST_ATTR_ACTIVE_CONNS", active),
        ("IPVS_DEST_ATTR_INACT_CONNS", inactive),
        ("IPVS_DEST_ATTR_PERSIST_CONNS", 0),
        ("IPVS_DEST_ATTR_STATS", stats_attrs((1, 2, 3, 4, 5))),
        ("IPVS_DEST_ATTR_STATS64", stats_attrs((1, 2, 3, 4, 5))),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", af),
    ]


def encode(cmd: int, nest: str, attrs, seq: int) -> bytes:
    msg = kernel_ipvsmsg()
    msg["cmd"], msg["version"] = cmd, 1
    msg["header"]["type"], msg["header"]["flags"] = FAMILY, 0x2  # NLM_F_MULTI
    msg["header"]["sequence_number"] = seq
    msg["attrs"] = [(nest, {"attrs": attrs})]
    msg.encode()
    return bytes(msg.data)


def done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 0x2, seq, 0, 0)


def error(code: int, seq: int) -> bytes:
    msg = nlmsgerr()
    msg["error"] = -code
    msg["header"]["type"], msg["header"]["sequence_number"] = 2, seq
    msg.encode()
    return bytes(msg.data)


# (service attributes, [destination attributes]) of a small kube-proxy-like table
TABLE = [
    (
        service_attrs("10.96.0.1", 443, stats=(5_000_000_000, 7, 8, 1 << 40, 10)),
        [
            dest_attrs("198.18.0.11", 6443, active=12, inactive=3),
            dest_attrs("198.18.0.12", 6443, weight=0, active=2, inactive=40),
        ],
    ),
    (service_attrs("10.96.0.10", 53, protocol=17), [dest_attrs("198.18.1.2", 53, inactive=7)]),
    (service_attrs("10.96.0.10", 53, protocol=6), []),
    (
        service_attrs("2001:db8::1", 443, sched="wrr", flags=0x2 | 0x1),
        [dest_attrs("2001:db8:1::a", 8443, fwd=3, weight=100, active=7, inactive=2)],
    ),
    (service_attrs(fwmark=10, sched="lc", flags=0x2 | 0x4), []),
    (
        service_attrs("10.96.9.9", 80, sched="wrr"),
        [dest_attrs("198.18.4.1", 80, fwd=2, weight=0), dest_attrs("198.18.4.2", 80, fwd=1, weight=0)],
    ),
]


def chunked(messages: list[bytes], per_chunk: int = 2) -> list[bytes]:
    """Several messages per recv(), as a dump arrives."""
    return [b"".join(messages[i : i + per_chunk]) for i in range(0, len(messages), per_chunk)]


def test_decode_services_from_pyroute2_encoded_messages():
    msgs = [encode(1, "IPVS_CMD_ATTR_SERVICE", svc, 9) for svc, _ in TABLE] + [done(9)]
    services = ipvs.decode_services(chunked(msgs), FAMILY)
    assert [(s.protocol, s.address, s.port, s.fwmark, s.scheduler) for s in services] == [
        ("TCP", "10.96.0.1", 443, 0, "rr"),
        ("UDP", "10.96.0.10", 53, 0, "rr"),
        ("TCP", "10.96.0.10", 53, 0, "rr"),
        ("TCP", "2001:db8::1", 443, 0, "wrr"),
        ("", "", 0, 10, "lc"),
        ("TCP", "10.96.9.9", 80, 0, "wrr"),
    ]
    # STATS64 wins over the truncated 32-bit STATS
    assert services[0].stats == (5_000_000_000, 7, 8, 1 << 40, 10)
    assert (services[3].persistent, services[3].one_packet) == (True, False)
    assert (services[4].persistent, services[4].one_packet) == (False, True)


def test_decode_services_with_32bit_stats_only_and_pyroute2_short_addresses():
    # older kernels send only IPVS_SVC_ATTR_STATS; pyroute2's own ipvsmsg sends 4-byte IPv4
    msg = ipvsmsg()
    msg["cmd"], msg["version"] = 1, 1
    msg["header"]["type"] = FAMILY
    msg["attrs"] = [
        (
            "IPVS_CMD_ATTR_SERVICE",
            {
                "attrs": [
                    ("IPVS_SVC_ATTR_AF", socket.AF_INET),
                    ("IPVS_SVC_ATTR_PROTOCOL", 132),
                    ("IPVS_SVC_ATTR_ADDR", "198.18.9.9"),
                    ("IPVS_SVC_ATTR_PORT", 9999),
                    ("IPVS_SVC_ATTR_SCHED_NAME", "sh"),
                    ("IPVS_SVC_ATTR_STATS", stats_attrs((1, 2, 3, 4, 5))),
                ]
            },
        )
    ]
    msg.encode()
    (svc,) = ipvs.decode_services([bytes(msg.data) + done(0)], FAMILY)
    assert (svc.protocol, svc.address, svc.port, svc.scheduler, svc.stats) == (
        "SCTP",
        "198.18.9.9",
        9999,
        "sh",
        (1, 2, 3, 4, 5),
    )


def test_service_key_is_what_pyroute2_decodes_as_the_identity():
    msgs = [encode(1, "IPVS_CMD_ATTR_SERVICE", svc, 1) for svc, _ in TABLE] + [done(1)]
    services = ipvs.decode_services([b"".join(msgs)], FAMILY)
    # wrap the key as the kernel receives it in an IPVS_CMD_GET_DEST request and decode it
    marshal = Marshal()
    marshal.msg_map[FAMILY] = kernel_ipvsmsg
    for svc in services:
        attrs = netlink.attribute(ipvs.IPVS_CMD_ATTR_SERVICE, svc.key)
        body = struct.pack("=BBH", 8, 1, 0) + attrs
        (req,) = marshal.parse(struct.pack("=IHHII", 16 + len(body), FAMILY, 0x301, 1, 0) + body)
        key = dict(req.get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"])
        if svc.fwmark:
            assert key == {"IPVS_SVC_ATTR_AF": socket.AF_INET, "IPVS_SVC_ATTR_FWMARK": svc.fwmark}
        else:
            assert set(key) == {
                "IPVS_SVC_ATTR_AF",
                "IPVS_SVC_ATTR_PROTOCOL",
                "IPVS_SVC_ATTR_ADDR",
                "IPVS_SVC_ATTR_PORT",
            }
            assert key["IPVS_SVC_ATTR_PORT"] == svc.port


def test_decode_dests_sums_and_lists():
    svc = ipvs.Service("TCP", "10.96.9.9", 80, 0, "wrr")
    msgs = [encode(5, "IPVS_CMD_ATTR_DEST", d, 4) for d in TABLE[5][1]] + [done(4)]
    ipvs.decode_dests(chunked(msgs, 1), FAMILY, svc, want_dests=True)
    assert (svc.backends, svc.weight_zero) == (2, 2)
    assert svc.dests == [("198.18.4.1", 80, "tunnel", 0, 0, 0), ("198.18.4.2", 80, "local", 0, 0, 0)]
    v6 = ipvs.Service("TCP", "2001:db8::1", 443, 0, "wrr")
    ipvs.decode_dests([encode(5, "IPVS_CMD_ATTR_DEST", TABLE[3][1][0], 4) + done(4)], FAMILY, v6, True)
    assert v6.dests == [("2001:db8:1::a", 8443, "route", 100, 7, 2)]


def test_netlink_error_and_truncation():
    with pytest.raises(OSError) as e:
        ipvs.decode_services([error(errno.EPERM, 3)], FAMILY)
    assert e.value.errno == errno.EPERM
    whole = encode(1, "IPVS_CMD_ATTR_SERVICE", TABLE[0][0], 1)
    with pytest.raises(ParseError, match="truncated"):
        ipvs.decode_services([whole[:-8]], FAMILY)


class FakeKernelSocket:
    """Stands in for the AF_NETLINK socket: answers the collector's requests with the replies
    the kernel would send (encoded by pyroute2), a few messages per recv()."""

    fail_all_dumps = 0  # errno for every dump of every socket (monkeypatched by a test)

    def __init__(self, table=TABLE, lookup_error: int = 0, dump_error: int = 0):
        self.table = table
        self.lookup_error = lookup_error
        self.dump_error = dump_error
        self.pending: list[bytes] = []
        self.requests: list[tuple[int, int]] = []
        self.marshal = Marshal()
        self.marshal.msg_map[FAMILY] = kernel_ipvsmsg
        self.marshal.msg_map[0x10] = ctrlmsg
        self.closed = False

    def send(self, data: bytes) -> int:
        (req,) = self.marshal.parse(data)
        kind, seq = req["header"]["type"], req["header"]["sequence_number"]
        self.requests.append((kind, req["cmd"]))
        if kind == 0x10:
            assert req.get_attr("CTRL_ATTR_FAMILY_NAME") == "IPVS"
            if self.lookup_error:
                self.pending.append(error(self.lookup_error, seq))
                return len(data)
            reply = ctrlmsg()
            reply["cmd"], reply["header"]["type"], reply["header"]["sequence_number"] = 1, 0x10, seq
            reply["attrs"] = [("CTRL_ATTR_FAMILY_NAME", "IPVS"), ("CTRL_ATTR_FAMILY_ID", FAMILY)]
            reply.encode()
            self.pending.append(bytes(reply.data))
        elif self.dump_error or self.fail_all_dumps:
            self.pending.append(error(self.dump_error or self.fail_all_dumps, seq))
        elif req["cmd"] == ipvs.IPVS_CMD_GET_SERVICE:
            msgs = [encode(1, "IPVS_CMD_ATTR_SERVICE", svc, seq) for svc, _ in self.table]
            self.pending += chunked(msgs + [done(seq)], 2)
        else:
            key = dict(req.get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"])
            dests = next(ds for svc, ds in self.table if key.items() <= dict(svc).items())
            msgs = [encode(5, "IPVS_CMD_ATTR_DEST", d, seq) for d in dests]
            self.pending += chunked(msgs + [done(seq)], 2)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.pending.pop(0)

    def recv_into(self, buffer: bytearray, size: int, flags: int = 0) -> int:
        # as the kernel with MSG_TRUNC: the datagram's real size, even when it did not fit
        data = self.pending.pop(0)
        buffer[: min(size, len(data))] = data[:size]
        return len(data)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_kernel(monkeypatch):
    """Make the collector's netlink client talk to a FakeKernelSocket."""
    made = []
    real = ipvs.GenlSocket

    def install(**kw):
        def factory():
            sock = FakeKernelSocket(**kw)
            made.append(sock)
            return real(sock)

        monkeypatch.setattr(ipvs, "GenlSocket", factory)
        return made

    return install


def netlink_collector(procfs: str = "full", source: str = "auto", **options):
    paths = Paths(procfs=str(FIX / procfs), sysfs=str(FIX / "sysfs"))
    collector = ipvs.IpvsCollector(Context(paths=paths, options={"source": source, **options}))
    collector.probe()
    return collector


def test_netlink_source_end_to_end(fake_kernel):
    made = fake_kernel()
    collector = netlink_collector(source="netlink", backends=True)
    assert collector.source == "netlink"
    m = scrape(collector)
    assert value(m, "netstack_ipvs_source_info", source="netlink") == 1
    assert value(m, "netstack_ipvs_services") == 6
    assert value(m, "netstack_ipvs_backends") == 6
    assert value(m, "netstack_ipvs_services_without_backends") == 2
    assert value(m, "netstack_ipvs_services_without_weighted_backends") == 1
    assert value(m, "netstack_ipvs_backends_weight_zero") == 3
    api = {"protocol": "TCP", "address": "10.96.0.1", "port": "443", "scheduler": "rr"}
    assert value(m, "netstack_ipvs_service_connections_total", **api) == 5_000_000_000
    assert value(m, "netstack_ipvs_service_incoming_bytes_total", **api) == float(1 << 40)
    assert value(m, "netstack_ipvs_service_connections_active", **api) == 14
    assert value(m, "netstack_ipvs_service_connections_inactive", **api) == 43
    assert value(m, "netstack_ipvs_service_backends", fwmark="10", scheduler="lc") == 0
    assert (
        value(
            m,
            "netstack_ipvs_backend_weight",
            address="2001:db8::1",
            backend_address="2001:db8:1::a",
            backend_port="8443",
            forward="route",
        )
        == 100
    )
    # totals still come from /proc/net/ip_vs_stats
    assert value(m, "netstack_ipvs_connections_total") == 0x1A2B
    # one family lookup, one service dump in the probe; per scrape one service dump + one per service
    kinds = made[0].requests
    assert kinds[:2] == [(0x10, 3), (FAMILY, 4)]
    assert kinds[2:] == [(FAMILY, 4)] + [(FAMILY, 8)] * 6
    collector.close()
    assert made[0].closed


def test_netlink_series_cap_counts_traffic_series(fake_kernel):
    fake_kernel()
    # 6 services x (3 shape + 5 traffic) = 48 series
    m = scrape(netlink_collector(source="netlink", **{"max-series": 47}))
    assert value(m, "netstack_ipvs_series_capped") == 1
    assert not samples(m, "netstack_ipvs_service_connections_total")
    m = scrape(netlink_collector(source="netlink", **{"max-series": 48}))
    assert value(m, "netstack_ipvs_series_capped") == 0
    assert len(samples(m, "netstack_ipvs_service_connections_total")) == 6


def test_netlink_enoent_falls_back_to_procfs(fake_kernel, caplog):
    caplog.set_level(logging.INFO, logger="netstack.ipvs")
    made = fake_kernel(lookup_error=errno.ENOENT)
    collector = netlink_collector()
    assert collector.source == "procfs"
    assert made[0].closed
    (record,) = caplog.records  # one line, with the reason as a field
    assert record.kv["reason"] == "netlink: generic netlink family IPVS is not registered"
    m = scrape(collector)
    assert value(m, "netstack_ipvs_source_info", source="procfs") == 1
    assert value(m, "netstack_ipvs_services") == 11


def test_netlink_eperm_falls_back_to_procfs(fake_kernel, caplog):
    caplog.set_level(logging.INFO, logger="netstack.ipvs")
    fake_kernel(dump_error=errno.EPERM)
    collector = netlink_collector()
    assert collector.source == "procfs"
    assert caplog.records[0].kv["reason"] == "netlink: IPVS netlink needs CAP_NET_ADMIN"


def test_both_sources_absent_gives_the_reason(fake_kernel, tmp_path):
    made = fake_kernel(lookup_error=errno.ENOENT)
    paths = Paths(procfs=str(tmp_path), sysfs=str(tmp_path))
    collector = ipvs.IpvsCollector(Context(paths=paths, options={}))
    with pytest.raises(SourceUnavailable) as e:
        collector.probe()
    assert str(e.value) == (
        f"IPVS not available (ip_vs module not loaded?): netlink: not asked, ip_vs is not loaded "
        f"(not in {tmp_path}/modules or {tmp_path}/module); {tmp_path}/net/ip_vs does not exist"
    )
    # the family lookup would have made the kernel load ip_vs: it is not even attempted
    assert made == []


def test_ip_vs_loaded_but_no_source_gives_both_reasons(fake_kernel, tmp_path):
    fake_kernel(lookup_error=errno.ENOENT)
    shutil.copy(FIX / "full/modules", tmp_path / "modules")  # ip_vs listed, yet no family, no file
    collector = ipvs.IpvsCollector(
        Context(paths=Paths(procfs=str(tmp_path), sysfs=str(tmp_path)), options={})
    )
    with pytest.raises(SourceUnavailable) as e:
        collector.probe()
    assert str(e.value) == (
        f"IPVS not available (ip_vs module not loaded?): netlink: generic netlink family IPVS is not "
        f"registered; {tmp_path}/net/ip_vs does not exist"
    )


def test_source_netlink_without_netlink_is_unavailable(fake_kernel):
    fake_kernel(lookup_error=errno.ENOENT)
    collector = ipvs.IpvsCollector(
        Context(paths=Paths(procfs=str(FIX / "full")), options={"source": "netlink"})
    )
    with pytest.raises(SourceUnavailable, match="IPVS not available: netlink: generic netlink family"):
        collector.probe()


def test_netlink_failure_after_probe_uses_procfs_then_reconnects(fake_kernel):
    made = fake_kernel()
    collector = netlink_collector()
    made[0].dump_error = errno.ENOENT  # ip_vs unloaded: the family is gone
    m = scrape(collector)
    assert value(m, "netstack_ipvs_source_info", source="procfs") == 1
    assert made[0].closed
    m = scrape(collector)  # a new socket resolves the family again
    assert value(m, "netstack_ipvs_source_info", source="netlink+procfs") == 1
    assert len(made) == 2


def test_lasting_netlink_failure_is_logged_once(fake_kernel, monkeypatch, caplog):
    made = fake_kernel()
    collector = netlink_collector()
    caplog.set_level(logging.INFO, logger="netstack.ipvs")
    monkeypatch.setattr(FakeKernelSocket, "fail_all_dumps", errno.EPERM)
    for _ in range(3):
        assert value(scrape(collector), "netstack_ipvs_source_info", source="procfs") == 1
    assert len(made) == 3  # each collection tries netlink again on a new socket ...
    assert [r.kv["reason"] for r in caplog.records] == ["netlink: IPVS netlink needs CAP_NET_ADMIN"]  # once


def test_stale_reply_of_an_interrupted_request_is_skipped():
    sock = FakeKernelSocket()
    genl = ipvs.GenlSocket(sock)
    sock.pending.append(done(99))  # left over from a request that timed out
    assert genl.family_id("IPVS") == FAMILY


def test_auto_source_is_one_service_dump_and_one_proc_read(fake_kernel):
    """The default: traffic from one netlink service dump, backends from /proc/net/ip_vs (the
    fixture is the fake kernel's TABLE as ip_vs_info_seq_show prints it, plus 10.96.7.7:80,
    added between the dump and the read). Two requests per collection at any table size, and
    the same series as the all-netlink source."""
    made = fake_kernel()
    auto = netlink_collector("netlink_table", backends=True)
    assert auto.source == "netlink+procfs"
    scrape(auto)
    m = scrape(auto)
    assert made[0].requests == [(0x10, 3), (FAMILY, 4), (FAMILY, 4), (FAMILY, 4)]  # no dest dumps
    assert value(m, "netstack_ipvs_source_info", source="netlink+procfs") == 1
    assert value(m, "netstack_ipvs_services") == 7
    late = {"protocol": "TCP", "address": "10.96.7.7", "port": "80", "scheduler": "rr"}
    assert value(m, "netstack_ipvs_service_connections_active", **late) == 1
    assert not samples(m, "netstack_ipvs_service_connections_total", **late)  # next time

    netlink = netlink_collector("netlink_table", source="netlink", backends=True)
    n = scrape(netlink)
    families = {name for name, _ in n}
    assert {"netstack_ipvs_service_connections_total", "netstack_ipvs_backend_weight"} <= families
    for name in families - {"netstack_ipvs_source_info", "netstack_ipvs_services", "netstack_ipvs_backends"}:
        got = {k: v for k, v in samples(m, name).items() if ("address", "10.96.7.7") not in k[1]}
        assert got == samples(n, name), name
    auto.close()
    netlink.close()


def test_auto_source_read_failures_while_the_dump_runs(fake_kernel, tmp_path, monkeypatch):
    """The auto source dumps the services on another thread while it reads /proc/net/ip_vs (a
    failing dump: test_lasting_netlink_failure_is_logged_once): a table that vanished is still
    "unavailable", one past the size limit a parse error, and the next collection works."""
    fake_kernel()
    tree = tmp_path / "proc"
    shutil.copytree(FIX / "full", tree)
    paths = Paths(procfs=str(tree), sysfs=str(FIX / "sysfs"))
    collector = ipvs.IpvsCollector(Context(paths=paths, options={"source": "auto"}))
    collector.probe()
    assert collector.source == "netlink+procfs"
    good = scrape(collector)
    table = (tree / "net/ip_vs").read_bytes()
    (tree / "net/ip_vs").unlink()
    with pytest.raises(SourceUnavailable, match="ip_vs does not exist"):
        list(collector.collect())
    (tree / "net/ip_vs").write_bytes(table)
    with monkeypatch.context() as patch:
        patch.setattr(ipvs.read_table_text, "__defaults__", (100,))
        with pytest.raises(ParseError, match="larger than"):
            list(collector.collect())
    assert scrape(collector) == good
    assert collector.dump_thread is not None
    collector.close()
    assert collector.dump_thread is None


def test_traffic_decoder_learns_the_layout_and_matches_the_full_decode(monkeypatch):
    msgs = [encode(1, "IPVS_CMD_ATTR_SERVICE", svc, 9) for svc, _ in TABLE]
    want = {ipvs._traffic_key(s): s.stats for s in ipvs.decode_services(chunked([*msgs, done(9)]), FAMILY)}
    decoder = ipvs.TrafficDecoder()
    assert decoder.decode(chunked([*msgs, done(9)]), FAMILY) == want
    assert decoder.layouts  # learnt from the first dump
    full = []
    original = ipvs._service_at
    monkeypatch.setattr(ipvs, "_service_at", lambda *a: full.append(a) or original(*a))
    assert decoder.decode(chunked([*msgs, done(9)]), FAMILY) == want
    assert full == []  # the second dump: no full decode at all
    # new counter values are read at the learnt offsets
    changed = [*TABLE[0][0][:-1], ("IPVS_SVC_ATTR_STATS64", stats_attrs((9, 8, 7, 6, 5)))]
    again = decoder.decode([encode(1, "IPVS_CMD_ATTR_SERVICE", changed, 9) + done(9)], FAMILY)
    assert again == {("TCP", "10.96.0.1", 443): (9, 8, 7, 6, 5)}
    assert full == []
    # a service not seen before is decoded fully, once
    other = service_attrs("10.96.0.2", 443, stats=(1, 2, 3, 4, 5))
    for _ in range(2):
        assert decoder.decode([encode(1, "IPVS_CMD_ATTR_SERVICE", other, 9) + done(9)], FAMILY) == {
            ("TCP", "10.96.0.2", 443): (1, 2, 3, 4, 5)
        }
    assert len(full) == 1


def kube_proxy_dump(services: int = 300, per_datagram: int = 100, seq: int = 9) -> list[bytes]:
    """A dump of one kind of service (TCP and UDP, IPv4, rr) in datagrams of many messages."""
    msgs = [
        encode(
            1,
            "IPVS_CMD_ATTR_SERVICE",
            service_attrs(
                f"10.96.{i // 250}.{i % 250 + 1}",
                80,
                protocol=17 if i % 10 == 9 else 6,
                stats=(i, i + 1, 2, 1 << 40, 4),
            ),
            seq,
        )
        for i in range(services)
    ]
    return [*chunked(msgs, per_datagram), done(seq)]


def test_traffic_decoder_reads_a_datagram_of_known_services_in_one_go(monkeypatch):
    dump = kube_proxy_dump()
    want = {ipvs._traffic_key(s): s.stats for s in ipvs.decode_services(dump, FAMILY)}
    assert len(want) == 300 and want[("UDP", "10.96.0.10", 80)] == (9, 10, 2, 1 << 40, 4)
    decoder = ipvs.TrafficDecoder()
    assert decoder.decode(dump, FAMILY) == want  # learns, a message at a time
    one_by_one = []
    original = ipvs.TrafficDecoder._messages
    monkeypatch.setattr(
        ipvs.TrafficDecoder, "_messages", lambda self, c, *a: one_by_one.append(c) or original(self, c, *a)
    )
    assert decoder.decode(dump, FAMILY) == want
    assert one_by_one == [dump[-1]]  # only the datagram with NLMSG_DONE
    # new values at the known offsets; a service not seen before sends its datagram the slow way
    changed = kube_proxy_dump(301)
    got = decoder.decode(changed, FAMILY)
    assert got[("TCP", "10.96.1.51", 80)] == (300, 301, 2, 1 << 40, 4) and len(got) == 301
    assert one_by_one[1:] == [changed[3], changed[4]]


def test_traffic_decoder_batch_sums_firewall_mark_pairs_and_checks_every_header():
    pair = [
        encode(1, "IPVS_CMD_ATTR_SERVICE", service_attrs(fwmark=7, family=f, stats=(1, 2, 3, 4, 5)), 9)
        for f in (socket.AF_INET, socket.AF_INET6)
    ]
    decoder = ipvs.TrafficDecoder()
    for _ in range(2):  # learnt, then in one go
        assert decoder.decode([b"".join(pair * 3), done(9)], FAMILY) == {(7, "rr"): (6, 12, 18, 24, 30)}
    # one counter header in the middle of the datagram changed its type: the batch must not
    # read that message's bytes at the learnt offsets
    dump = kube_proxy_dump(200)
    decoder.decode(dump, FAMILY)
    bad = bytearray(dump[1])
    step = len(bad) // 100
    identity, _, _, offsets = decoder.layouts[struct.unpack_from("=I", bad)[0] - 20]
    at = 50 * step + 20 + identity + offsets[2]  # message 50's third counter header
    assert struct.unpack_from("=HH", bad, at) == (12, 3)  # IPVS_STATS_ATTR_OUTPKTS, 8 bytes
    struct.pack_into("=HH", bad, at, 12, 29)  # now an attribute the decoder does not know
    want = {
        ipvs._traffic_key(s): s.stats for s in ipvs.decode_services([dump[0], bytes(bad), done(9)], FAMILY)
    }
    assert want[("TCP", "10.96.0.151", 80)] == (150, 151, 0, 1 << 40, 4)  # no 64-bit OUTPKTS
    assert decoder.decode([dump[0], bytes(bad), done(9)], FAMILY) == want


HEADER = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"


@pytest.mark.parametrize(
    "table",
    [
        HEADER + "TCP  0A6000:0050 rr \n",  # an address of 3 bytes: inet_ntoa's OSError before
        HEADER + "TCP  [zz::1]:0050 rr \n",  # inet_pton's OSError
        HEADER + "TCP  0A600001:0050 rr \n  -> 0A000001:0050 Masq x 0 0\n",
    ],
)
def test_malformed_tables_are_parse_errors_that_name_the_line_not_its_content(table):
    with pytest.raises(ParseError) as e:
        ipvs.parse_ip_vs(table, "ip_vs", want_dests=True)
    assert "ip_vs:" in str(e.value) and "0A6000" not in str(e.value) and "zz" not in str(e.value)


def test_stats_wider_than_a_counter_are_a_parse_error():
    text = "hdr\nhdr\n" + " ".join(["F" * 3600] * 5) + "\n"
    with pytest.raises(ParseError):
        ipvs.parse_ip_vs_stats(text, "ip_vs_stats")


def test_an_endless_or_huge_table_fails_only_the_collection(tmp_path):
    table = tmp_path / "ip_vs"
    table.write_text(HEADER + "TCP  0A600001:0050 rr " + "x" * 20_000 + "\n")
    with pytest.raises(ParseError, match="larger than"):
        ipvs.read_table_text(str(table), max_bytes=10_000)
    table.write_text(HEADER + "TCP  0A600001:0050 rr \n" + "  -> 0A000001:0050 Masq 1 0 0\n" * 1000)
    with pytest.raises(ParseError, match="larger than"):
        ipvs.read_table_text(str(table), max_bytes=10_000)
    assert ipvs.read_table_text(str(table), max_bytes=table.stat().st_size) == table.read_text()
