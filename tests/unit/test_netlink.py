"""The shared netlink client and wire format (collectors/netlink.py).

Against the real kernel where it can show the behaviour (rtnetlink and generic netlink answer
unprivileged processes in their own netns): multi-part dumps, errnos, the receive-size bound via
MSG_TRUNC, a reply bound that abandons a dump (and the fresh socket that lets the next dump
run), the timeout. A scripted socket only for what the kernel cannot be made to do on demand:
a stale reply of an earlier request, NLM_F_DUMP_INTR, an NLMSG_DONE carrying an errno.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from collectors import netlink
from collectors.netlink import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    NetlinkDumpInterrupted,
    NetlinkError,
    NetlinkFormatError,
    NetlinkKernelError,
    NetlinkSocket,
)
from exporter.contract import ParseError

NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
RTM_NEWLINK, RTM_GETLINK = 16, 18
IFINFOMSG = struct.Struct("=BxHiII")
GENL_ID_CTRL = 0x10


def link_request(index: int = 0) -> bytes:
    return IFINFOMSG.pack(0, 0, index, 0, 0)


def message(kind: int, seq: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return NLMSGHDR.pack(16 + len(payload), kind, flags, seq, 0) + payload


def done(seq: int, code: int = 0, flags: int = 2) -> bytes:
    return message(NLMSG_DONE, seq, struct.pack("=i", -code), flags)


def error(seq: int, code: int) -> bytes:
    return message(NLMSG_ERROR, seq, struct.pack("=i", -code) + NLMSGHDR.pack(16, 0, 0, seq, 0))


# --- against the kernel ------------------------------------------------------------------------


def test_link_dump_is_every_datagram_up_to_done():
    nl = NetlinkSocket(NETLINK_ROUTE)
    try:
        chunks = nl.dump(RTM_GETLINK, link_request())
        kinds = [kind for chunk in chunks for kind, *_ in netlink.messages(chunk)]
        assert kinds[-1] == NLMSG_DONE and kinds.count(NLMSG_DONE) == 1
        assert kinds.count(RTM_NEWLINK) >= 1  # lo at least
        # the same socket serves the next request: sequence numbers move on
        again = nl.dump(RTM_GETLINK, link_request())
        seqs = {seq for chunk in chunks + again for _k, _f, seq, _s, _e in netlink.messages(chunk)}
        assert len(seqs) == 2
    finally:
        nl.close()


def test_kernel_errno_is_one_error_type_and_the_matching_oserror():
    nl = NetlinkSocket(NETLINK_ROUTE)
    try:
        with pytest.raises(NetlinkKernelError) as e:
            nl.request(RTM_GETLINK, link_request(0x7FFFFFF0))  # no such ifindex
    finally:
        nl.close()
    assert e.value.errno == errno.ENODEV
    assert isinstance(e.value, OSError) and isinstance(e.value, NetlinkError)
    assert isinstance(e.value, ParseError)  # what the collector contract says escapes


def test_unknown_generic_family_is_enoent_as_filenotfounderror():
    nl = NetlinkSocket(NETLINK_GENERIC)
    body = struct.pack("=BBH", 3, 1, 0) + netlink.attribute(2, b"NETSTACK_NONE\0")
    try:
        with pytest.raises(FileNotFoundError) as e:
            nl.request(GENL_ID_CTRL, body)
    finally:
        nl.close()
    assert isinstance(e.value, NetlinkKernelError) and e.value.errno == errno.ENOENT


def test_datagram_larger_than_the_receive_bound_is_an_error_not_a_silent_cut():
    class Small(NetlinkSocket):
        RECV_SIZE = 64  # every RTM_NEWLINK is larger

    nl = Small(NETLINK_ROUTE)
    try:
        with pytest.raises(
            NetlinkFormatError,
            match=r"datagram of \d+ bytes is larger than the "
            r"64-byte receive buffer",
        ):
            nl.dump(RTM_GETLINK, link_request())
    finally:
        nl.close()


def test_reply_bound_abandons_the_dump_and_the_next_dump_still_runs():
    nl = NetlinkSocket(NETLINK_GENERIC)
    body = struct.pack("=BBH", 3, 1, 0)  # CTRL_CMD_GETFAMILY dump: one message per family
    try:
        with pytest.raises(NetlinkFormatError, match="reply larger than its bound"):
            nl.dump(GENL_ID_CTRL, body, max_messages=1)
        # Half-read, the kernel's dump would still be running on that socket and a new dump
        # would get EBUSY; the client started over on a fresh socket.
        chunks = nl.dump(GENL_ID_CTRL, body)
        assert sum(1 for c in chunks for _ in netlink.data_messages([c])) > 1
    finally:
        nl.close()


def test_a_request_the_kernel_does_not_answer_times_out():
    nl = NetlinkSocket(NETLINK_ROUTE, timeout=0.05)
    try:
        # a control message type without NLM_F_ACK: rtnetlink accepts it and sends nothing
        with pytest.raises(NetlinkKernelError, match=r"no netlink reply within 0\.05 s") as e:
            nl.request(netlink.NLMSG_NOOP)
    finally:
        nl.close()
    assert e.value.errno == errno.ETIMEDOUT


def test_notification_socket_reads_without_blocking():
    nl = NetlinkSocket(NETLINK_ROUTE, 0x1, timeout=0)  # RTMGRP_LINK
    try:
        assert nl.receive_nowait() is None
    finally:
        nl.close()


# --- a scripted socket: replies the kernel cannot be made to send on demand ------------------------


class Scripted:
    """Answers request number n (1, 2, ...) with script[n - 1](seq): a list of datagrams."""

    def __init__(self, *script):
        self.script = list(script)
        self.pending: list[bytes] = []
        self.sent: list[int] = []

    def send(self, data: bytes) -> int:
        seq = NLMSGHDR.unpack_from(data)[3]
        self.sent.append(seq)
        self.pending += self.script.pop(0)(seq)
        return len(data)

    def recv_into(self, buffer: bytearray, size: int, flags: int = 0) -> int:
        data = self.pending.pop(0)
        buffer[: min(size, len(data))] = data[:size]
        return len(data)

    def close(self) -> None:
        pass


def test_stale_replies_are_skipped_even_inside_a_datagram():
    sock = Scripted(lambda seq: [done(seq - 1), message(RTM_NEWLINK, seq - 1) + message(20, seq) + done(seq)])
    chunks = NetlinkSocket(NETLINK_ROUTE, sock=sock).dump(RTM_GETLINK)
    assert [(k, s) for c in chunks for k, _f, s, _a, _b in netlink.messages(c)] == [(20, 1), (NLMSG_DONE, 1)]


def test_interrupted_dump_runs_again_with_a_fresh_decode():
    def intr(seq):
        return [
            message(RTM_NEWLINK, seq, flags=2 | NLM_F_DUMP_INTR),
            done(seq, flags=2 | NLM_F_DUMP_INTR),
        ]

    clean = lambda seq: [message(RTM_NEWLINK, seq, b"ok", flags=2), done(seq)]  # noqa: E731
    sock = Scripted(intr, intr, clean)
    calls = []

    def decode(chunks):
        calls.append(1)
        return [bytes(b[s + 16 : e]) for b, _k, s, e in netlink.data_messages(chunks)]

    assert NetlinkSocket(NETLINK_ROUTE, sock=sock).dump(RTM_GETLINK, decode=decode) == [b"ok"]
    assert len(calls) == 3 and sock.sent == [1, 2, 3]


def test_dump_interrupted_every_time_is_a_clear_error():
    intr = lambda seq: [done(seq, flags=2 | NLM_F_DUMP_INTR)]  # noqa: E731
    nl = NetlinkSocket(NETLINK_ROUTE, sock=Scripted(intr, intr, intr))
    with pytest.raises(NetlinkDumpInterrupted, match="link dump interrupted 3 times in a row") as e:
        nl.dump(RTM_GETLINK, what="link dump")
    assert e.value.errno == errno.EAGAIN and isinstance(e.value, ParseError)


def test_done_carrying_an_errno_fails_the_dump():
    nl = NetlinkSocket(
        NETLINK_ROUTE,
        sock=Scripted(lambda seq: [message(RTM_NEWLINK, seq, flags=2) + done(seq, errno.EMSGSIZE)]),
    )
    with pytest.raises(NetlinkKernelError, match="dump failed part-way") as e:
        nl.dump(RTM_GETLINK)
    assert e.value.errno == errno.EMSGSIZE


def test_error_reply_raises_permissionerror_for_eperm():
    nl = NetlinkSocket(NETLINK_ROUTE, sock=Scripted(lambda seq: [error(seq, errno.EPERM)]))
    with pytest.raises(PermissionError):
        nl.dump(RTM_GETLINK)


# --- wire format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 17, 18, 19])
def test_error_message_without_its_error_field_is_a_format_error(size):
    buf = NLMSGHDR.pack(size, NLMSG_ERROR, 0, 1, 0) + b"\0" * (size - 16)
    with pytest.raises(NetlinkFormatError, match="has no error field"):
        netlink.error_code(buf, 0)
    with pytest.raises(NetlinkFormatError):
        list(netlink.data_messages([buf]))


@pytest.mark.parametrize("value", [-(1 << 31), 1, -4096])
def test_error_field_outside_the_errno_range_is_a_format_error(value):
    buf = NLMSGHDR.pack(36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", value) + b"\0" * 16
    with pytest.raises(NetlinkFormatError, match="not 0 or -errno"):
        netlink.error_code(buf, 0)


def test_error_code_reads_acks_and_errnos():
    assert netlink.error_code(error(1, 0), 0) == 0
    assert netlink.error_code(error(1, errno.EBUSY), 0) == errno.EBUSY
    assert netlink.done_code(done(1), 0, 20) == 0
    assert netlink.done_code(message(NLMSG_DONE, 1), 0, 16) == 0  # no payload: complete


def test_attribute_spans_match_the_generator_walk():
    payload = (
        netlink.attribute(1, b"abc")
        + netlink.attribute(2 | 0x8000, b"")
        + netlink.attribute(3, struct.pack("=Q", 7))
    )
    spans = netlink.attribute_spans(payload, 0, len(payload))
    assert spans == {k: (s, e) for k, s, e in netlink.attributes(payload)}
    assert spans == {1: (4, 7), 2: (12, 12), 3: (16, 24)}
    with pytest.raises(NetlinkFormatError):
        netlink.attribute_spans(b"\xff\x00\x01\x00abcd", 0, 8)


def test_kernel_error_classes_are_reused():
    first, second = netlink.kernel_error(errno.EPERM), netlink.kernel_error(errno.EPERM)
    assert type(first) is type(second) and isinstance(first, PermissionError)
    assert type(netlink.kernel_error(errno.EMSGSIZE)) is NetlinkKernelError
    assert str(netlink.kernel_error(errno.EPERM, "ctnetlink: ")) == (
        "[Errno 1] ctnetlink: Operation not permitted"
    )


def test_socket_open_failure_is_a_kernel_error():
    with pytest.raises(NetlinkKernelError):
        NetlinkSocket(31)  # MAX_LINKS - 1: no such netlink protocol
    assert socket.AF_NETLINK  # the platform has netlink at all
