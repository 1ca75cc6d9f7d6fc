"""The few rtnetlink requests the overlay collector makes, on plain sockets.

Why not pyroute2's IPRoute for all of it: a full link dump decoded by pyroute2 costs time in
proportion to every interface on the host, veths of every pod included (bench/README.md), and
the kernel ignores a link-kind filter for kinds whose module is not loaded. So the dump is read
raw, every message is scanned with struct for index, name, MTU and kind, and pyroute2 decodes
only the tunnel devices' messages (see overlay.tunnel_config). Counters come from RTM_GETSTATS
for one ifindex at a time: one small message per device, no matter how many other interfaces
the host has.

Everything that turns bytes into values is a pure function; RtnlSocket and LinkMonitor only move
bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .netlink import (
    NLMSGHDR,
    NetlinkFormatError,
    NetlinkSocket,
    attribute,
    attributes,
    data_messages,
    messages,
)

NETLINK_ROUTE = 0

# Message types (linux/rtnetlink.h).
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWSTATS = 92
RTM_GETSTATS = 94

RCVBUF = 1 << 20  # room for a dump part and a burst of link events

# Multicast groups, as bind() bitmask (RTMGRP_*).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400

IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_EXT_MASK = 29
IFLA_LINK_NETNSID = 37
RTEXT_FILTER_SKIP_STATS = 1 << 3  # older kernels ignore the bit, they just send more bytes
IFLA_STATS_LINK_64 = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFSTATSMSG = struct.Struct("=BxHII")  # family, pad, ifindex, filter_mask
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
U32 = struct.Struct("=I")

# struct rtnl_link_stats64, in kernel order. Kernels append fields over time (rx_nohandler in 4.6,
# rx_otherhost_dropped in 5.19); parse_stats64 reads as many as the kernel sent.
STATS64_FIELDS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "multicast",
    "collisions",
    "rx_length_errors",
    "rx_over_errors",
    "rx_crc_errors",
    "rx_frame_errors",
    "rx_fifo_errors",
    "rx_missed_errors",
    "tx_aborted_errors",
    "tx_carrier_errors",
    "tx_fifo_errors",
    "tx_heartbeat_errors",
    "tx_window_errors",
    "rx_compressed",
    "tx_compressed",
    "rx_nohandler",
    "rx_otherhost_dropped",
)


# --- pure wire-format functions ---------------------------------------------------------------


def iter_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, whole message including its header) for each netlink message."""
    for mtype, flags, seq, start, end in messages(data):
        yield mtype, flags, seq, data[start:end]


