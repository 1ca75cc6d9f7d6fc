"""netstat: host-wide IP fragmentation / reassembly, reverse-path-filter drops and UDP errors, the
counters `netstat -s` prints, from /proc/net/snmp, /proc/net/netstat and /proc/net/snmp6.

Tunnels fail here when their MTU is wrong (fragments, fragmentation failures) or when their UDP
socket is gone (no-port datagrams), but these counters need no netlink and no tunnel: they are
their own collector, so they keep serving when rtnetlink is refused to the overlay collector.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from exporter.contract import Collector, ParseError
from exporter.metrics import CounterMetricFamily, Metric

from .common import read_text, require_file

_KERNEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")


def _named(token: str) -> str:
    """A section or field name for an error line: the kernel's names are short identifiers;
    anything else is the file's content, which an error line does not repeat."""
    return token if _KERNEL_NAME.fullmatch(token) else "?"


def parse_snmp(text: str, path: str) -> dict[str, dict[str, int]]:
    """The two-line-per-section format of /proc/net/snmp and /proc/net/netstat.

    "Ip: Forwarding DefaultTTL ..." is followed by "Ip: 1 64 ..."; IcmpMsg may come in several
    pairs. Fields are looked up by name: kernels add fields over time.
    """
    sections: dict[str, dict[str, int]] = {}
    header: tuple[str, list[str], int] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        prefix, colon, rest = line.partition(":")
        if not colon or not prefix or " " in prefix:
            raise ParseError(f"{path}:{lineno}: expected 'Section: ...'")
        if header is None:
            header = (prefix, rest.split(), lineno)
            continue
        name, names, _ = header
        header = None
        values = rest.split()
        if prefix != name:
            raise ParseError(
                f"{path}:{lineno}: values for {_named(prefix)!r} follow the header of {_named(name)!r}"
            )
        if len(values) != len(names):
            raise ParseError(
                f"{path}:{lineno}: {_named(name)} has {len(names)} names but {len(values)} values"
            )
        try:
            numbers = [int(v) for v in values]
        except ValueError:
            raise ParseError(f"{path}:{lineno}: non-numeric value in {_named(name)}") from None
        sections.setdefault(name, {}).update(zip(names, numbers))
    if header is not None:
        raise ParseError(f"{path}:{header[2]}: header of {_named(header[0])!r} has no values line")
    return sections


def parse_snmp6(text: str, path: str) -> dict[str, int]:
    """/proc/net/snmp6: one "Name<spaces>\\tvalue" per line."""
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ParseError(f"{path}:{lineno}: expected 'name value'")
        try:
            out[fields[0]] = int(fields[1])
        except ValueError:
            raise ParseError(f"{path}:{lineno}: non-numeric value for {_named(fields[0])}") from None
    return out


