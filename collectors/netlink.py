"""Netlink: the wire format and the one client that conntrack (ctnetlink), IPVS (generic netlink)
and overlay (rtnetlink) use to talk to the kernel.

pyroute2 decodes every attribute into Python objects; at thousands of messages per collection
that is the whole budget (bench/README.md). The functions here walk the bytes
and hand out (type, start, end) spans, so callers read only the attributes they need with struct.

NetlinkSocket moves bytes: it sends a request and returns (or streams to a decoder) the reply's
recv() datagrams, after checking what every caller needs checked:
  - replies whose sequence number is not the request's are skipped (left over from an abandoned
    request);
  - an NLMSG_ERROR (or an NLMSG_DONE carrying an errno) raises NetlinkKernelError;
  - a dump the kernel flags NLM_F_DUMP_INTR (the table changed under it) is run again, a few
    times, then fails with NetlinkDumpInterrupted;
  - one datagram may be at most RECV_SIZE bytes (MSG_TRUNC tells when it was larger), one reply
    at most max_messages messages and max_bytes bytes, and each recv() waits at most `timeout`.

Errors: every failure is a NetlinkError, a ParseError: for a collector a reply it cannot use is
bad input from its source, whatever the cause, so "only ParseError escapes a decoder" holds for
the netlink decoders too. The two kinds:
  NetlinkFormatError  the bytes are not a netlink reply (a cut message, a bad attribute length,
                      a missing attribute) or the reply is larger than its bound;
  NetlinkKernelError  the kernel said no: an errno from an NLMSG_ERROR reply or from the socket
                      (ENOBUFS, a timeout as ETIMEDOUT). It is also an OSError with .errno, and an
                      instance of the OSError subclass Python uses for that errno
                      (PermissionError for EPERM, FileNotFoundError for ENOENT, ...).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from exporter.contract import ParseError

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_MIN_TYPE = 0x10  # types below are control messages
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
MAX_ERRNO = 4095  # the kernel's errnos are 1..4095 (include/linux/err.h)

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA = struct.Struct("=HH")  # len, type
_INT = struct.Struct("=i")


# --- errors -------------------------------------------------------------------------------------


class NetlinkError(ParseError):
    """A netlink request or its reply failed; see the subclasses for why."""


class NetlinkFormatError(NetlinkError):
    """A reply did not have the netlink layout (a length that does not fit its buffer, a missing
    or short attribute), or was larger than the bound its request allows."""


class NetlinkKernelError(OSError, NetlinkError):
    """The kernel answered with an errno (NLMSG_ERROR, or an error of the socket itself)."""


class NetlinkDumpInterrupted(NetlinkKernelError):
    """Every attempt at a dump was flagged NLM_F_DUMP_INTR: the table kept changing under it."""


_KERNEL_ERROR_CLASSES: dict[type, type] = {OSError: NetlinkKernelError}


def kernel_error(code: int, prefix: str = "") -> NetlinkKernelError:
    """NetlinkKernelError(code), of the OSError subclass Python picks for that errno."""
    builtin = type(OSError(code, ""))
    cls = _KERNEL_ERROR_CLASSES.get(builtin)
    if cls is None:
        cls = _KERNEL_ERROR_CLASSES[builtin] = type(
            f"Netlink{builtin.__name__}", (NetlinkKernelError, builtin), {}
        )
    return cls(code, prefix + os.strerror(code))


# --- wire format --------------------------------------------------------------------------------


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, start, end) of each netlink message in one recv() buffer; the header
    is buf[start:start + 16]. A message cut short is an error: the kernel never splits one
    across datagrams, so a cut means bytes were lost."""
    offset, size = 0, len(buf)
    while offset + NLMSGHDR.size <= size:
        length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < NLMSGHDR.size or offset + length > size:
            raise NetlinkFormatError(
                f"netlink: truncated message (length {length} at offset {offset} of {size} bytes)"
            )
        yield kind, flags, seq, offset, offset + length
        offset += (length + 3) & ~3


