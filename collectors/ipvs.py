"""IPVS: the virtual-service table kube-proxy programs in IPVS mode, its traffic, and the
services that black-hole traffic (no backend, or only weight-0 backends).

Sources (--collector.ipvs.source):
  auto     the default: one IPVS generic netlink service dump for the per-service traffic
           counters (needs CAP_NET_ADMIN) and one read of /proc/net/ip_vs for the backends, two
           requests whatever the table's size (source_info "netlink+procfs"); /proc/net/ip_vs
           alone (no traffic counters) where netlink cannot be used.
  netlink  everything over netlink: the service dump, then one destination dump per service.
           At 5,000 services that is 5,001 round trips, many times the time of auto (measured in
           the kernel lab, docs/kernel-lab.md); kept for nodes whose /proc/net/ip_vs cannot be read.
  procfs   /proc/net/ip_vs: the table without traffic counters; no privilege needed.
Both read the exporter's own network namespace. Global totals always come from
/proc/net/ip_vs_stats (netlink has no global counters).

The netlink replies are decoded with a small struct-based walker over the kernel's attribute
layout (include/uapi/linux/ip_vs.h) rather than pyroute2's nla classes, which build objects for
every attribute and are an order of magnitude slower at kube-proxy scale (bench/README.md).
The tests encode kernel-shaped messages with pyroute2 and decode them here, so the two
implementations check each other.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import errno
import functools
import itertools
import logging
import os
import re
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from exporter.contract import Collector, Option, ParseError, SourceUnavailable
from exporter.exposition import ColumnFamily, CompactFamily, LabelSet, RowTemplate
from exporter.logs import log_event
from exporter.metrics import CounterMetricFamily, GaugeMetricFamily, Metric, Sample

from .common import parse_counter, read_int, read_text
from .netlink import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NetlinkFormatError,
    NetlinkSocket,
    attribute,
    attribute_spans,
    data_messages,
)

log = logging.getLogger("netstack.ipvs")
T = TypeVar("T")

DEFAULT_MODULES = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack"]
# kube-proxy's IPVS mode relies on these (conntrack for SNAT, strictARP for MetalLB and friends).
SYSCTLS = (
    "net.ipv4.vs.conntrack",
    "net.ipv4.vs.expire_nodest_conn",
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
)
DEFAULT_MAX_SERIES = 50_000

# ip_vs_proto_name() in net/netfilter/ipvs/ip_vs_core.c; /proc prints these names, netlink numbers.
PROTOCOL_NAMES = {0: "IP", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
# ip_vs_fwd_name(): IP_VS_CONN_F_FWD_MASK values; anything else prints as Masq.
FORWARD_NAMES = {0: "masq", 1: "local", 2: "tunnel", 3: "route"}
IP_VS_SVC_F_PERSISTENT = 0x1
IP_VS_SVC_F_ONEPACKET = 0x4


@dataclass(slots=True)
class Service:
    protocol: str  # kernel name ("TCP"); "" for firewall-mark services
    address: str  # dotted IPv4 / compressed IPv6; "" for firewall-mark services
    port: int
    fwmark: int  # 0 for address services
    scheduler: str
    persistent: bool = False
    one_packet: bool = False
    backends: int = 0
    active: int = 0
    inactive: int = 0
    weight_zero: int = 0
    # (connections, in packets, out packets, in bytes, out bytes); netlink only
    stats: tuple[int, ...] | None = None  # the five IPVS counters
    # [(address, port, forward, weight, active, inactive)] when per-backend series are wanted
    dests: list[tuple[str, int, str, int, int, int]] | None = None
    key: bytes = b""  # netlink: the service's identifying attributes, for its destination dump
    labels: dict[str, str] | None = None  # per-service metric labels, made once

    def add_backend(self, weight: int, active: int, inactive: int) -> None:
        self.backends += 1
        self.active += active
        self.inactive += inactive
        if weight == 0:
            self.weight_zero += 1


# --- /proc/net/ip_vs and /proc/net/ip_vs_stats (ip_vs_info_seq_show, ip_vs_stats_show) ----------


def _proc_address(text: str) -> str:
    """'0A600001' (%08X of the host-order address) or '[2001:0db8:...]' (%pI6) -> readable."""
    if text[0] == "[":
        try:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text[1:-1]))
        except OSError:  # inet_pton's "illegal IP address string"
            raise ValueError(text) from None
    return socket.inet_ntoa(bytes.fromhex(text))


def _proc_address_port(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    return _proc_address(address), int(port, 16)


def parse_service_line(line: str) -> tuple:
    """Identity of a /proc/net/ip_vs service line:
    (protocol, address, port, fwmark, scheduler, persistent, one_packet).

    "%s  %08X:%04X %s %s" / "%s  [%pI6]:%04X %s " / "FWM  %08X %s %s" (the last %s is "ops " or
    empty), then "persistent %d %08X" for persistent services."""
    f = line.split()
    flags = f[3:]
    if f[0] == "FWM":
        protocol, address, port, fwmark = "", "", 0, int(f[1], 16)
    else:
        (address, port), protocol, fwmark = _proc_address_port(f[1]), f[0], 0
    return protocol, address, port, fwmark, f[2], "persistent" in flags, "ops" in flags


def parse_ip_vs(
    text: str, path: str = "/proc/net/ip_vs", want_dests: bool = False, known: dict[str, tuple] | None = None
) -> list[Service]:
    """Services of /proc/net/ip_vs text; see parse_ip_vs_lines. Without want_dests (the
    default configuration), a table in the kernel's exact layout is summed a service at a time
    (_service_sums); anything else goes to the line parser, which also says where it fails."""
    if not want_dests:
        services = _service_sums(text, known)
        if services is not None:
            return services
    return parse_ip_vs_lines(iter(text.split("\n")), path, want_dests, known)


# Where a service's block ends: a line break not followed by one of its backend lines.
_SERVICE_BREAK = re.compile(r"\n(?!  -> )")


def _service_sums(text: str, known: dict[str, tuple] | None) -> list[Service] | None:
    """parse_ip_vs_lines(want_dests=False) of a table whose every backend line has the kernel's
    six fields ("  -> %08X:%04X %-7s %-6d %-10d %-10d"): one split per service, summed with C
    loops, instead of Python work per backend line (15,000 of them at 5,000 services). None
    for anything it does not check exactly (the line parser then decides): each block's
    backend lines must hold 6 fields each and "->" only as their first field, so that columns
    3, 4 and 5 of every six are weight, ActiveConn and InActConn, as the line parser reads them.

    `known` keeps, besides the service lines (as the line parser does), each service's whole
    block with its Service: a service whose backends and connection counts did not change since
    the last collection costs one lookup, and its Service is used again (its traffic counters
    cleared: add_traffic sets them anew)."""
    if not text.startswith("IP Virtual Server version"):
        return None
    start = 0
    for _ in range(3):  # the version line and two column headers
        start = text.find("\n", start) + 1
        if start == 0:
            return None
    previous = known if known is not None else {}
    found: dict[str, tuple] = {}
    services: list[Service] = []
    blocks = _SERVICE_BREAK.split(text[start:])
    if blocks and not blocks[-1]:
        blocks.pop()  # after the final line break
    try:
        for block in blocks:
            seen = previous.get(block)
            if seen is not None and len(seen) == 3:  # (service line, its entry, Service): unchanged
                line, current, svc = seen
                found[block] = seen
                found[line] = current
                svc.stats = None
                services.append(svc)
                continue
            line, _, rest = block.partition("\n")
            if not line or line[0] == " ":
                return None  # a blank line, or a backend line before any service
            current = previous.get(line) or found.get(line)
            if current is None or len(current) != 2:
                identity = parse_service_line(line)
                current = (identity, _labels(*identity[:5]))
            found[line] = current
            sums = (0, 0, 0, 0)
            if rest:
                fields = rest.split()
                backends = rest.count("\n") + 1
                if (
                    len(fields) != 6 * backends
                    or rest.count("->") != backends
                    or fields[::6].count("->") != backends
                ):
                    return None
                active, inactive = sum(map(int, fields[4::6])), sum(map(int, fields[5::6]))
                sums = (backends, active, inactive, fields[3::6].count("0"))
            svc = Service(*current[0], *sums, None, None, b"", current[1])  # type: ignore[call-arg]
            if rest:
                found[block] = (line, current, svc)
            services.append(svc)
    except (ValueError, IndexError, OSError):  # the line parser names the line
        return None
    if known is not None:
        known.clear()
        known.update(found)
    return services


def parse_ip_vs_lines(
    lines: Iterator[str],
    path: str = "/proc/net/ip_vs",
    want_dests: bool = False,
    known: dict[str, tuple] | None = None,
) -> list[Service]:
    """Services of /proc/net/ip_vs lines (an open file works), backends summed per service
    (listed when want_dests).

    `known` maps service lines to (identity, labels); pass the same dict on every call: service
    lines rarely change between scrapes, so most are not parsed again. Entries of services that
    disappeared are dropped. Sums are kept in locals: 15,000 backend lines must be cheap."""
    first = next(lines, "")
    if not first.startswith("IP Virtual Server version"):
        raise ParseError(f"{path}:1: not an IPVS table")
    previous = dict(known) if known else {}
    if known is None:
        known = {}
    known.clear()
    services: list[Service] = []
    current = None  # (identity, labels) of the service whose backends follow
    backends = active = inactive = weight_zero = 0
    dests: list[tuple] | None = None
    number, line = 0, ""
    try:
        for number, line in enumerate(itertools.islice(lines, 2, None), 4):  # noqa: B007 (named in errors)
            if line[:5] == "  -> ":
                # "  -> %08X:%04X      %-7s %-6d %-10d %-10d": only the last three matter here
                head, weight, act, inact = line.rsplit(None, 3)
                if current is None:
                    raise ValueError("backend before any service")
                backends += 1
                active += int(act)
                inactive += int(inact)
                if weight == "0":
                    weight_zero += 1
                if want_dests:
                    _, address_port, forward = head.split()
                    address, port = _proc_address_port(address_port)
                    assert dests is not None  # a list whenever want_dests
                    dests.append((address, port, forward.lower(), int(weight), int(act), int(inact)))
            elif line and line != "\n":
                if current is not None:
                    services.append(
                        Service(  # type: ignore[misc, call-arg]
                            *current[0],
                            backends,
                            active,
                            inactive,
                            weight_zero,
                            dests=dests,
                            labels=current[1],
                        )
                    )
                current = previous.get(line)
                if current is None:
                    identity = parse_service_line(line)
                    current = (identity, _labels(*identity[:5]))
                known[line] = current
                backends = active = inactive = weight_zero = 0
                dests = [] if want_dests else None
    except (ValueError, IndexError, OSError):  # OSError: inet_ntoa/inet_pton of a bad address
        raise ParseError(f"{path}:{number}: unexpected line") from None
    if current is not None:
        services.append(
            Service(*current[0], backends, active, inactive, weight_zero, dests=dests, labels=current[1])  # type: ignore[misc, call-arg]
        )
    return services


def parse_ip_vs_stats(text: str, path: str = "/proc/net/ip_vs_stats") -> tuple[int, ...]:
    """(connections, in packets, out packets, in bytes, out bytes) since IPVS was loaded."""
    lines = text.split("\n")
    try:
        values = tuple(parse_counter(v, 16) for v in lines[2].split())
    except (ValueError, IndexError):
        values = ()
    if len(values) != 5:
        raise ParseError(f"{path}:3: expected 5 hex counters")
    return values


# The whole table at 10,000 services x 3 backends is ~2 MB. A bound far above that keeps a
# broken or hostile file from costing more than its own collection.
MAX_TABLE_BYTES = 64 << 20


def read_table_text(path: str, max_bytes: int = MAX_TABLE_BYTES) -> str:
    """/proc/net/ip_vs, read in 1 MiB reads (the kernel's seq_file fills each); ParseError past
    max_bytes. Not f.read(max_bytes + 1), which would allocate max_bytes up front."""
    chunks, size = [], 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise ParseError(f"{path}: larger than {max_bytes >> 20} MiB")
            chunks.append(chunk)
    return b"".join(chunks).decode("ascii", "replace")


# --- IPVS generic netlink ---------------------------------------------------------------------

NETLINK_GENERIC = 16
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
IPVS_GENL_VERSION = 1
IPVS_CMD_GET_SERVICE, IPVS_CMD_GET_DEST = 4, 8
IPVS_CMD_ATTR_SERVICE, IPVS_CMD_ATTR_DEST = 1, 2
# enum IPVS_SVC_ATTR_*
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK, SVC_SCHED_NAME, SVC_FLAGS = 1, 2, 3, 4, 5, 6, 7
SVC_STATS, SVC_STATS64 = 10, 12
SVC_KEY_ATTRS = (SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK)
# enum IPVS_DEST_ATTR_*
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT = 1, 2, 3, 4
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_STATS, DEST_ADDR_FAMILY, DEST_STATS64 = 7, 8, 10, 11, 12
# enum IPVS_STATS_ATTR_*: CONNS=1 .. OUTBYTES=5, in the order Service.stats keeps them
STATS_COUNTERS = (1, 2, 3, 4, 5)

_U16 = struct.Struct("=H")
_LENGTH_TYPE = struct.Struct("=IH")  # of a netlink message header
_BE16 = struct.Struct(">H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
# What a malformed message can raise while its attributes are read: a required attribute that is
# missing (KeyError), one of the wrong size (struct.error), an address too short (ValueError).
_DECODE_ERRORS = (KeyError, struct.error, ValueError)

_attrs = attribute_spans  # {attribute type: (payload start, payload end)}


class NetlinkUnavailable(Exception):
    """The IPVS generic netlink family cannot be used here (not registered, no privilege)."""


def _stats(buf: bytes, span: tuple[int, int]) -> tuple[int, ...]:
    """Counters of an IPVS_*_ATTR_STATS64 (all u64) or _STATS (u32 and u64) nest."""
    a = _attrs(buf, *span)
    values = []
    for kind in STATS_COUNTERS:
        start, end = a.get(kind, (0, 0))
        size = end - start
        values.append(
            _U64.unpack_from(buf, start)[0]
            if size == 8
            else _U32.unpack_from(buf, start)[0]
            if size == 4
            else 0
        )
    return tuple(values)


def _nl_address(buf: bytes, start: int, end: int, family: int) -> str:
    # The kernel always sends union nf_inet_addr (16 bytes); IPv4 is its first 4 bytes.
    if family == socket.AF_INET6:
        if end - start < 16:
            raise ValueError(f"IPv6 address attribute of {end - start} bytes")
        return socket.inet_ntop(socket.AF_INET6, bytes(buf[start : start + 16]))
    if end - start < 4:
        raise ValueError(f"IPv4 address attribute of {end - start} bytes")
    return socket.inet_ntoa(bytes(buf[start : start + 4]))


def _malformed(what: str, e: Exception) -> NetlinkFormatError:
    if isinstance(e, KeyError):
        return NetlinkFormatError(f"IPVS {what} message without attribute {e.args[0]}")
    return NetlinkFormatError(f"IPVS {what} message: {e}")


def genl_messages(chunks: Iterable[bytes], family_id: int) -> Iterator[tuple[bytes, int, int]]:
    """(buffer, attributes start, message end) of each `family_id` message in recv() chunks.

    Stops at NLMSG_DONE; an NLMSG_ERROR with a non-zero code raises NetlinkKernelError, an
    OSError with that errno."""
    for buf, _kind, start, end in data_messages(chunks, family_id):
        yield buf, start + 20, end  # 16 nlmsghdr + 4 genlmsghdr


def _service_at(buf: bytes, off: int, end: int) -> tuple[Service, dict] | None:
    """The service in one IPVS_CMD_GET_SERVICE message, and its attribute spans."""
    span = _attrs(buf, off, end).get(IPVS_CMD_ATTR_SERVICE)
    if span is None:
        return None
    u16, u32 = _U16.unpack, _U32.unpack
    a = _attrs(buf, *span)
    family = u16(buf[slice(*a[SVC_AF])])[0] if SVC_AF in a else socket.AF_INET
    sched_start, sched_end = a.get(SVC_SCHED_NAME, (0, 0))
    scheduler = bytes(buf[sched_start:sched_end]).split(b"\0", 1)[0].decode("ascii", "replace")
    if SVC_FWMARK in a:
        svc = Service("", "", 0, u32(buf[slice(*a[SVC_FWMARK])])[0], scheduler)
    else:
        proto = u16(buf[slice(*a[SVC_PROTOCOL])])[0]
        svc = Service(
            PROTOCOL_NAMES.get(proto, f"IP_{proto}"),
            _nl_address(buf, *a[SVC_ADDR], family),
            _BE16.unpack(buf[slice(*a[SVC_PORT])])[0],
            0,
            scheduler,
        )
    if SVC_FLAGS in a:  # struct ip_vs_flags: flags, mask
        flags = _U32.unpack_from(buf[slice(*a[SVC_FLAGS])])[0]
        svc.persistent = bool(flags & IP_VS_SVC_F_PERSISTENT)
        svc.one_packet = bool(flags & IP_VS_SVC_F_ONEPACKET)
    stats = a.get(SVC_STATS64) or a.get(SVC_STATS)
    if stats:
        svc.stats = _stats(buf, stats)
    return svc, a


def decode_services(chunks: Iterable[bytes], family_id: int) -> list[Service]:
    """Services of an IPVS_CMD_GET_SERVICE dump (ip_vs_genl_fill_service)."""
    services = []
    try:
        for buf, off, end in genl_messages(chunks, family_id):
            found = _service_at(buf, off, end)
            if found is None:
                continue
            svc, a = found
            svc.key = b"".join(
                bytes(buf[a[k][0] - 4 : a[k][1]]) + b"\0" * (-(a[k][1] - a[k][0]) % 4)
                for k in SVC_KEY_ATTRS
                if k in a
            )
            services.append(svc)
    except _DECODE_ERRORS as e:
        if isinstance(e, ParseError):
            raise
        raise _malformed("service", e) from None
    return services


def _traffic_key(svc: Service) -> tuple:
    # IPv4 and IPv6 firewall-mark services print alike in /proc/net/ip_vs ("FWM  %08X"); they
    # are one label set when their scheduler matches too, so their counters are summed anyway.
    return (svc.fwmark, svc.scheduler) if svc.fwmark else (svc.protocol, svc.address, svc.port)


class TrafficDecoder:
    """The five traffic counters per service of an IPVS_CMD_GET_SERVICE dump, cheap at
    kube-proxy scale (the auto source decodes this dump on every collection).

    ip_vs_genl_fill_service() writes the identity attributes first, then the STATS and STATS64
    nests, so messages of one length keep their counters at the same offsets. A full decode of
    the first message of each length learns where (and the attribute headers found there); a
    later message of that length whose headers match costs one unpack, and its identity bytes
    are decoded once while they stay the same. A datagram made only of such messages (the
    usual case: one kind of service fills the ~32 KB datagrams of a dump) is unpacked by one
    struct call for all of them. Anything else is decoded fully."""

    MAX_BATCH_SHAPES = 64  # (length, count) pairs whose datagram struct is kept

    def __init__(self):
        # message length -> (identity length, struct over headers and counters, expected headers,
        # the headers' offsets after the identity)
        self.layouts: dict[int, tuple[int, struct.Struct, tuple[int, ...], tuple[int, ...]]] = {}
        self.keys: dict[bytes, tuple] = {}  # identity bytes -> _traffic_key
        # (length, count) -> (datagram struct, [(offset, the byte expected there in every message)])
        self.batches: dict[tuple[int, int], tuple[struct.Struct, list[tuple[int, bytes]]]] = {}

    def decode(self, chunks: Iterable[bytes], family_id: int) -> dict[tuple, tuple[int, ...]]:
        """{_traffic_key: (connections, in packets, out packets, in bytes, out bytes)}."""
        traffic: dict[tuple, tuple[int, ...]] = {}
        previous = self.keys
        keys: dict[bytes, tuple] = {}
        self.keys = keys
        try:
            for chunk in chunks:
                batch = self._batch(chunk, family_id, previous, keys)
                if batch is None:
                    self._messages(chunk, family_id, previous, keys, traffic)
                    continue
                found = dict(batch)
                if len(found) == len(batch) and traffic.keys().isdisjoint(found):
                    traffic.update(found)
                else:  # a firewall-mark pair in this datagram or across two: summed
                    for key, stats in batch:
                        seen = traffic.get(key)
                        traffic[key] = stats if seen is None else tuple(map(sum, zip(seen, stats)))
        except _DECODE_ERRORS as e:
            if isinstance(e, ParseError):
                raise
            raise _malformed("service", e) from None
        return traffic

    def _batch(self, buf: bytes, family_id: int, previous: dict, keys: dict) -> list[tuple] | None:
        """[(key, counters)] of a datagram whose messages all have one learnt layout, from one
        struct call; None for anything else, or an identity not seen before."""
        size = len(buf)
        if size < 20:
            return None
        length, kind = _LENGTH_TYPE.unpack_from(buf)
        layout = self.layouts.get(length - 20)
        step = (length + 3) & ~3
        if kind != family_id or layout is None or size % step:
            return None
        count = size // step
        batch = self.batches.get((length, count))
        if batch is None:
            if len(self.batches) >= self.MAX_BATCH_SHAPES:
                self.batches.clear()
            batch = self.batches[(length, count)] = self._batch_shape(length, family_id, layout, count)
        shape, constant = batch
        # Every message's length, type and counter headers: one strided slice per byte.
        for at, expected in constant:
            if buf[at::step] != expected:
                return None
        values = shape.unpack_from(buf)
        width = 1 + len(STATS_COUNTERS)  # identity, counters
        identities = values[0::width]
        found = list(map(previous.get, identities))
        if None in found:
            found = [k or keys.get(i) for k, i in zip(found, identities)]
            if None in found:
                return None  # a new service: decoded (and learnt) one message at a time
        keys.update(zip(identities, found))
        return list(zip(found, zip(*(values[at::width] for at in range(1, width)))))

    @staticmethod
    def _batch_shape(length: int, family_id: int, layout: tuple, count: int) -> tuple:
        """The struct that reads the identity and counters of `count` messages of one layout,
        and the bytes that must be the same in each (length, type, the counters' headers)."""
        identity, _, headers, offsets = layout
        step = (length + 3) & ~3
        one, at = f"20x{identity}s", 0
        expected = {i: b for i, b in enumerate(_LENGTH_TYPE.pack(length, family_id))}
        for offset, header in zip(offsets, headers):
            one += f"{offset - at}x4xQ"
            at = offset + 12
            for i, b in enumerate(_U32.pack(header)):
                expected[20 + identity + offset + i] = b
        one += f"{step - 20 - identity - at}x"
        return struct.Struct("=" + one * count), [(i, bytes([b]) * count) for i, b in expected.items()]

    def _messages(self, chunk: bytes, family_id: int, previous: dict, keys: dict, traffic: dict) -> None:
        """The datagram's messages one at a time, adding to traffic."""
        layouts = self.layouts
        for buf, _kind, start, end in data_messages((chunk,), family_id):
            off = start + 20  # 16 nlmsghdr + 4 genlmsghdr
            layout = layouts.get(end - off)
            key = None
            if layout is not None:
                size, shape, headers, _ = layout
                values = shape.unpack_from(buf, off + size)
                if values[0::2] == headers:
                    identity = buf[off : off + size]
                    key = previous.get(identity) or keys.get(identity)
                    if key is not None:
                        keys[identity] = key
                        stats = values[1::2]
            if key is None:
                found = self._learn(buf, off, end)
                if found is None:
                    continue
                key, stats = found
            seen = traffic.get(key)
            traffic[key] = stats if seen is None else tuple(map(sum, zip(seen, stats)))

    def _learn(self, buf: bytes, off: int, end: int) -> tuple[tuple, tuple[int, ...]] | None:
        found = _service_at(buf, off, end)
        if found is None:
            return None
        svc, a = found
        stats = svc.stats
        if stats is None:
            return None
        key = _traffic_key(svc)
        if SVC_STATS64 in a and SVC_STATS in a:
            nest = a[SVC_STATS][0] - 4  # identity attributes end where the STATS nest starts
            counters = _attrs(buf, *a[SVC_STATS64])
            if all(counters.get(k, (0, 0))[1] - counters.get(k, (0, 0))[0] == 8 for k in STATS_COUNTERS):
                offsets = [counters[k][0] - 4 - nest for k in STATS_COUNTERS]  # attribute headers
                if offsets == sorted(offsets) and offsets[0] >= 0:
                    fmt, at = "=", 0
                    for o in offsets:
                        fmt += f"{o - at}xIQ"
                        at = o + 12
                    shape = struct.Struct(fmt)
                    headers = shape.unpack_from(buf, nest)[0::2]
                    self.layouts[end - off] = (nest - off, shape, headers, tuple(offsets))
                    self.keys[bytes(buf[off:nest])] = key
        return key, stats


def decode_dests(chunks: Iterable[bytes], family_id: int, svc: Service, want_dests: bool) -> None:
    """Set svc's backends from an IPVS_CMD_GET_DEST dump (ip_vs_genl_fill_dest): sums, and the
    list when want_dests."""
    svc.backends = svc.active = svc.inactive = svc.weight_zero = 0
    dests: list[tuple[str, int, str, int, int, int]] | None = [] if want_dests else None
    svc.dests = dests
    u32 = _U32.unpack
    try:
        for buf, off, end in genl_messages(chunks, family_id):
            span = _attrs(buf, off, end).get(IPVS_CMD_ATTR_DEST)
            if span is None:
                continue
            a = _attrs(buf, *span)
            weight = u32(buf[slice(*a[DEST_WEIGHT])])[0]
            active = u32(buf[slice(*a[DEST_ACTIVE_CONNS])])[0]
            inactive = u32(buf[slice(*a[DEST_INACT_CONNS])])[0]
            svc.add_backend(weight, active, inactive)
            if dests is not None:
                family = (
                    _U16.unpack(buf[slice(*a[DEST_ADDR_FAMILY])])[0]
                    if DEST_ADDR_FAMILY in a
                    else socket.AF_INET6
                    if ":" in svc.address
                    else socket.AF_INET
                )
                forward = u32(buf[slice(*a[DEST_FWD_METHOD])])[0] if DEST_FWD_METHOD in a else 0
                dests.append(
                    (
                        _nl_address(buf, *a[DEST_ADDR], family),
                        _BE16.unpack(buf[slice(*a[DEST_PORT])])[0],
                        FORWARD_NAMES.get(forward, "masq"),
                        weight,
                        active,
                        inactive,
                    )
                )
    except _DECODE_ERRORS as e:
        if isinstance(e, ParseError):
            raise
        raise _malformed("destination", e) from None


class GenlSocket:
    """Generic netlink on the shared client: resolve a family, run requests and dumps."""

    def __init__(self, sock: socket.socket | None = None):
        # a reply that never ends must not hang the collector
        self.nl = NetlinkSocket(NETLINK_GENERIC, timeout=10.0, sock=sock)

    @staticmethod
    def _body(cmd: int, version: int, attrs: bytes) -> bytes:
        return struct.pack("=BBH", cmd, version, 0) + attrs  # genlmsghdr

    def request(self, kind: int, flags: int, cmd: int, version: int, attrs: bytes) -> list[bytes]:
        """Send one request; return the reply chunks up to and including NLMSG_DONE or the ack."""
        body = self._body(cmd, version, attrs)
        if flags & NLM_F_DUMP == NLM_F_DUMP:
            return self.nl.dump(kind, body, flags=flags)
        return self.nl.request(kind, body, flags=flags)

    def dump(
        self, kind: int, cmd: int, version: int, attrs: bytes, decode: Callable[[Iterator[bytes]], T]
    ) -> T:
        """decode(the reply chunks, as they arrive) of one dump."""
        return self.nl.dump(kind, self._body(cmd, version, attrs), decode)

    def family_id(self, name: str) -> int:
        """The numeric id of a generic netlink family; NetlinkUnavailable when not registered."""
        try:
            chunks = self.request(
                GENL_ID_CTRL,
                NLM_F_REQUEST,
                CTRL_CMD_GETFAMILY,
                1,
                attribute(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"),
            )
            for buf, off, end in genl_messages(chunks, GENL_ID_CTRL):
                start, stop = _attrs(buf, off, end).get(CTRL_ATTR_FAMILY_ID, (0, 0))
                if stop - start >= 2:
                    return _U16.unpack_from(buf, start)[0]
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NetlinkUnavailable(f"generic netlink family {name} is not registered") from None
            raise
        raise NetlinkUnavailable(f"generic netlink family {name}: no id in the reply")

    def close(self) -> None:
        self.nl.close()


@contextlib.contextmanager
def _needs_privilege():
    """IPVS netlink commands are GENL_ADMIN_PERM: EPERM means the exporter lacks CAP_NET_ADMIN."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.EPERM:
            raise NetlinkUnavailable("IPVS netlink needs CAP_NET_ADMIN") from None
        raise


class IpvsNetlink:
    """The IPVS table through generic netlink."""

    def __init__(self, sock: GenlSocket | None = None):
        self.genl = sock or GenlSocket()
        try:
            self.family = self.genl.family_id("IPVS")
        except BaseException:
            self.genl.close()
            raise

    def _service_dump(self, decode: Callable):
        """One IPVS_CMD_GET_SERVICE dump (every service, no destinations), decoded by `decode`."""
        with _needs_privilege():
            return self.genl.dump(
                self.family,
                IPVS_CMD_GET_SERVICE,
                IPVS_GENL_VERSION,
                b"",
                lambda chunks: decode(chunks, self.family),
            )

    def dump_services(self) -> list[Service]:
        """The services with their traffic counters, without destinations (one request)."""
        return self._service_dump(decode_services)

    def dump_traffic(self, decoder: TrafficDecoder) -> dict[tuple, tuple[int, ...]]:
        """Per-service traffic counters (one request), keyed like /proc/net/ip_vs services."""
        return self._service_dump(decoder.decode)

    def services(self, want_dests: bool) -> list[Service]:
        """The services and, one dump per service, their destinations."""
        services = self.dump_services()
        with _needs_privilege():
            for svc in services:
                self.genl.dump(
                    self.family,
                    IPVS_CMD_GET_DEST,
                    IPVS_GENL_VERSION,
                    attribute(IPVS_CMD_ATTR_SERVICE, svc.key),
                    functools.partial(decode_dests, family_id=self.family, svc=svc, want_dests=want_dests),
                )
        return services

    def close(self) -> None:
        self.genl.close()


# --- kernel prerequisites -----------------------------------------------------------------------


def parse_proc_modules(text: str) -> set[str]:
    """Names of loaded modules: the first field of each /proc/modules line."""
    return {line.split(" ", 1)[0] for line in text.split("\n") if line}


# --- the collector ------------------------------------------------------------------------------

NETLINK_AND_PROCFS = "netlink+procfs"  # the auto source with netlink: see the module docstring


def add_traffic(services: list[Service], traffic: dict[tuple, tuple[int, ...]]) -> None:
    """Put the counters of TrafficDecoder.decode() on the /proc/net/ip_vs services.

    A firewall-mark pair's summed counters go to the first of the pair (the one the series
    merge keeps). A service that appeared between the dump and the read gets none this time."""
    for svc in services:
        svc.stats = traffic.pop(_traffic_key(svc), None)


@dataclass
class Table:
    source: str
    services: list[Service]
    totals: tuple[int, ...] | None = None
    loaded: dict[str, bool] = field(default_factory=dict)
    sysctls: dict[str, int] = field(default_factory=dict)


def _module_names(names: list[str]) -> None:
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError(f"invalid kernel module name {name!r}")


# glibc raises its mmap threshold to the size of each large block that is freed (up to 32 MiB):
# after the first big collection, the megabyte buffers of every later one (the table's text, the
# encoded body) come from the heaps of the collector's and encoder's threads and stay resident
# there. A fixed threshold keeps them mmap()ed and unmapped when freed: at 5,000 services x 3
# backends ~5 MB less peak RSS (bench/README.md). Process-wide, so set only where IPVS is used.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters (malloc.h)
MMAP_THRESHOLD = 128 << 10  # glibc's initial mmap and trim thresholds


def fix_mmap_threshold() -> None:
    """Also the trim threshold, which glibc raised along (to twice the mmap threshold)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc
        pass


class IpvsCollector(Collector):
    name = "ipvs"
    default_enabled = True
    help = "IPVS virtual services (kube-proxy IPVS mode): table shape, black holes, traffic."
    options = (
        Option("backends", "Also export one series per backend (active, inactive, weight).", False, "bool"),
        Option(
            "max-series",
            "Cap on per-service plus per-backend series; above it those are "
            "dropped (backends first) and netstack_ipvs_series_capped is 1.",
            DEFAULT_MAX_SERIES,
            "int",
            min=0,
            max=10_000_000,
        ),
        Option(
            "source",
            "Where to read the table: auto (traffic from one netlink service dump, "
            "backends from /proc/net/ip_vs; /proc/net/ip_vs alone without CAP_NET_ADMIN), "
            "netlink (one netlink request per service) or procfs.",
            "auto",
            choices=("auto", "netlink", "procfs"),
        ),
        Option(
            "modules",
            "Kernel modules reported by netstack_kernel_module_loaded.",
            DEFAULT_MODULES,
            "list",
            validate=_module_names,
        ),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.netlink: IpvsNetlink | None = None
        self.source = ""
        self.known_lines: dict[str, tuple] = {}  # /proc/net/ip_vs service line -> (identity, labels)
        self.netlink_error = ""  # last netlink failure after the probe, logged once
        self.traffic_decoder = TrafficDecoder()  # learns the dump's layout once
        self.dump_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.row_template = RowTemplate()  # the per-service lines, remade when the services change

    def probe(self) -> None:
        wanted = self.option("source")
        self.close()  # the exporter probes again after a failure
        table = self.paths.proc("net", "ip_vs")
        why = ""
        if wanted in ("auto", "netlink"):
            why = self.open_netlink()
            if not why:
                self.source = "netlink" if wanted == "netlink" else NETLINK_AND_PROCFS
                return
            if wanted == "netlink":
                raise SourceUnavailable(f"IPVS not available: {why}")
        if os.access(table, os.R_OK):
            if why:
                log_event(log, logging.INFO, "IPVS netlink unavailable, reading /proc/net/ip_vs", reason=why)
            self.source = "procfs"
            return
        missing = f"{table} does not exist" if not os.path.exists(table) else f"cannot read {table}"
        reason = f"{why}; {missing}" if why else missing
        raise SourceUnavailable(f"IPVS not available (ip_vs module not loaded?): {reason}")

    def start(self) -> None:
        fix_mmap_threshold()

    def ip_vs_loaded(self) -> bool:
        return self.modules_loaded(["ip_vs"])["ip_vs"] or os.path.exists(self.paths.proc("net", "ip_vs"))

    def open_netlink(self) -> str:
        """Connect to the IPVS netlink family; the reason it cannot be used, or "" on success."""
        if not self.ip_vs_loaded():
            # Looking the family up would make the kernel load ip_vs (MODULE_ALIAS_GENL_FAMILY)
            # on every node that does not use IPVS, and report it loaded from then on.
            return (
                f"netlink: not asked, ip_vs is not loaded (not in {self.paths.proc('modules')} "
                f"or {self.paths.sys('module')})"
            )
        try:
            self.netlink = IpvsNetlink()
            self.netlink.dump_services()  # proves the privilege (CAP_NET_ADMIN) too
            return ""
        except NetlinkUnavailable as e:
            why = f"netlink: {e}"
        except OSError as e:
            why = f"netlink: {e.strerror or e}"
        self.close()
        return why

    def _dump_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self.dump_thread is None:
            self.dump_thread = concurrent.futures.ThreadPoolExecutor(1, "netstack-ipvs-dump")
        return self.dump_thread

    def close(self) -> None:
        if self.netlink is not None:
            self.netlink.close()
            self.netlink = None
        if self.dump_thread is not None:
            self.dump_thread.shutdown(wait=False)
            self.dump_thread = None

    def _netlink_failed(self, why: str) -> None:
        """IPVS unloaded or privileges dropped since the probe: /proc this time, and a new
        connection next time (the family id changes when ip_vs is reloaded)."""
        if why != self.netlink_error:  # one line per distinct failure, not per scrape
            log_event(log, logging.INFO, "IPVS netlink failed, reading /proc/net/ip_vs", reason=why)
        self.netlink_error = why
        self.close()

    def read_table(self) -> Table:
        want_dests = self.option("backends")
        table = None
        dumping = None  # auto: the service dump, whose traffic counters /proc lacks
        if self.source in ("netlink", NETLINK_AND_PROCFS):
            why = self.open_netlink() if self.netlink is None else ""
            if why:
                self._netlink_failed(why)
            elif self.netlink is not None and self.source == "netlink":
                try:
                    table = Table("netlink", self.netlink.services(want_dests))
                    self.netlink_error = ""
                except (NetlinkUnavailable, OSError) as e:
                    self._netlink_failed(f"netlink: {e}")
            elif self.netlink is not None:
                # The dump runs on another thread while this one reads /proc/net/ip_vs: both are
                # mostly kernel time, during which the GIL is free. Not the other way round: a
                # thread waits for the GIL after each of its system calls while the other runs
                # Python, and the dump makes a few dozen, the read several hundred (the kernel
                # returns a page of the table per read).
                dumping = self._dump_thread().submit(self.netlink.dump_traffic, self.traffic_decoder)
        if table is None:
            path = self.paths.proc("net", "ip_vs")
            try:
                services = parse_ip_vs(read_table_text(path), path, want_dests, self.known_lines)
            except FileNotFoundError:  # ip_vs unloaded since the probe
                raise SourceUnavailable(f"IPVS not available: {path} does not exist") from None
            finally:
                if dumping is not None:  # never leave a dump running on the socket
                    concurrent.futures.wait([dumping])
            dumped = None
            if dumping is not None:
                try:
                    dumped = dumping.result()
                    self.netlink_error = ""
                except (NetlinkUnavailable, OSError) as e:
                    self._netlink_failed(f"netlink: {e}")
            if dumped is not None:
                add_traffic(services, dumped)
                table = Table(NETLINK_AND_PROCFS, services)
            else:
                table = Table("procfs", services)
        stats_path = self.paths.proc("net", "ip_vs_stats")
        try:
            table.totals = parse_ip_vs_stats(read_text(stats_path), stats_path)
        except FileNotFoundError:
            pass
        table.loaded = self.modules_loaded()
        table.sysctls = self.read_sysctls()
        return table

    def modules_loaded(self, modules: list[str] | None = None) -> dict[str, bool]:
        try:
            loaded = parse_proc_modules(read_text(self.paths.proc("modules")))
        except FileNotFoundError:  # CONFIG_MODULES=n: everything is built in
            loaded = set()
        # /sys/module/<m> exists for loaded modules and for built-in ones that have parameters
        return {
            m: m in loaded or os.path.isdir(self.paths.sys("module", m))
            for m in modules or self.option("modules")
        }

    def read_sysctls(self) -> dict[str, int]:
        out = {}
        for name in SYSCTLS:
            try:
                out[name] = read_int(self.paths.proc("sys", *name.split(".")))
            except FileNotFoundError:
                pass  # absent sysctl (IPVS not loaded in this netns, older kernel): no series
        return out

    def collect(self) -> Iterable[Metric]:
        return build_metrics(
            self.read_table(), self.option("backends"), self.option("max-series"), self.row_template
        )

    def unavailable_families(self) -> Iterable[Metric]:
        # Without IPVS, which of its modules are missing is exactly what an IPVS-mode node needs.
        return prerequisite_families(self.modules_loaded(), self.read_sysctls())


# --- metric families ----------------------------------------------------------------------------

TOTALS = (
    ("netstack_ipvs_connections", "Connections IPVS scheduled since it was loaded."),
    ("netstack_ipvs_incoming_packets", "Packets IPVS received for virtual services."),
    ("netstack_ipvs_outgoing_packets", "Packets IPVS sent back from backends (NAT mode)."),
    ("netstack_ipvs_incoming_bytes", "Bytes IPVS received for virtual services."),
    ("netstack_ipvs_outgoing_bytes", "Bytes IPVS sent back from backends (NAT mode)."),
)
SERVICE_TRAFFIC = (
    ("netstack_ipvs_service_connections", "Connections scheduled to this virtual service."),
    ("netstack_ipvs_service_incoming_packets", "Packets received for this virtual service."),
    ("netstack_ipvs_service_outgoing_packets", "Packets sent back for this virtual service."),
    ("netstack_ipvs_service_incoming_bytes", "Bytes received for this virtual service."),
    ("netstack_ipvs_service_outgoing_bytes", "Bytes sent back for this virtual service."),
)


def _labels(protocol: str, address: str, port: int, fwmark: int, scheduler: str) -> LabelSet:
    # A LabelSet: cached with its service line, so formatted once per service, not per scrape.
    if fwmark:
        return LabelSet(fwmark=str(fwmark), scheduler=scheduler)
    return LabelSet(protocol=protocol, address=address, port=str(port), scheduler=scheduler)


def service_labels(svc: Service) -> dict[str, str]:
    """The labels of per-service series; the same dict for all of a service's series."""
    if svc.labels is None:
        svc.labels = _labels(svc.protocol, svc.address, svc.port, svc.fwmark, svc.scheduler)
    return svc.labels


def _gauge(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def build_metrics(
    table: Table, backends: bool, max_series: int, template: RowTemplate | None = None
) -> list[Metric]:
    """The collection's families; `template`, kept across collections, writes the per-service
    series."""
    services = table.services
    out: list[Metric] = []

    source = _gauge("netstack_ipvs_source_info", "Where the IPVS table was read from (value is 1).")
    source.samples.append(Sample(source.name, {"source": table.source}, 1.0))
    out.append(source)

    if table.totals is not None:
        for (name, doc), value in zip(TOTALS, table.totals):
            out.append(CounterMetricFamily(name, doc + " From /proc/net/ip_vs_stats.", value=value))

    n_backends = without = weight_zero = unweighted = 0
    for svc in services:
        n_backends += svc.backends
        weight_zero += svc.weight_zero
        if svc.backends == 0:
            without += 1
        elif svc.weight_zero == svc.backends:
            unweighted += 1
    out += [
        _gauge("netstack_ipvs_services", "Virtual services in the IPVS table.", len(services)),
        _gauge("netstack_ipvs_backends", "Backends (real servers) over all virtual services.", n_backends),
        _gauge(
            "netstack_ipvs_services_without_backends",
            "Virtual services with no backend: IPVS drops their traffic.",
            without,
        ),
        _gauge(
            "netstack_ipvs_services_without_weighted_backends",
            "Virtual services whose backends all have weight 0: new connections are dropped.",
            unweighted,
        ),
        _gauge(
            "netstack_ipvs_backends_weight_zero",
            "Backends with weight 0 (draining or disabled).",
            weight_zero,
        ),
    ]

    has_traffic = any(svc.stats is not None for svc in services)
    service_series = len(services) * (3 + (len(SERVICE_TRAFFIC) if has_traffic else 0))
    backend_series = 3 * n_backends if backends else 0
    emit_backends = backends and service_series + backend_series <= max_series
    emit_services = service_series <= max_series
    capped = (backends and not emit_backends) or not emit_services
    out.append(
        _gauge(
            "netstack_ipvs_series_capped",
            "1 when per-service or per-backend series were dropped by --collector.ipvs.max-series.",
            1.0 if capped else 0.0,
        )
    )

    listed = _merge_fwmark_duplicates(services) if emit_services else []
    if emit_services:
        out += _service_families(listed, has_traffic, template)
    if emit_backends:
        out += _backend_families(listed)

    out += prerequisite_families(table.loaded, table.sysctls)
    return out


def prerequisite_families(loaded: dict[str, bool], sysctls: dict[str, int]) -> list[Metric]:
    """The kernel modules and sysctls IPVS mode needs; reported with or without an IPVS table."""
    modules = _gauge(
        "netstack_kernel_module_loaded",
        "1 when the kernel module is loaded or built in (visible in /proc/modules or /sys/module).",
    )
    for module, present in loaded.items():
        modules.samples.append(Sample(modules.name, {"module": module}, 1.0 if present else 0.0))
    out: list[Metric] = [modules]
    if sysctls:
        sysctl = _gauge("netstack_ipvs_sysctl", "IPVS-related sysctls kube-proxy relies on.")
        for name, value in sysctls.items():
            sysctl.samples.append(Sample(sysctl.name, {"sysctl": name}, value))
        out.append(sysctl)
    return out


def _service_families(
    services: list[Service], has_traffic: bool, template: RowTemplate | None
) -> list[Metric]:
    """Eight series per service at 5,000 services: columns sharing one list of label sets, which
    the encoder formats once (exporter.exposition.ColumnFamily), not a row per series."""
    labels = [service_labels(svc) for svc in services]
    family: Callable[..., ColumnFamily] = functools.partial(ColumnFamily, template=template)
    families: list[Metric] = [
        family(
            "netstack_ipvs_service_backends",
            "Backends of this virtual service.",
            "gauge",
            labels,
            [svc.backends for svc in services],
        ),
        family(
            "netstack_ipvs_service_connections_active",
            "Active (established) connections, summed over the service's backends.",
            "gauge",
            labels,
            [svc.active for svc in services],
        ),
        family(
            "netstack_ipvs_service_connections_inactive",
            "Inactive connections, summed over the service's backends.",
            "gauge",
            labels,
            [svc.inactive for svc in services],
        ),
    ]
    if has_traffic:
        counted = [svc for svc in services if svc.stats is not None]
        if len(counted) < len(services):  # services that appeared between the dump and the read
            labels = [service_labels(svc) for svc in counted]
            family = ColumnFamily  # another label list: the template stays the one of all services
        columns = zip(*[svc.stats for svc in counted])  # stats is set on these
        families += [
            family(name, doc + " Netlink source only.", "counter", labels, column)
            for (name, doc), column in zip(SERVICE_TRAFFIC, columns)
        ]
    return families


def _merge_fwmark_duplicates(services: list[Service]) -> list[Service]:
    """IPv4 and IPv6 firewall-mark services can share a mark; their labels would collide, so
    they are summed into one series. Address services are unique by (protocol, address, port)."""
    out: list[Service] = []
    merged: dict[tuple, Service] = {}
    for svc in services:
        if not svc.fwmark:
            out.append(svc)
            continue
        key = (svc.fwmark, svc.scheduler)
        first = merged.get(key)
        if first is None:
            # a copy: the parser keeps its Services for the next collection, the sums are ours
            merged[key] = first = dataclasses.replace(svc)
            out.append(first)
            continue
        first.backends += svc.backends
        first.active += svc.active
        first.inactive += svc.inactive
        first.weight_zero += svc.weight_zero
        if first.stats is not None and svc.stats is not None:
            first.stats = tuple(x + y for x, y in zip(first.stats, svc.stats))
        if first.dests is not None and svc.dests is not None:
            first.dests += svc.dests
    return out


def _backend_families(services: list[Service]) -> list[Metric]:
    active = CompactFamily(
        "netstack_ipvs_backend_connections_active", "Active connections of this backend.", "gauge"
    )
    inactive = CompactFamily(
        "netstack_ipvs_backend_connections_inactive", "Inactive connections of this backend.", "gauge"
    )
    weight = CompactFamily(
        "netstack_ipvs_backend_weight", "Scheduling weight of this backend (0: no new connections).", "gauge"
    )
    for svc in services:
        if not svc.dests:
            continue
        base = {k: v for k, v in service_labels(svc).items() if k != "scheduler"}
        for address, port, forward, w, act, inact in svc.dests:
            labels = {**base, "backend_address": address, "backend_port": str(port), "forward": forward}
            active.rows.append((labels, act))
            inactive.rows.append((labels, inact))
            weight.rows.append((labels, w))
    return [active, inactive, weight]


COLLECTOR = IpvsCollector