# (metric, help, [(family, source, section, field)]); source is "snmp", "netstat" or "snmp6"
# (snmp6 has no sections). A field the running kernel does not have yields no sample.
HOST_COUNTERS: tuple[tuple[str, str, tuple[tuple[str, str, str, str], ...]], ...] = (
    (
        "netstack_ip_fragment_failures_total",
        "Datagrams this host had to fragment but could not (DF set, or IPv6): a path MTU too small "
        "for the traffic, e.g. an overlay MTU that ignores the encapsulation (Ip FragFails).",
        (("ipv4", "snmp", "Ip", "FragFails"), ("ipv6", "snmp6", "", "Ip6FragFails")),
    ),
    (
        "netstack_ip_fragments_created_total",
        "Fragments this host created (Ip FragCreates): tunnels whose outer packets exceed the "
        "underlay MTU are fragmented instead of dropped when DF is not set.",
        (("ipv4", "snmp", "Ip", "FragCreates"), ("ipv6", "snmp6", "", "Ip6FragCreates")),
    ),
    (
        "netstack_ip_reassembly_failures_total",
        "Reassembly failures of received fragments (Ip ReasmFails): lost or late fragments.",
        (("ipv4", "snmp", "Ip", "ReasmFails"), ("ipv6", "snmp6", "", "Ip6ReasmFails")),
    ),
    (
        "netstack_ip_reassembly_timeouts_total",
        "Fragment queues that timed out before all fragments arrived (Ip ReasmTimeout).",
        (("ipv4", "snmp", "Ip", "ReasmTimeout"), ("ipv6", "snmp6", "", "Ip6ReasmTimeout")),
    ),
    (
        "netstack_ip_truncated_packets_total",
        "Received IP packets shorter than their header says (IpExt InTruncatedPkts).",
        (("ipv4", "netstat", "IpExt", "InTruncatedPkts"), ("ipv6", "snmp6", "", "Ip6InTruncatedPkts")),
    ),
    (
        "netstack_ip_reverse_path_filter_drops_total",
        "Packets dropped by the reverse path filter (TcpExt IPReversePathFilter): asymmetric "
        "routing between overlay and underlay with rp_filter=1.",
        (("ipv4", "netstat", "TcpExt", "IPReversePathFilter"),),
    ),
    (
        "netstack_udp_receive_errors_total",
        "UDP datagrams received that could not be delivered (Udp InErrors; includes buffer and "
        "checksum errors). VXLAN, Geneve and WireGuard are UDP.",
        (("ipv4", "snmp", "Udp", "InErrors"), ("ipv6", "snmp6", "", "Udp6InErrors")),
    ),
    (
        "netstack_udp_receive_buffer_errors_total",
        "UDP datagrams dropped because the socket receive buffer was full (Udp RcvbufErrors).",
        (("ipv4", "snmp", "Udp", "RcvbufErrors"), ("ipv6", "snmp6", "", "Udp6RcvbufErrors")),
    ),
    (
        "netstack_udp_send_buffer_errors_total",
        "UDP datagrams not sent because the socket send buffer was full (Udp SndbufErrors).",
        (("ipv4", "snmp", "Udp", "SndbufErrors"), ("ipv6", "snmp6", "", "Udp6SndbufErrors")),
    ),
    (
        "netstack_udp_checksum_errors_total",
        "UDP datagrams received with a bad checksum (Udp InCsumErrors).",
        (("ipv4", "snmp", "Udp", "InCsumErrors"), ("ipv6", "snmp6", "", "Udp6InCsumErrors")),
    ),
    (
        "netstack_udp_no_port_datagrams_total",
        "UDP datagrams received for a port nobody listens on (Udp NoPorts): e.g. VXLAN packets "
        "arriving while the receiving vxlan device is down or uses another port.",
        (("ipv4", "snmp", "Udp", "NoPorts"), ("ipv6", "snmp6", "", "Udp6NoPorts")),
    ),
)


def host_counter_families(sources: dict[str, Any]) -> list[Metric]:
    """Families for HOST_COUNTERS from parsed files ({"snmp": sections, "netstat": sections,
    "snmp6": flat dict}); a missing source or field yields no sample."""
    families: list[Metric] = []
    for metric, help_text, fields in HOST_COUNTERS:
        family = CounterMetricFamily(metric, help_text, labels=["family"])
        for ip_family, source, section, field in fields:
            parsed = sources.get(source)
            if parsed is None:
                continue
            value = (parsed if source == "snmp6" else parsed.get(section, {})).get(field)
            if value is not None:
                family.add_metric([ip_family], value)
        if family.samples:
            families.append(family)
    return families


def read_host_sources(proc: Callable[..., str]) -> dict[str, Any]:
    """Parse the three files. snmp is required; netstat and snmp6 may be absent (IPv6 off)."""
    sources: dict[str, Any] = {}
    path = proc("net", "snmp")
    sources["snmp"] = parse_snmp(read_text(path), path)
    for name, parser in (("netstat", parse_snmp), ("snmp6", parse_snmp6)):
        path = proc("net", name)
        try:
            text = read_text(path)
        except FileNotFoundError:
            continue
        sources[name] = parser(text, path)
    return sources


class NetstatCollector(Collector):
    name = "netstat"
    default_enabled = True
    help = (
        "Host-wide IP fragmentation and reassembly, reverse-path-filter drops and UDP errors "
        "(/proc/net/snmp, netstat, snmp6)."
    )

    def probe(self) -> None:
        require_file(self.paths.proc("net", "snmp"), "IP/UDP counters")

    def collect(self) -> Iterable[Metric]:
        return host_counter_families(read_host_sources(self.paths.proc))


COLLECTOR = NetstatCollector
