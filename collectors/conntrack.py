"""Conntrack: how full the table is and how often inserts fail, per network namespace.

Sources, in order:
  1. ctnetlink (collectors/netlink.py): per-CPU statistics (IPCTNL_MSG_CT_GET_STATS_CPU) and the
     entry count plus nf_conntrack_max (IPCTNL_MSG_CT_GET_STATS). Needs CAP_NET_ADMIN.
  2. procfs: /proc/net/stat/nf_conntrack (one hex row per possible CPU, columns named by a header
     line that differs between kernels) and /proc/sys/net/netfilter/nf_conntrack_{count,max}.
nf_conntrack_buckets is read from procfs in both cases (netlink does not carry it).

The kernel keeps these statistics in 32-bit per-CPU counters. Summed naively, one CPU wrapping
would make the sum drop by 2**32 and rate() would see a reset and a huge false spike, so
collect() extends every per-CPU counter to 64 bits before summing (common.WrappingCounters).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from exporter.contract import Collector, Option, ParseError, SourceUnavailable
from exporter.logs import log_event
from exporter.metrics import CounterMetricFamily, GaugeMetricFamily

from .common import U32_MAX, WrappingCounters, parse_counter, read_int, read_text
from .netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_MIN_TYPE,
    NetlinkError,
    NetlinkFormatError,
    NetlinkKernelError,
    NetlinkSocket,
    attributes,
    data_messages,
    done_code,
    error_code,
    kernel_error,
    messages,
)

log = logging.getLogger("netstack.conntrack")


# Counters exported as netstack_conntrack_<key>_total. Obsolete columns that current kernels
# print as zero (searched, new, ignore, delete, delete_list) and the expectation counters (a
# separate netlink subsystem) are left out.
STATS_HELP = {
    "found": "Lookups that found an existing entry (NAT tuple checks).",
    "invalid": "Packets conntrack could not track (malformed, out of window, unknown state).",
    "insert": "Entries inserted into the table.",
    "insert_failed": "Entries that lost an insert race to an identical tuple; the packet was dropped.",
    "drop": "Packets dropped because a new entry could not be created (table full, nothing to "
    "evict) or failed to insert.",
    "early_drop": "Unassured entries evicted to make room in a full table.",
    "error": "ICMP errors that did not match a tracked connection.",
    "search_restart": "Table lookups restarted because a resize or insert moved the chain.",
    "clash_resolve": "Insert races resolved by reusing the existing entry (UDP, DNS A/AAAA).",
    "chain_toolong": "Inserts refused because a hash chain was too long (hash flooding).",
}

# /proc/net/stat/nf_conntrack header name -> key. Columns are found by name, never by position.
PROCFS_COLUMNS = {
    "found": "found",
    "invalid": "invalid",
    "insert": "insert",
    "insert_failed": "insert_failed",
    "drop": "drop",
    "early_drop": "early_drop",
    "icmp_error": "error",
    "search_restart": "search_restart",
    "clashres": "clash_resolve",
    "chainlength": "chain_toolong",
}

# ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h): NFNL_SUBSYS_CTNETLINK << 8 | msg
NETLINK_NETFILTER = 12
CT_GET = (1 << 8) | 1  # IPCTNL_MSG_CT_GET
CT_GET_STATS_CPU = (1 << 8) | 4  # IPCTNL_MSG_CT_GET_STATS_CPU
CT_GET_STATS = (1 << 8) | 5  # IPCTNL_MSG_CT_GET_STATS
NFGENMSG_UNSPEC = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # family, version, res_id
# enum ctattr_stats_cpu (CTA_STATS_*) -> key
NETLINK_ATTRS = {
    2: "found",
    4: "invalid",
    8: "insert",
    9: "insert_failed",
    10: "drop",
    11: "early_drop",
    12: "error",
    13: "search_restart",
    14: "clash_resolve",
    15: "chain_toolong",
}
CTA_STATS_GLOBAL_ENTRIES, CTA_STATS_GLOBAL_MAX_ENTRIES = 1, 2
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")

# enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h), names as conntrack -L.
TCP_STATES = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6", 132: "sctp", 136: "udplite"}


@dataclass
class Snapshot:
    """One reading of the kernel. stats: {cpu: {key: raw 32-bit value}}; None means absent."""

    source: str
    entries: int | None = None
    limit: int | None = None
    stats: dict[int, dict[str, int]] = field(default_factory=dict)


# --- pure parsing -----------------------------------------------------------------------------


def parse_procfs_stats(
    text: str,
    path: str = "nf_conntrack",
) -> tuple[int | None, dict[int, dict[str, int]]]:
    """/proc/net/stat/nf_conntrack -> (entries, {row: {key: value}}).

    Rows are the possible CPUs in order; `entries` repeats the namespace's count on every row."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ParseError(f"{path}: empty")
    header = lines[0].split()
    if "entries" not in header:
        raise ParseError(f"{path}:1: header without an 'entries' column")
    entries = None
    stats: dict[int, dict[str, int]] = {}
    for row, line in enumerate(lines[1:]):
        fields = line.split()
        if len(fields) != len(header):
            raise ParseError(f"{path}:{row + 2}: {len(fields)} fields, header has {len(header)}")
        try:
            numbers = [parse_counter(f, 16, U32_MAX) for f in fields]  # the kernel's unsigned ints
        except ValueError:
            raise ParseError(f"{path}:{row + 2}: a column is not a 32-bit hex counter") from None
        values = dict(zip(header, numbers))
        entries = values["entries"]
        stats[row] = {key: values[col] for col, key in PROCFS_COLUMNS.items() if col in values}
    return entries, stats


