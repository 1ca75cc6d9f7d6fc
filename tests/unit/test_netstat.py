"""netstat collector: the /proc/net/snmp, netstat and snmp6 parsers and the counters built from
them, on files the kernel wrote (see tests/fixtures/netstat/README.md)."""

from __future__ import annotations

import pytest

from collectors import netstat
from collectors.netstat import (
    NetstatCollector,
    host_counter_families,
    parse_snmp,
    parse_snmp6,
    read_host_sources,
)
from exporter.contract import Context, ParseError, Paths, SourceUnavailable
from tests.helpers import FIXTURES

FX = FIXTURES / "netstat"


def fixture_text(*parts: str) -> str:
    return FX.joinpath(*parts).read_text()


# --- /proc/net/snmp, netstat, snmp6 -----------------------------------------------------------


def test_parse_snmp_kernel_6_18_sender():
    s = parse_snmp(fixture_text("linux-6.18-sender", "net", "snmp"), "snmp")
    assert s["Ip"]["FragOKs"] == 7
    assert s["Ip"]["FragCreates"] == 14
    assert s["Ip"]["FragFails"] == 0
    assert s["Ip"]["OutTransmits"] == 36  # a field newer kernels added
    assert s["Udp"]["NoPorts"] == 3
    assert s["Udp"]["MemErrors"] == 0
    assert s["Tcp"]["MaxConn"] == -1  # the one signed field
    assert "InType3" in s["IcmpMsg"] or "OutType3" in s["IcmpMsg"]


def test_parse_snmp_kernel_6_18_receiver():
    s = parse_snmp(fixture_text("linux-6.18-receiver", "net", "snmp"), "snmp")
    assert (s["Ip"]["ReasmReqds"], s["Ip"]["ReasmOKs"], s["Ip"]["ReasmFails"]) == (14, 7, 0)
    assert s["Udp"]["NoPorts"] == 7


def test_parse_netstat_kernel_6_18():
    s = parse_snmp(fixture_text("linux-6.18-sender", "net", "netstat"), "netstat")
    assert {"TcpExt", "IpExt"} <= set(s)
    assert s["TcpExt"]["IPReversePathFilter"] == 0
    assert s["IpExt"]["InTruncatedPkts"] == 0


def test_parse_old_layout_by_name():
    s = parse_snmp(fixture_text("linux-2.6-style", "net", "snmp"), "snmp")
    assert s["Ip"]["FragFails"] == 3
    assert "OutTransmits" not in s["Ip"]
    assert s["Udp"] == {
        "InDatagrams": 40,
        "NoPorts": 7,
        "InErrors": 2,
        "OutDatagrams": 41,
        "RcvbufErrors": 1,
        "SndbufErrors": 0,
    }


def test_icmpmsg_pairs_are_merged():
    text = "IcmpMsg: InType3 InType8\nIcmpMsg: 1 2\nIcmpMsg: OutType0 OutType3\nIcmpMsg: 2 5\n"
    assert parse_snmp(text, "snmp")["IcmpMsg"] == {"InType3": 1, "InType8": 2, "OutType0": 2, "OutType3": 5}


@pytest.mark.parametrize(
    "text, where",
    [
        ("Ip: Forwarding DefaultTTL\nIp: 1\n", "snmp:2: Ip has 2 names but 1 values"),
        ("Ip: Forwarding DefaultTTL\nIp: 1 x\n", "snmp:2: non-numeric value in Ip"),
        ("Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: NoPorts\n", "snmp:3: header of 'Udp' has no values"),
        ("Ip: Forwarding\nUdp: 1\n", "snmp:2: values for 'Udp' follow the header of 'Ip'"),
        ("<html>not procfs</html>\n", "snmp:1: expected 'Section: ...'"),
    ],
)
def test_parse_snmp_rejects_malformed_with_one_line(text, where):
    with pytest.raises(ParseError) as e:
        parse_snmp(text, "snmp")
    assert where in str(e.value)
    assert "\n" not in str(e.value)


def test_parse_snmp6_kernel_6_18():
    s = parse_snmp6(fixture_text("linux-6.18-sender", "net", "snmp6"), "snmp6")
    assert s["Ip6FragFails"] == 0
    assert "Udp6RcvbufErrors" in s and "Ip6ReasmFails" in s
    assert all(isinstance(v, int) for v in s.values())


def test_parse_snmp6_rejects_malformed():
    with pytest.raises(ParseError, match=r"snmp6:2: non-numeric value for Ip6FragFails"):
        parse_snmp6("Ip6InReceives \t1\nIp6FragFails \tmany\n", "snmp6")
    with pytest.raises(ParseError, match=r"snmp6:1: expected 'name value'"):
        parse_snmp6("Ip6InReceives 1 2\n", "snmp6")