def iter_attrs(buf: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each rtattr in buf[offset:]."""
    for atype, start, end in attributes(buf, offset):
        yield atype, buf[start:end]


def cstring(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode("ascii", "replace")


@dataclass(frozen=True)
class LinkSummary:
    index: int
    name: str
    mtu: int | None
    kind: str | None  # IFLA_INFO_KIND, None for devices without one (physical NICs, lo)
    link_netnsid: int | None  # set when the device's lower links live in another netns
    message: bytes  # the whole RTM_NEWLINK/RTM_DELLINK, for a full decode when needed


def parse_link(message: bytes) -> LinkSummary:
    """The fields of an RTM_NEWLINK/RTM_DELLINK message the collector needs for every link."""
    base = NLMSGHDR.size
    if len(message) < base + IFINFOMSG.size:
        raise NetlinkFormatError(f"link message of {len(message)} bytes is too short")
    _family, _type, index, _flags, _change = IFINFOMSG.unpack_from(message, base)
    name, mtu, kind, netnsid = "", None, None, None
    for atype, payload in iter_attrs(message, base + IFINFOMSG.size):
        if atype == IFLA_IFNAME:
            name = cstring(payload)
        elif atype == IFLA_MTU and len(payload) >= 4:
            mtu = U32.unpack_from(payload)[0]
        elif atype == IFLA_LINK_NETNSID and len(payload) >= 4:
            netnsid = struct.unpack_from("=i", payload)[0]
        elif atype == IFLA_LINKINFO:
            for itype, ipayload in iter_attrs(payload):
                if itype == IFLA_INFO_KIND:
                    kind = cstring(ipayload)
    return LinkSummary(index, name, mtu, kind, netnsid, message)


def parse_stats64(message: bytes) -> dict[str, int]:
    """Counters from an RTM_NEWSTATS reply carrying IFLA_STATS_LINK_64."""
    for atype, payload in iter_attrs(message, NLMSGHDR.size + IFSTATSMSG.size):
        if atype == IFLA_STATS_LINK_64:
            count = min(len(payload) // 8, len(STATS64_FIELDS))
            values = struct.unpack_from(f"={count}Q", payload)
            return dict(zip(STATS64_FIELDS, values))
    raise NetlinkFormatError("RTM_NEWSTATS reply without IFLA_STATS_LINK_64")


def parse_route_oif(message: bytes) -> int | None:
    for atype, payload in iter_attrs(message, NLMSGHDR.size + RTMSG.size):
        if atype == RTA_OIF and len(payload) >= 4:
            return U32.unpack_from(payload)[0]
    return None


def parse_addr(message: bytes) -> tuple[int, set[bytes]]:
    """(ifindex, raw addresses) of an RTM_NEWADDR message."""
    if len(message) < NLMSGHDR.size + IFADDRMSG.size:
        raise NetlinkFormatError(f"address message of {len(message)} bytes is too short")
    _family, _plen, _flags, _scope, index = IFADDRMSG.unpack_from(message, NLMSGHDR.size)
    found = {
        payload
        for atype, payload in iter_attrs(message, NLMSGHDR.size + IFADDRMSG.size)
        if atype in (IFA_ADDRESS, IFA_LOCAL)
    }
    return index, found


# --- sockets ----------------------------------------------------------------------------------


class RtnlSocket:
    """Request/response rtnetlink on the shared client (sequence check, NLM_F_DUMP_INTR retry,
    bounds, timeout: netlink.NetlinkSocket). One request at a time."""

    TIMEOUT = 5.0  # the kernel answers at once; this only bounds a wedged socket

    def __init__(self) -> None:
        self._nl = NetlinkSocket(NETLINK_ROUTE, timeout=self.TIMEOUT, rcvbuf=RCVBUF)

    def close(self) -> None:
        self._nl.close()

    def dump_links(self) -> list[LinkSummary]:
        body = IFINFOMSG.pack(0, 0, 0, 0, 0) + attribute(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
        return self._nl.dump(RTM_GETLINK, body, _decode_links, what="link dump")

    def link_stats(self, index: int) -> dict[str, int] | None:
        """Counters of one device; None when it no longer exists."""
        body = IFSTATSMSG.pack(0, 0, index, 1 << (IFLA_STATS_LINK_64 - 1))
        try:
            return self._nl.request(RTM_GETSTATS, body, _decode_stats)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def route_oif(self, address: str) -> int | None:
        """Output interface of the route the kernel would use to reach address; None if none."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = RTMSG.pack(family, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0) + attribute(RTA_DST, ip.packed)
        try:
            return self._nl.request(RTM_GETROUTE, body, _decode_route_oif)
        except OSError as e:
            if e.errno in (
                errno.ENETUNREACH,
                errno.EHOSTUNREACH,
                errno.ESRCH,
                errno.EINVAL,
                errno.EACCES,
                errno.EPERM,
            ):
                return None  # unroutable (or a prohibit/blackhole route)
            raise

    def address_owner(self, address: str) -> int | None:
        """ifindex of the device that has address assigned; None if no device has it."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6

        def owner(chunks: Iterable[bytes]) -> int | None:
            found = None
            for buf, _kind, start, end in data_messages(chunks, RTM_NEWADDR):
                index, addresses = parse_addr(buf[start:end])
                if found is None and ip.packed in addresses:
                    found = index
            return found

        return self._nl.dump(RTM_GETADDR, IFADDRMSG.pack(family, 0, 0, 0, 0), owner, what="address dump")


def _decode_links(chunks: Iterable[bytes]) -> list[LinkSummary]:
    return [parse_link(buf[start:end]) for buf, _kind, start, end in data_messages(chunks, RTM_NEWLINK)]


def _decode_stats(chunks: Iterable[bytes]) -> dict[str, int] | None:
    for buf, _kind, start, end in data_messages(chunks, RTM_NEWSTATS):
        return parse_stats64(buf[start:end])
    return None


def _decode_route_oif(chunks: Iterable[bytes]) -> int | None:
    for buf, _kind, start, end in data_messages(chunks, RTM_NEWROUTE):
        return parse_route_oif(buf[start:end])
    return None


@dataclass(frozen=True)
class Event:
    type: int  # RTM_NEWLINK, RTM_DELLINK, RTM_NEWROUTE, ...
    link: LinkSummary | None  # for link events


class LinkMonitor:
    """A netlink socket subscribed to link, address and route changes, read without blocking."""

    MAX_RECVS = 1000  # per drain: a storm of events ends in "overflowed", i.e. a full refresh

    def __init__(self) -> None:
        self._nl = NetlinkSocket(
            NETLINK_ROUTE,
            RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE,
            timeout=0,
            rcvbuf=RCVBUF,
        )

    def close(self) -> None:
        self._nl.close()

    def drain(self) -> tuple[list[Event], bool]:
        """Events queued since the last call, and whether some were lost (then refresh all)."""
        events: list[Event] = []
        for _ in range(self.MAX_RECVS):
            try:
                data = self._nl.receive_nowait()
            except NetlinkFormatError:  # a notification too big to read whole: lost, refresh
                return events, True
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped events: our view is stale
                    return events, True
                raise
            if data is None:
                return events, False
            for mtype, _flags, _seq, message in iter_messages(data):
                if mtype in (RTM_NEWLINK, RTM_DELLINK):
                    events.append(Event(mtype, parse_link(message)))
                else:
                    events.append(Event(mtype, None))
        return events, True