def stats_from_netlink(chunks: Iterable[bytes]) -> dict[int, dict[str, int]]:
    """IPCTNL_MSG_CT_GET_STATS_CPU dump (one message per CPU, nfgenmsg res_id = CPU, big-endian
    u32 attributes; ctnetlink_ct_stat_cpu_fill_info) -> {cpu: {key: value}}."""
    stats = {}
    for buf, _kind, start, end in data_messages(chunks, CT_GET_STATS_CPU):
        if end - start < 20:
            raise NetlinkFormatError(f"ctnetlink: per-CPU statistics message of {end - start} bytes")
        cpu = _BE16.unpack_from(buf, start + 18)[0]
        stats[cpu] = {
            NETLINK_ATTRS[kind]: _be32(buf, s, e)
            for kind, s, e in attributes(buf, start + 20, end)
            if kind in NETLINK_ATTRS
        }
    return stats


def count_from_netlink(chunks: Iterable[bytes]) -> tuple[int | None, int | None]:
    """IPCTNL_MSG_CT_GET_STATS reply (ctnetlink_stat_ct_fill_info) -> (entries, max). Old
    kernels omit the max."""
    values: dict[int, int] = {}
    for buf, _kind, start, end in data_messages(chunks, CT_GET_STATS):
        values.update(
            (kind, _be32(buf, s, e))
            for kind, s, e in attributes(buf, start + 20, end)
            if kind in (CTA_STATS_GLOBAL_ENTRIES, CTA_STATS_GLOBAL_MAX_ENTRIES)
        )
    return values.get(CTA_STATS_GLOBAL_ENTRIES), values.get(CTA_STATS_GLOBAL_MAX_ENTRIES)


def _be32(buf: bytes, start: int, end: int) -> int:
    if end - start != 4:
        raise NetlinkFormatError(f"ctnetlink: statistics attribute of {end - start} bytes, not 4")
    return _BE32.unpack_from(buf, start)[0]


# --- by-state: a ctnetlink table dump, parsed without building per-entry objects --------------

CTA_TUPLE_ORIG, CTA_PROTOINFO = 1, 4
CTA_TUPLE_PROTO, CTA_PROTO_NUM = 2, 1
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1


def _find(buf: bytes, start: int, end: int, kind: int) -> tuple[int, int] | None:
    for k, s, e in attributes(buf, start, end):
        if k == kind:
            return s, e
    return None


