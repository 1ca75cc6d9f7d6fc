"""Property-based fuzzing of the parsers the other two fuzz files leave out (issue 11.6): the tunnel
decode of the overlay collector, the small procfs/sysfs and BIRD parsers, what a client sends
(the HTTP request head and the headers the exporter reads) and the command-line value parsers.
Seeds are real: the kernel's overlay link messages, this process's /proc/self/status, the
fixture trees, a request head as Prometheus sends it.

The contract is the one of test_parser_fuzz.py: return, or raise the parser's own error
(ParseError for sources, BadRequest for clients, ValueError for command-line values), fast.
A deeper run: NETSTACK_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/unit/test_input_fuzz.py
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors import bgp, ebpf_base, fsync, ipvs, overlay, strict_arp, virtualization
from collectors import overlay_rtnl as rtnl
from exporter import cli, http, server
from exporter.contract import ParseError
from tests.helpers import FIXTURES
from tests.unit.test_netlink_fuzz import FUZZ, TIME_BOUND, inputs, overlay_seeds
from tests.unit.test_parser_fuzz import mutations


def holds(parse, text, allowed: tuple[type[BaseException], ...] = (ParseError,)) -> None:
    """parse(text) returns or raises one of `allowed`, within TIME_BOUND."""
    started = time.perf_counter()
    try:
        parse(text)
    except allowed:
        pass
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_BOUND, f"took {elapsed:.3f} s"


# --- the overlay collector's tunnel decode (pyroute2's tables under a ParseError) ----------------


def _tunnel(message: bytes) -> None:
    try:
        link = rtnl.parse_link(message)
    except ParseError:
        return
    overlay.tunnel_config(link)


@FUZZ
@given(st.data())
def test_tunnel_config(data):
    holds(_tunnel, data.draw(inputs(overlay_seeds())))


# --- small source parsers ----------------------------------------------------------------------

SOURCES = {
    "capabilities": (ebpf_base.effective_capabilities, "/proc/self/status"),
    "status_field": (lambda t: virtualization.parse_status_field(t, "CapEff"), "/proc/self/status"),
    "sysctl_int": (lambda t: strict_arp.parse_sysctl_int(t, "arp_ignore"), "0\n"),
    "uevent": (fsync.parse_uevent_devname, FIXTURES / "fsync/sys/dev/block/259:5/uevent"),
    "proc_modules": (ipvs.parse_proc_modules, FIXTURES / "host/proc/modules"),
    "environ": (
        lambda t: virtualization.parse_environ(t.encode("utf-8", "surrogateescape")),
        "container=lxc",
    ),
    "bird_since": (lambda t: bgp.parse_since(t, 1_764_582_602.0, None), "2026-12-01 09:50:02.068\n"),
}


def seed_text(source) -> str:
    if isinstance(source, str) and not source.startswith("/"):
        return source
    with open(source) as f:
        return f.read()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_small_source_parsers(name):
    parse, source = SOURCES[name]
    text = seed_text(source)
    holds(parse, text)

    @FUZZ
    @given(mutations(text))
    def fuzz(mutated: str) -> None:
        holds(parse, mutated)

    fuzz()


# --- what a client sends -------------------------------------------------------------------------

PROMETHEUS_HEAD = (
    "GET /metrics HTTP/1.1\r\n"
    "Host: 127.0.0.1:9977\r\n"
    "User-Agent: Prometheus/2.42.0\r\n"
    "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
    "Accept-Encoding: gzip\r\n"
    "X-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
    "Content-Length: 0"
)


def _serve_head(text: str) -> None:
    request = http.parse_head(text.encode("latin-1", "replace"), "198.18.0.1")
    http.has_body(request.headers)
    http.keep_alive(request)
    server.negotiate_format(request.headers.get("accept", ""))
    server.wants_gzip(request.headers.get("accept-encoding", ""))
    server.scrape_timeout(request.headers.get("x-prometheus-scrape-timeout-seconds"))


@FUZZ
@given(mutations(PROMETHEUS_HEAD))
def test_http_request_head(mutated):
    holds(_serve_head, mutated, (http.BadRequest,))


# --- command-line values ---------------------------------------------------------------------------

VALUES = {
    "duration": (cli.parse_duration, "1m30s"),
    "size": (cli.parse_size, "64KiB"),
    "int": (cli.parse_int, "50000"),
    "float": (cli.parse_float, "0.5"),
    "listen_address": (cli.parse_listen_address, "[::1]:9977"),
    "bool": (cli.parse_bool, "true"),
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_command_line_values(name):
    parse, text = VALUES[name]
    holds(parse, text, (ValueError,))

    @FUZZ
    @given(mutations(text))
    def fuzz(mutated: str) -> None:
        holds(parse, mutated, (ValueError,))

    fuzz()
