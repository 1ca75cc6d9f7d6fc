"""Property-based fuzzing of the netlink decoders: mutations of real messages (captured from the
kernel: overlay fixtures, the conntrack dump, this process's own address and route replies) and of
kernel-shaped messages pyroute2 encodes (IPVS, ctnetlink statistics, an address message). The
contract: a decoder returns, or raises ParseError (NetlinkError is one), and does so fast; any
other exception, or a slow call, fails the test.

The number of examples is bounded so the suite stays fast; under CI=true the examples are
derandomized (the same inputs every run), elsewhere each run tries new ones. A deeper run:
NETSTACK_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/unit/test_netlink_fuzz.py"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import Counter
from datetime import timedelta
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_stats, nfct_stats_cpu
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from collectors import conntrack, ipvs, netlink
from collectors import overlay_rtnl as rtnl
from exporter.contract import ParseError
from tests.helpers import FIXTURES
from tests.unit.test_conntrack import ctnetlink
from tests.unit.test_ipvs import FAMILY, TABLE, done, encode, error

# The deadline and the time bound catch super-linear work, not noise: on a busy 2-core machine a
# call of microseconds is sometimes descheduled for a tenth of a second.
FUZZ = settings(
    max_examples=int(os.environ.get("NETSTACK_FUZZ_EXAMPLES", "150")),
    deadline=timedelta(seconds=2),
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow],
)
TIME_BOUND = 1.0  # seconds per call; the seeds decode in microseconds


def holds_contract(decode, *args) -> None:
    """decode(*args) returns or raises ParseError, within TIME_BOUND."""
    started = time.perf_counter()
    try:
        decode(*args)
    except ParseError:
        pass
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_BOUND, f"{decode.__name__} took {elapsed:.3f} s"


# --- seeds ---------------------------------------------------------------------------------------


def split(buf: bytes) -> list[bytes]:
    return [buf[start:end] for _k, _f, _s, start, end in netlink.messages(buf)]


@cache
def ipvs_seeds() -> tuple[list[bytes], list[bytes]]:
    services = [encode(1, "IPVS_CMD_ATTR_SERVICE", svc, 1) for svc, _ in TABLE]
    dests = [encode(5, "IPVS_CMD_ATTR_DEST", d, 1) for _, ds in TABLE for d in ds]
    return [*services, done(1), error(1, 1)], [*dests, done(1)]


@cache
def route_seeds() -> list[bytes]:
    """RTM_NEWADDR and RTM_NEWROUTE messages: this kernel's, for this process's netns (when it
    has an address and a route to 127.0.0.1), and one address message encoded by pyroute2."""
    address = ifaddrmsg()
    address["family"], address["prefixlen"], address["index"] = socket.AF_INET, 8, 1
    address["attrs"] = [("IFA_ADDRESS", "127.0.0.1"), ("IFA_LOCAL", "127.0.0.1"), ("IFA_LABEL", "lo")]
    address["header"]["type"] = rtnl.RTM_NEWADDR
    address.encode()
    found = [bytes(address.data)]
    nl = netlink.NetlinkSocket(rtnl.NETLINK_ROUTE)
    try:
        chunks = nl.dump(rtnl.RTM_GETADDR, rtnl.IFADDRMSG.pack(0, 0, 0, 0, 0))
        body = rtnl.RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + netlink.attribute(
            rtnl.RTA_DST, socket.inet_aton("127.0.0.1")
        )
        try:
            chunks += nl.request(rtnl.RTM_GETROUTE, body)
        except netlink.NetlinkKernelError:  # no route to 127.0.0.1 (lo down in this netns)
            pass
    finally:
        nl.close()
    return found + [
        m
        for chunk in chunks
        for m in split(chunk)
        if netlink.NLMSGHDR.unpack_from(m)[1] >= netlink.NLMSG_MIN_TYPE
    ]


@cache
def overlay_seeds() -> list[bytes]:
    fixtures = sorted((FIXTURES / "overlay" / "netlink").glob("*.bin"))
    return [path.read_bytes() for path in fixtures] + route_seeds()


@cache
def conntrack_seeds() -> list[bytes]:
    dump = (FIXTURES / "conntrack" / "dump-6.18.bin").read_bytes()
    cpu = ctnetlink(
        nfct_stats_cpu,
        conntrack.CT_GET_STATS_CPU,
        [
            ("CTA_STATS_FOUND", 1),
            ("CTA_STATS_INSERT_FAILED", 3),
            ("CTA_STATS_DROP", 5),
            ("CTA_STATS_CLASH_RESOLVE", 2),
            ("CTA_STATS_CHAIN_TOOLONG", 1),
        ],
        res_id=1,
    )
    count = ctnetlink(
        nfct_stats,
        conntrack.CT_GET_STATS,
        [("CTA_STATS_GLOBAL_ENTRIES", 17), ("CTA_STATS_GLOBAL_MAX_ENTRIES", 65536)],
    )
    return [*split(dump)[:4], dump[-20:], cpu, count]


# --- mutations -------------------------------------------------------------------------------------

# values that hit the length checks: empty, shorter than a header, odd, all ones, INT_MIN
SMALL = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 19, 20, 24, 0x7FFF, 0xFFFF])
WIDE = st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFF001, 4095, 1 << 16])


def _attribute_list(buf: bytes, start: int, end: int) -> list[int] | None:
    """Offsets of the attribute headers in buf[start:end], if it is exactly an attribute list."""
    offsets = []
    while start + 4 <= end:
        length = struct.unpack_from("=H", buf, start)[0]
        if length < 4 or start + length > end:
            return None
        offsets.append(start)
        start += (length + 3) & ~3
    return offsets if offsets and start >= end else None


@cache
def attribute_headers(seed: bytes) -> tuple[int, ...]:
    """Where the attribute headers of a seed are, nested ones included: the places where an
    edit makes a required attribute go missing or change size while the walk still succeeds."""
    found: set[int] = set()

    def descend(start: int, end: int) -> None:
        for offset in _attribute_list(seed, start, end) or ():
            found.add(offset)
            length = struct.unpack_from("=H", seed, offset)[0]
            descend(offset + 4, offset + length)

    for _k, _f, _s, start, end in netlink.messages(seed):
        for fixed in (4, 8, 12, 16):  # genlmsghdr/nfgenmsg, ifaddrmsg, rtmsg/if_stats_msg, ifinfomsg
            if _attribute_list(seed, start + 16 + fixed, end):
                descend(start + 16 + fixed, end)
    return tuple(sorted(found))


@st.composite
def mutated(draw, seeds) -> bytes:
    """A seed message with a few edits: an attribute's type or length, bytes, 16-bit and 32-bit
    values, cuts, insertions, deletions; often with the outer length fixed up so the walk goes
    deeper."""
    seed = draw(st.sampled_from(seeds))
    data = bytearray(seed)
    headers = attribute_headers(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 7))
        if op >= 6 and headers:  # an attribute header: its length (op 6) or its type (op 7)
            at = draw(st.sampled_from(headers)) + (op - 6) * 2
            if at + 2 <= len(data):
                struct.pack_into("=H", data, at, draw(SMALL))
        elif op == 0:
            data[at] = draw(st.integers(0, 255))
        elif op == 1 and at + 2 <= len(data):
            struct.pack_into("=H", data, at, draw(st.integers(0, 0xFFFF)))
        elif op == 2 and at + 4 <= len(data):
            struct.pack_into("=I", data, at, draw(WIDE))
        elif op == 3:
            del data[at : at + draw(st.integers(1, 24))]
        elif op == 4:
            data[at:at] = draw(st.binary(min_size=1, max_size=24))
        else:
            del data[at:]
    if len(data) >= 4 and draw(st.booleans()):
        struct.pack_into("=I", data, 0, len(data))
    return bytes(data)


def inputs(seeds):
    return st.one_of(mutated(seeds), st.binary(max_size=64))


def chunks_of(seeds):
    """One to three datagrams, as a reply arrives."""
    return st.lists(inputs(seeds), min_size=1, max_size=3)


# --- the wire format ---------------------------------------------------------------------------


ALL_SEEDS = st.sampled_from(["ipvs", "overlay", "conntrack"])


def seeds_named(name: str) -> list[bytes]:
    if name == "ipvs":
        services, dests = ipvs_seeds()
        return services + dests
    return overlay_seeds() if name == "overlay" else conntrack_seeds()


@FUZZ
@given(st.data())
def test_message_and_attribute_walks(data):
    buf = data.draw(inputs(seeds_named(data.draw(ALL_SEEDS))))
    holds_contract(lambda b: list(netlink.messages(b)), buf)
    holds_contract(lambda b: list(netlink.attributes(b, 16)), buf)
    holds_contract(netlink.attribute_spans, buf, 20, len(buf))
    holds_contract(lambda b: list(netlink.data_messages([b])), buf)
    holds_contract(netlink.error_code, buf, 0)
    holds_contract(netlink.done_code, buf, 0, len(buf))


# --- IPVS ----------------------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_ipvs_service_decoder(data):
    chunks = data.draw(chunks_of(ipvs_seeds()[0]))
    holds_contract(ipvs.decode_services, chunks, FAMILY)


@cache
def kube_proxy_datagrams() -> list[bytes]:
    """Datagrams of 20 services of one kind: what the traffic decoder reads in one struct call."""
    from tests.unit.test_ipvs import kube_proxy_dump

    return kube_proxy_dump(60, 20, seq=1)[:-1]


@FUZZ
@given(st.data())
def test_ipvs_traffic_decoder_after_it_learnt_the_layout(data):
    """Mutated datagrams of services the decoder knows: its one-call path must check them too."""
    decoder = ipvs.TrafficDecoder()
    seeds = kube_proxy_datagrams()
    decoder.decode([*seeds, netlink_done()], FAMILY)
    chunks = data.draw(st.lists(mutated(seeds), min_size=1, max_size=3))
    holds_contract(decoder.decode, chunks, FAMILY)


def netlink_done() -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)


@FUZZ
@given(st.data(), st.sampled_from(["10.96.0.1", "2001:db8::1"]), st.booleans())
def test_ipvs_destination_decoder(data, address, want_dests):
    chunks = data.draw(chunks_of(ipvs_seeds()[1]))
    svc = ipvs.Service("TCP", address, 443, 0, "rr")
    holds_contract(ipvs.decode_dests, chunks, FAMILY, svc, want_dests)


# --- overlay (rtnetlink) ---------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_rtnetlink_decoders(data):
    message = data.draw(inputs(overlay_seeds()))
    for decode in (rtnl.parse_link, rtnl.parse_stats64, rtnl.parse_route_oif, rtnl.parse_addr):
        holds_contract(decode, message)
    holds_contract(lambda m: list(rtnl.iter_messages(m)), message)


# --- conntrack (ctnetlink) ---------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_ctnetlink_decoders(data):
    chunks = data.draw(chunks_of(conntrack_seeds()))
    holds_contract(conntrack.count_dump, chunks, Counter())
    holds_contract(conntrack.stats_from_netlink, chunks)
    holds_contract(conntrack.count_from_netlink, chunks)
    holds_contract(conntrack.entry_state, chunks[0], 20, len(chunks[0]))


# --- the client's own walk of a reply ------------------------------------------------------------------


class Replaying:
    """A socket that answers a request with the given datagrams (their sequence numbers set to
    the request's, so the client reads them as its reply), then times out."""

    def __init__(self, datagrams: list[bytes]):
        self.datagrams = datagrams
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> int:
        seq = netlink.NLMSGHDR.unpack_from(data)[3]
        for datagram in self.datagrams:
            buf = bytearray(datagram)
            if len(buf) >= 16:
                struct.pack_into("=I", buf, 8, seq)
            self.pending.append(bytes(buf))
        return len(data)

    def recv_into(self, buffer: bytearray, size: int, flags: int = 0) -> int:
        if not self.pending:
            raise TimeoutError("timed out")
        data = self.pending.pop(0)
        buffer[: min(size, len(data))] = data[:size]
        return len(data)

    def close(self) -> None:
        pass


@FUZZ
@given(st.data(), st.booleans())
def test_client_reply_walk(data, as_dump):
    datagrams = data.draw(chunks_of(seeds_named(data.draw(ALL_SEEDS))))
    nl = netlink.NetlinkSocket(rtnl.NETLINK_ROUTE, sock=Replaying(datagrams))
    if as_dump:
        holds_contract(nl.dump, rtnl.RTM_GETLINK)
    else:
        holds_contract(nl.request, rtnl.RTM_GETLINK)