def entry_state(buf: bytes, start: int, end: int) -> tuple[str, str]:
    """(protocol, state) of one IPCTNL_MSG_CT_NEW message body (after nfgenmsg).

    state is the TCP state for TCP and "none" for protocols without one."""
    protocol = "unknown"
    tup = _find(buf, start, end, CTA_TUPLE_ORIG)
    proto = tup and _find(buf, *tup, CTA_TUPLE_PROTO)
    num = proto and _find(buf, *proto, CTA_PROTO_NUM)
    if num and num[1] > num[0]:
        protocol = PROTOCOLS.get(buf[num[0]], str(buf[num[0]]))
    if protocol != "tcp":
        return protocol, "none"
    info = _find(buf, start, end, CTA_PROTOINFO)
    tcp = info and _find(buf, *info, CTA_PROTOINFO_TCP)
    state = tcp and _find(buf, *tcp, CTA_PROTOINFO_TCP_STATE)
    if not state or state[1] <= state[0]:
        return protocol, "NONE"
    value = buf[state[0]]
    return protocol, TCP_STATES[value] if value < len(TCP_STATES) else str(value)


def count_dump(chunks: Iterable[bytes], counts: Counter) -> bool:
    """Add the entries of ctnetlink dump datagrams to counts; True once NLMSG_DONE was seen,
    False when the chunks end before it (the dump goes on). A message cut short raises
    NetlinkFormatError, as everywhere: the kernel never splits a message across datagrams, so a
    cut means lost bytes, and counting on would undercount without saying so."""
    for buf in chunks:
        for kind, _flags, _seq, start, end in messages(buf):
            if kind == NLMSG_DONE:
                code = done_code(buf, start, end)
                if code:
                    raise kernel_error(code, "ctnetlink dump failed part-way: ")
                return True
            if kind == NLMSG_ERROR:
                code = error_code(buf, start, end)
                if code:
                    raise kernel_error(code, "ctnetlink dump: ")
            elif kind >= NLMSG_MIN_TYPE:
                counts[entry_state(buf, start + 20, end)] += 1
    return False


def dump_states(timeout: float = 10.0, max_entries: int | None = None) -> Counter:
    """{(protocol, state): entries} of this network namespace, from one ctnetlink dump.
    max_entries bounds the messages read (the table cannot hold more than nf_conntrack_max)."""

    def count(chunks: Iterable[bytes]) -> Counter:
        counts: Counter = Counter()
        if not count_dump(chunks, counts):
            raise NetlinkFormatError("ctnetlink dump ended without NLMSG_DONE")
        return counts

    nl = NetlinkSocket(NETLINK_NETFILTER, timeout=timeout, rcvbuf=1 << 20)
    try:
        # nfgenmsg family AF_UNSPEC: IPv4 and IPv6 entries alike.
        return nl.dump(
            CT_GET,
            NFGENMSG_UNSPEC,
            count,
            what="ctnetlink table dump",
            max_messages=max_entries,
            max_bytes=1 << 40,
        )
    finally:
        nl.close()


# --- the collector ----------------------------------------------------------------------------


class NetlinkRefused(Exception):
    """ctnetlink cannot serve in this process for good (no privilege, not supported)."""


PERMANENT_ERRNOS = {
    errno.EPERM,
    errno.EACCES,
    errno.EPROTONOSUPPORT,
    errno.EAFNOSUPPORT,
    errno.ENOENT,
    errno.EOPNOTSUPP,
}