def attributes(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in buf[start:end]."""
    end = len(buf) if end is None else min(end, len(buf))
    unpack = NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4 or start + length > end:
            raise NetlinkFormatError(
                f"netlink: malformed attribute (length {length} at offset {start}, {end - start} bytes left)"
            )
        yield kind & NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def attribute_spans(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """{attribute type: (payload start, payload end)} of the attributes in buf[start:end] (the
    last one of a type wins). The same walk as attributes(), without a generator: decoders call
    it for every message."""
    end = min(end, len(buf))
    unpack = NLA.unpack_from
    spans = {}
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4 or start + length > end:
            raise NetlinkFormatError(
                f"netlink: malformed attribute (length {length} at offset {start}, {end - start} bytes left)"
            )
        spans[kind & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return spans


def attribute(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes (for requests and test messages)."""
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def _errno_at(buf: bytes, start: int, end: int | None, what: str) -> int:
    if end is None:
        end = start + NLMSGHDR.unpack_from(buf, start)[0] if start + NLMSGHDR.size <= len(buf) else 0
    end = min(end, len(buf))
    if end - start < NLMSGHDR.size + 4:
        raise NetlinkFormatError(f"netlink: {what} of {max(end - start, 0)} bytes has no error field")
    value = _INT.unpack_from(buf, start + NLMSGHDR.size)[0]
    if not -MAX_ERRNO <= value <= 0:
        raise NetlinkFormatError(f"netlink: {what} with error field {value}, not 0 or -errno")
    return -value


def error_code(buf: bytes, start: int, end: int | None = None) -> int:
    """The errno of the NLMSG_ERROR message at buf[start:end] (0 for an acknowledgement); end
    defaults to the message's own length."""
    return _errno_at(buf, start, end, "NLMSG_ERROR")


def done_code(buf: bytes, start: int, end: int) -> int:
    """The errno an NLMSG_DONE carries when the kernel's dump callback failed part-way (0 when
    the dump is complete, or when the message has no payload)."""
    if end - start < NLMSGHDR.size + 4:
        return 0
    return _errno_at(buf, start, end, "NLMSG_DONE")


def data_messages(chunks: Iterable[bytes], kind: int | None = None) -> Iterator[tuple[bytes, int, int, int]]:
    """(buffer, type, start, end) of each data message (of type `kind`, if given) in the recv()
    chunks of one reply, up to NLMSG_DONE. An NLMSG_ERROR with an errno, or an NLMSG_DONE
    carrying one, raises NetlinkKernelError; acknowledgements and control messages are skipped."""
    for buf in chunks:
        for mkind, _flags, _seq, start, end in messages(buf):
            if mkind == NLMSG_DONE:
                code = done_code(buf, start, end)
                if code:
                    raise kernel_error(code, "dump failed part-way: ")
                return
            if mkind == NLMSG_ERROR:
                code = error_code(buf, start, end)
                if code:
                    raise kernel_error(code)
            elif mkind == kind or (kind is None and mkind >= NLMSG_MIN_TYPE):
                yield buf, mkind, start, end


# --- the client ---------------------------------------------------------------------------------


class NetlinkSocket:
    """One netlink socket: requests and dumps with their replies checked (see the module
    docstring), or, opened with multicast groups, notifications read without blocking.

    One request at a time: a lock serialises callers. A reply left half-read (its decoder failed,
    or a bound was hit) would leave the kernel's dump running, and the next dump would get EBUSY,
    so the socket is replaced by a fresh one before the next request."""

    RECV_SIZE = 1 << 16  # the kernel's dump datagrams are at most 32 KiB
    MAX_MESSAGES = 1 << 20  # default bounds on one reply
    MAX_BYTES = 256 << 20
    MAX_STALE = 1000  # datagrams of other requests skipped while waiting for ours
    DUMP_ATTEMPTS = 3

    def __init__(
        self,
        protocol: int,
        groups: int = 0,
        *,
        timeout: float = 5.0,
        rcvbuf: int | None = None,
        sock: socket.socket | None = None,
    ):
        """timeout bounds each recv() (0: never wait, for notification sockets). sock: an
        already opened socket (tests), used as is."""
        self.protocol, self.groups, self.timeout, self.rcvbuf = protocol, groups, timeout, rcvbuf
        self._owned = sock is None
        self._sock: socket.socket | None = sock if sock is not None else self._open()
        self._buffer = bytearray(self.RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._seq = 0
        self._lock = threading.Lock()

    def _open(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, self.protocol)
        except OSError as e:
            raise kernel_error(e.errno or errno.EIO, "netlink socket: ") from None
        try:
            if self.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, self.groups))
            sock.settimeout(self.timeout)
        except OSError as e:
            sock.close()
            raise kernel_error(e.errno or errno.EIO, "netlink socket: ") from None
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = self._open()
        return self._sock

    def _abandon(self) -> None:
        """The current reply was not read to its end: start over on a fresh socket."""
        if self._owned:
            self.close()

    def _recv(self) -> bytes:
        sock = self._socket()
        try:
            n = sock.recv_into(self._buffer, self.RECV_SIZE, socket.MSG_TRUNC)
        except BlockingIOError:
            raise
        except TimeoutError:
            raise kernel_error(errno.ETIMEDOUT, f"no netlink reply within {self.timeout} s: ") from None
        except OSError as e:
            raise kernel_error(e.errno or errno.EIO, "netlink recv: ") from None
        if n > self.RECV_SIZE:  # MSG_TRUNC: n is the datagram's real size
            raise NetlinkFormatError(
                f"netlink: datagram of {n} bytes is larger than the {self.RECV_SIZE}-byte receive buffer"
            )
        if n == 0:
            raise kernel_error(errno.EIO, "netlink socket closed: ")
        return bytes(self._view[:n])

    def receive_nowait(self) -> bytes | None:
        """One queued datagram of a notification socket; None when nothing is queued. The kernel
        dropping notifications (the queue overflowed) raises NetlinkKernelError(ENOBUFS)."""
        try:
            return self._recv()
        except BlockingIOError:
            return None

    def request(
        self,
        msg_type: int,
        body: bytes = b"",
        decode: Callable[[Iterator[bytes]], Any] = list,
        flags: int = 0,
    ) -> Any:
        """Send one request (not a dump) and return decode(reply datagrams), by default the
        list of datagrams: the reply message, or an NLMSG_ERROR acknowledgement."""
        with self._lock:
            reply = self._reply(
                msg_type, (flags | NLM_F_REQUEST) & ~NLM_F_DUMP, body, self.MAX_MESSAGES, self.MAX_BYTES
            )
            try:
                return decode(reply)
            finally:
                reply.close()

    def dump(
        self,
        msg_type: int,
        body: bytes = b"",
        decode: Callable[[Iterator[bytes]], Any] = list,
        flags: int = 0,
        what: str = "netlink dump",
        max_messages: int | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        """Run a dump and return decode(its datagrams, as they arrive): by default the list of
        them, up to and including the one with NLMSG_DONE. decode must start from scratch on
        each call: an interrupted dump is run again with a new decode()."""
        with self._lock:
            for attempt in range(1, self.DUMP_ATTEMPTS + 1):
                reply = self._reply(
                    msg_type,
                    flags | NLM_F_REQUEST | NLM_F_DUMP,
                    body,
                    max_messages or self.MAX_MESSAGES,
                    max_bytes or self.MAX_BYTES,
                )
                try:
                    return decode(reply)
                except NetlinkDumpInterrupted:
                    if attempt == self.DUMP_ATTEMPTS:
                        raise NetlinkDumpInterrupted(
                            errno.EAGAIN,
                            f"{what} interrupted {attempt} times in a row (the "
                            f"kernel's table changed during each)",
                        ) from None
                finally:
                    reply.close()
        raise AssertionError("unreachable")

    def _reply(
        self, msg_type: int, flags: int, body: bytes, max_messages: int, max_bytes: int
    ) -> Generator[bytes, None, None]:
        """The datagrams of the reply to one request, checked as they arrive."""
        self._seq = self._seq % 0xFFFFFFFF + 1  # never 0: notifications have sequence number 0
        seq = self._seq
        sock = self._socket()
        message = NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body
        try:
            sock.send(message)
        except OSError as e:
            self._abandon()
            raise kernel_error(e.errno or errno.EIO, "netlink send: ") from None
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        ended = interrupted = False
        count = size = stale = 0
        unpack = NLMSGHDR.unpack_from
        try:
            while True:
                data = self._recv()
                # Walk the headers: which messages are ours, and whether the reply ends here.
                ours: list[tuple[int, int]] = []
                foreign = 0
                offset, total = 0, len(data)
                while offset + 16 <= total:
                    length, kind, mflags, mseq, _pid = unpack(data, offset)
                    if length < 16 or offset + length > total:
                        raise NetlinkFormatError(
                            f"netlink: truncated message (length {length} at "
                            f"offset {offset} of {total} bytes)"
                        )
                    step = (length + 3) & ~3
                    if mseq == seq:
                        ours.append((offset, offset + step))
                        if mflags & NLM_F_DUMP_INTR:
                            interrupted = True
                        if kind == NLMSG_ERROR:
                            ended = True
                            code = error_code(data, offset, offset + length)
                            if code:
                                raise kernel_error(code)
                        elif kind == NLMSG_DONE:
                            ended = True
                            code = done_code(data, offset, offset + length)
                            if code:
                                raise kernel_error(code, "dump failed part-way: ")
                    else:
                        foreign += 1
                    offset += step
                if not ours:
                    stale += 1
                    if stale > self.MAX_STALE:
                        raise NetlinkFormatError(
                            f"netlink: no reply to request {seq} among {stale} datagrams"
                        )
                    continue  # a reply to an earlier, abandoned request
                if foreign:  # ours mixed with a stale reply's messages: keep only ours
                    data = b"".join(data[s:e] for s, e in ours)
                count += len(ours)
                size += len(data)
                if count > max_messages or size > max_bytes:
                    raise NetlinkFormatError(
                        f"netlink: reply larger than its bound ({max_messages} messages, {max_bytes} bytes)"
                    )
                if not dump:
                    ended = True  # a plain request's reply is one datagram
                if ended and interrupted:
                    raise NetlinkDumpInterrupted(errno.EAGAIN, "netlink dump interrupted")
                yield data
                if ended:
                    return
        finally:
            if not ended:
                self._abandon()