def _values(families) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["family"]): s.value for f in families for s in f.samples}


def test_host_counters_from_kernel_6_18_fixture():
    sources = read_host_sources(Paths(procfs=str(FX / "linux-6.18-sender")).proc)
    v = _values(host_counter_families(sources))
    assert v[("netstack_ip_fragments_created_total", "ipv4")] == 14
    assert v[("netstack_ip_fragment_failures_total", "ipv4")] == 0
    assert v[("netstack_udp_no_port_datagrams_total", "ipv4")] == 3
    assert v[("netstack_udp_no_port_datagrams_total", "ipv6")] == 0
    assert v[("netstack_ip_reverse_path_filter_drops_total", "ipv4")] == 0
    assert ("netstack_ip_reverse_path_filter_drops_total", "ipv6") not in v
    # every declared counter is there for IPv4 on a current kernel
    assert {name for name, _ in v} == {m for m, _, _ in netstat.HOST_COUNTERS}


def test_host_counters_old_kernel_without_snmp6_or_new_fields():
    sources = read_host_sources(Paths(procfs=str(FX / "linux-2.6-style")).proc)
    assert "snmp6" not in sources  # absent file (IPv6 off) is not an error
    v = _values(host_counter_families(sources))
    assert v[("netstack_ip_fragment_failures_total", "ipv4")] == 3
    assert v[("netstack_ip_reassembly_failures_total", "ipv4")] == 4
    assert v[("netstack_ip_truncated_packets_total", "ipv4")] == 6
    assert v[("netstack_udp_receive_buffer_errors_total", "ipv4")] == 1
    # fields this kernel does not have yield no sample instead of a made-up zero
    assert not any(name == "netstack_udp_checksum_errors_total" for name, _ in v)
    assert not any(fam == "ipv6" for _, fam in v)


def test_missing_snmp_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_host_sources(Paths(procfs=str(tmp_path)).proc)


# --- the collector ----------------------------------------------------------------------------


def collector(procfs) -> NetstatCollector:
    return NetstatCollector(Context(Paths(procfs=str(procfs), sysfs="/nonexistent")))


def test_collector_reads_only_files():
    """No netlink socket is involved: the counters come from the tree alone."""
    c = collector(FX / "linux-6.18-receiver")
    c.probe()
    v = _values(c.collect())
    assert v[("netstack_ip_reassembly_failures_total", "ipv4")] == 0
    assert v[("netstack_udp_no_port_datagrams_total", "ipv4")] == 7
    assert v[("netstack_udp_no_port_datagrams_total", "ipv6")] == 0


def test_probe_needs_snmp(tmp_path):
    with pytest.raises(SourceUnavailable, match=r"IP/UDP counters: .*/net/snmp does not exist"):
        collector(tmp_path).probe()


def test_on_by_default():
    assert NetstatCollector.default_enabled


def test_serves_when_rtnetlink_is_refused(monkeypatch):
    """The reason this is its own collector: without rtnetlink the overlay collector is
    unavailable, and these counters must not go with it."""
    import socket

    from collectors.overlay import OverlayCollector

    real_socket = socket.socket

    def no_netlink(family=-1, *args, **kwargs):
        if family == socket.AF_NETLINK:
            raise PermissionError(1, "Operation not permitted")
        return real_socket(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", no_netlink)
    with pytest.raises(SourceUnavailable, match="rtnetlink"):
        OverlayCollector(Context()).probe()
    c = collector(FX / "linux-6.18-sender")
    c.probe()
    assert _values(c.collect())[("netstack_ip_fragments_created_total", "ipv4")] == 14


@pytest.mark.parametrize(
    "text, path",
    [
        ("Ip: Forwarding\n" + "Q" * 2000 + ": 1\n", "snmp"),  # a values line of another section
        ("Ip" + "Q" * 2000 + ": Forwarding\nIpQ: 1\n", "snmp"),
        ("Q" * 2000 + ": Forwarding\n" + "Q" * 2000 + ": x\n", "snmp"),  # non-numeric value
        ("Ip" + "Q" * 2000 + ": Forwarding\n", "snmp"),  # a header without values
        ("Q" * 2000 + " x\n", "snmp6"),
    ],
)
def test_parse_errors_never_echo_more_than_a_kernel_name(text, path):
    # Issue 11.16: a bad file is named by file and line; a section or field name is shown only
    # when it looks like the kernel's (an identifier of a few characters), never the content.
    parse = parse_snmp6 if path == "snmp6" else parse_snmp
    with pytest.raises(ParseError) as e:
        parse(text, path)
    assert "QQQQ" not in str(e.value) and len(str(e.value)) < 100
    assert str(e.value).startswith(f"{path}:")