def read_netlink() -> Snapshot:
    """Per-CPU statistics, entry count and max from ctnetlink. NetlinkRefused when ctnetlink
    cannot serve here for good, OSError (errno and reason) when it failed this time."""
    try:
        # A fresh socket per collection: nothing to keep consistent between collections, and
        # opening one is cheap.
        nl = NetlinkSocket(NETLINK_NETFILTER)
        try:
            stats = nl.dump(
                CT_GET_STATS_CPU, NFGENMSG_UNSPEC, stats_from_netlink, what="ctnetlink statistics dump"
            )
            entries, limit = nl.request(CT_GET_STATS, NFGENMSG_UNSPEC, count_from_netlink)
        finally:
            nl.close()
    except NetlinkError as e:
        code = e.errno if isinstance(e, NetlinkKernelError) else None
        if code is None:  # a malformed reply: treated like a transient failure
            raise OSError(errno.EBADMSG, f"ctnetlink: {e}") from None
        reason = f"ctnetlink: {os.strerror(code)}"
        if code in PERMANENT_ERRNOS:
            if code == errno.EPERM:
                reason += " (needs CAP_NET_ADMIN)"
            raise NetlinkRefused(reason) from None
        raise OSError(code, reason) from None
    return Snapshot("netlink", entries, limit, stats)


