"""/proc/net/ip_vs in the default configuration (no per-backend series): the summing parser,
which takes a table in the kernel's exact layout a service at a time, against the line parser
it leaves everything else to (fixtures, cases and mutated tables); and the column families the
collector builds from it, against prometheus_client's families of the same samples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from bench import bench_ipvs
from collectors import ipvs
from exporter.contract import ParseError
from tests.helpers import FIXTURES
from tests.unit import test_parser_fuzz as parser_fuzz

FIX = FIXTURES / "ipvs"


def _by_lines(text: str, known=None):
    return ipvs.parse_ip_vs_lines(iter(text.split("\n")), "ip_vs", False, known)


def test_service_sums_take_the_kernel_layout_and_match_the_line_parser():
    for table in ("full", "empty"):
        text = (FIX / table / "net/ip_vs").read_text()
        fast = ipvs._service_sums(text, None)
        assert fast is not None, table  # the kernel's own layout never needs the line parser
        assert fast == _by_lines(text)
    big = bench_ipvs.ip_vs_text(500, 3)
    assert ipvs._service_sums(big, None) == _by_lines(big)
    # the service-line cache holds what the line parser's holds (and the blocks besides)
    known_fast: dict = {}
    known_lines: dict = {}
    ipvs.parse_ip_vs(big, known=known_fast)
    _by_lines(big, known_lines)
    assert {k: v for k, v in known_fast.items() if "\n" not in k} == known_lines
    # and a second collection from those caches is the same again
    assert ipvs.parse_ip_vs(big, known=known_fast) == _by_lines(big, known_lines)


@pytest.mark.parametrize(
    "change",
    [
        ("  -> C6120102:0035      Masq    1      0          7", "  -> C6120102:0035 Masq 1 0"),  # 5 fields
        ("  -> C6120102:0035      Masq    1      0          7", "  -> C6120102:0035 Masq 1 0 7 -> 3"),
        ("  -> C6120102:0035      Masq    1      0          7", "  -> C6120102:0035 Masq 1 0 x"),
        ("UDP  0A60000A:0035 rr  \n", "UDP  0A60000A:0035 rr  \n\n"),  # a blank line
        ("TCP  0A600001:01BB rr  \n", ""),  # backends before any service
    ],
)
def test_service_sums_leave_anything_else_to_the_line_parser(change):
    text = (FIX / "full/net/ip_vs").read_text().replace(*change, 1)
    assert ipvs._service_sums(text, None) is None
    try:
        expected = _by_lines(text)
    except ParseError as e:
        with pytest.raises(ParseError, match=str(e).split(":")[1]):  # the same line named
            ipvs.parse_ip_vs(text, "ip_vs")
    else:
        assert ipvs.parse_ip_vs(text, "ip_vs") == expected


@settings(max_examples=300, deadline=None)
@given(text=parser_fuzz.mutations((FIX / "full/net/ip_vs").read_text()))
def test_service_sums_agree_with_the_line_parser_on_mutated_tables(text):
    try:
        expected = _by_lines(text)
    except ParseError:
        with pytest.raises(ParseError):
            ipvs.parse_ip_vs(text, "ip_vs")
        return
    assert ipvs.parse_ip_vs(text, "ip_vs") == expected


def test_service_families_encode_like_prometheus_client_families():
    """The column families (one label list shared by eight families) write exactly what
    prometheus_client's families with the same samples write."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from exporter.exposition import encode_openmetrics, encode_text

    table = ipvs.Table("netlink+procfs", ipvs.parse_ip_vs((FIX / "full/net/ip_vs").read_text()))
    for n, svc in enumerate(table.services):
        svc.stats = (n, 2**40 + n, 3, 4, 5) if n != 2 else None  # one service without counters
    ours = ipvs.build_metrics(table, False, ipvs.DEFAULT_MAX_SERIES)
    assert any(type(f).__name__ == "ColumnFamily" for f in ours)
    plain = []
    for family in ours:
        kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
        copy = kind(family.name, family.documentation)
        copy.samples = [s._replace(labels=dict(s.labels)) for s in family.samples]
        plain.append(copy)
    assert encode_text(ours) == encode_text(plain)
    assert encode_openmetrics(ours) == encode_openmetrics(plain)
    services = next(f for f in ours if f.name == "netstack_ipvs_service_connections")
    assert len(services.rows) == len(table.services) - 1
