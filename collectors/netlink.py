"""Netlink wire format, shared by the collectors that read the kernel on plain netlink sockets
(conntrack's table dump, IPVS generic netlink, overlay's rtnetlink requests).

pyroute2 decodes every attribute into Python objects; at thousands of messages per collection
that is the whole budget (bench/README.md). These walk the bytes and hand
out (type, start, end) spans, so callers read only the attributes they need with struct.
"""

from __future__ import annotations

import struct
from typing import Iterator

from exporter.contract import ParseError

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA = struct.Struct("=HH")  # len, type


class NetlinkFormatError(ParseError):
    """A reply did not have the netlink layout: a length that does not fit its buffer."""


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, start, end) of each netlink message in one recv() buffer; the header
    is buf[start:start + 16]."""
    offset, size = 0, len(buf)
    while offset + NLMSGHDR.size <= size:
        length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < NLMSGHDR.size or offset + length > size:
            raise NetlinkFormatError(f"netlink: truncated message (length {length} at offset "
                                     f"{offset} of {size} bytes)")
        yield kind, flags, seq, offset, offset + length
        offset += (length + 3) & ~3


def attributes(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in buf[start:end]."""
    end = len(buf) if end is None else min(end, len(buf))
    unpack = NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4 or start + length > end:
            raise NetlinkFormatError(f"netlink: malformed attribute (length {length} at offset "
                                     f"{start}, {end - start} bytes left)")
        yield kind & NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def attribute(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes (for requests and test messages)."""
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def error_code(buf: bytes, start: int) -> int:
    """The errno of the NLMSG_ERROR message at buf[start:] (0 for an acknowledgement)."""
    return -struct.unpack_from("=i", buf, start + NLMSGHDR.size)[0]