class ConntrackCollector(Collector):
    name = "conntrack"
    default_enabled = True
    help = "Conntrack table fill level and failure counters (ctnetlink, or procfs)."
    options = (
        Option("per-cpu", "Export the failure counters per CPU (adds a cpu label).", False, "bool"),
        Option(
            "by-state",
            "Also count entries by protocol and TCP state from a full table dump "
            "(costly on big tables, see the docs).",
            False,
            "bool",
        ),
        Option(
            "source",
            "Where to read: auto (ctnetlink, else procfs), netlink or procfs "
            "(/proc/net/stat/nf_conntrack and the nf_conntrack_* sysctls under --path.procfs).",
            "auto",
            choices=("auto", "netlink", "procfs"),
        ),
    )

    @classmethod
    def check_options(cls, values) -> None:
        if values["by-state"] and values["source"] == "procfs":
            raise ValueError(
                "--collector.conntrack.by-state needs ctnetlink: it cannot be "
                "combined with --collector.conntrack.source=procfs"
            )

    def __init__(self, ctx):
        super().__init__(ctx)
        self._lock = threading.Lock()
        self._wrap = WrappingCounters(32)
        self._netlink = True  # False once ctnetlink refused us for good
        self._warned: set[str] = set()

    # paths
    def _sysctl(self, name: str) -> str:
        return self.paths.proc("sys", "net", "netfilter", name)

    def _stat_file(self) -> str:
        return self.paths.proc("net", "stat", "nf_conntrack")

    def probe(self) -> None:
        max_path = self._sysctl("nf_conntrack_max")
        if not os.path.exists(max_path):
            # Asking ctnetlink would make the kernel autoload nf_conntrack: never do that.
            raise SourceUnavailable(f"nf_conntrack is not loaded: {max_path} does not exist")
        wanted = self.option("source")
        self._netlink = False
        netlink_reason = "ctnetlink: not asked (--collector.conntrack.source=procfs)"
        if wanted != "procfs":
            try:
                read_netlink()
                self._netlink = True
                return
            except NetlinkRefused as e:
                netlink_reason = str(e)
            except OSError as e:
                self._netlink = True  # transient: collect() tries netlink again
                netlink_reason = str(e)
            if wanted == "netlink":
                raise SourceUnavailable(netlink_reason)
        try:
            self.read_procfs()
        except OSError as e:
            raise SourceUnavailable(f"{netlink_reason}; procfs: {e}") from None
        except ParseError:
            pass  # the file is there and says something wrong: collect() fails with the reason
        if wanted == "auto":
            log_event(log, logging.WARNING, "conntrack served from procfs", reason=netlink_reason)

    def _warn_once(self, key: str, msg: str, **kv) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log_event(log, logging.WARNING, msg, **kv)

    def read_procfs(self) -> Snapshot:
        snap = Snapshot("procfs")
        path = self._stat_file()
        try:
            snap.entries, snap.stats = parse_procfs_stats(read_text(path), path)
        except FileNotFoundError:
            # Kernels built without CONFIG_NF_CONNTRACK_PROCFS: count and max only.
            self._warn_once(
                "nostat",
                "conntrack counters unavailable, exporting count and max",
                path=path,
                reason="no ctnetlink and kernel without CONFIG_NF_CONNTRACK_PROCFS",
            )
            snap.entries = read_int(self._sysctl("nf_conntrack_count"))
        snap.limit = read_int(self._sysctl("nf_conntrack_max"))
        return snap

    def _read(self) -> Snapshot:
        if self._netlink:
            try:
                snap = read_netlink()
                self._warned.discard("netlink")
                if snap.limit is None:
                    snap.limit = read_int(self._sysctl("nf_conntrack_max"))
                return snap
            except NetlinkRefused as e:
                if self.option("source") == "netlink":  # no fallback asked for: say it is gone
                    raise SourceUnavailable(str(e)) from None
                self._netlink = False
                log_event(log, logging.WARNING, "conntrack served from procfs", reason=str(e))
            except OSError as e:
                if self.option("source") == "netlink":
                    raise
                # Transient (e.g. ENOBUFS): serve this collection from procfs, retry next time.
                self._warn_once("netlink", "conntrack served from procfs this time", reason=str(e))
        return self.read_procfs()

    def collect(self) -> Iterable:
        with self._lock:
            snap = self._read()
            families = list(self.families(snap))
            if self.option("by-state"):
                by_state = self._by_state(snap.limit)
                if by_state is not None:
                    families.append(by_state)
        return families

    def families(self, snap: Snapshot) -> Iterator:
        source = GaugeMetricFamily(
            "netstack_conntrack_source_info",
            "Which source served this collection (netlink or procfs).",
            labels=["source"],
        )
        source.add_metric([snap.source], 1)
        yield source
        if snap.entries is not None:
            yield GaugeMetricFamily(
                "netstack_conntrack_entries",
                "Entries in this network namespace's conntrack table.",
                value=snap.entries,
            )
        if snap.limit is not None:
            yield GaugeMetricFamily(
                "netstack_conntrack_entries_limit",
                "nf_conntrack_max: the most entries a namespace may hold (one value for the whole host).",
                value=snap.limit,
            )
        try:
            buckets = read_int(self._sysctl("nf_conntrack_buckets"))
            yield GaugeMetricFamily(
                "netstack_conntrack_buckets", "Size of the conntrack hash table (host-wide).", value=buckets
            )
        except FileNotFoundError:
            pass  # a kernel or namespace without the sysctl
        except (OSError, ParseError) as e:
            if "buckets" not in self._warned:  # once: the other series are still served
                self._warned.add("buckets")
                log_event(log, logging.WARNING, "conntrack cannot read nf_conntrack_buckets", error=str(e))
        per_cpu = self.option("per-cpu")
        keys = [k for k in STATS_HELP if any(k in row for row in snap.stats.values())]
        for key in keys:
            family = CounterMetricFamily(
                f"netstack_conntrack_{key}", STATS_HELP[key], labels=["cpu"] if per_cpu else []
            )
            total = 0
            for cpu, row in sorted(snap.stats.items()):
                if key in row:
                    value = self._wrap((cpu, key), row[key])
                    total += value
                    if per_cpu:
                        family.add_metric([str(cpu)], value)
            if not per_cpu:
                family.add_metric([], total)
            yield family
        yield CounterMetricFamily(
            "netstack_conntrack_implausible_readings",
            "Conntrack statistics readings held back as implausible (a drop or a jump of over a "
            "quarter of the 32-bit range that the next reading did not confirm).",
            value=self._wrap.rejected,
        )

    def _by_state(self, limit: int | None):
        try:
            # entries deleted and re-added during the dump may be seen twice, no more
            counts = dump_states(max_entries=2 * limit + 1024 if limit else None)
        except OSError as e:
            # Counters above still serve; only the breakdown is missing.
            self._warn_once("by-state", "conntrack by-state unavailable", reason=str(e))
            return None
        family = GaugeMetricFamily(
            "netstack_conntrack_entries_by_state",
            'Entries by protocol and TCP state (state="none" for '
            "protocols without one), from a ctnetlink table dump.",
            labels=["protocol", "state"],
        )
        for (protocol, state), n in sorted(counts.items()):
            family.add_metric([protocol, state], n)
        return family


COLLECTOR = ConntrackCollector
