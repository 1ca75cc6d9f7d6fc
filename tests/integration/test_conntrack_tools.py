"""Kernel-side tools for the conntrack tests and benchmark, plus a test of the tools themselves.

Run inside a test network namespace as a script (`ip netns exec NS python -m
tests.integration.test_conntrack_tools <command> ...`), because the netlink socket and the raw
sockets act on the namespace of the process that opens them:

    fill N [--assured]               create N UDP entries through ctnetlink, in bulk
    udp N --base-port P              send N UDP datagrams, each a new tuple (198.18.0.1 -> .0.2)
                                     (setup_namespace() must have run)
    synrace ROUNDS --base-port P     two processes pinned to CPU 0 and 1 send identical TCP SYNs

Filling 262144 entries with `conntrack -I` forks once per entry (minutes); packing many
IPCTNL_MSG_CT_NEW messages into one netlink datagram takes about a second. Formats:
include/uapi/linux/netfilter/nfnetlink_conntrack.h and nfnetlink.h.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import struct
import sys
import time

from tests.helpers import Netns, need_tool

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
NLM_F_REQUEST, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x200, 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMEOUT = 1, 2, 3, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3

NS_ADDR = "198.18.0.1"  # the namespace's own address (on ct0)
PEER_ADDR = "198.18.0.2"  # nothing answers: ct0's veth peer is down
FILL_TIMEOUT = 1800  # seconds: entries must outlive the test, not expire halfway


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _tuple(kind: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ip = _attr(CTA_TUPLE_IP | NLA_F_NESTED, _attr(CTA_IP_V4_SRC, src) + _attr(CTA_IP_V4_DST, dst))
    proto = _attr(
        CTA_TUPLE_PROTO | NLA_F_NESTED,
        _attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP]))
        + _attr(CTA_PROTO_SRC_PORT, struct.pack(">H", sport))
        + _attr(CTA_PROTO_DST_PORT, struct.pack(">H", dport)),
    )
    return _attr(kind | NLA_F_NESTED, ip + proto)


def ct_new_message(seq: int, src: str, dst: str, sport: int, dport: int, assured: bool) -> bytes:
    """One IPCTNL_MSG_CT_NEW for a UDP entry src:sport -> dst:dport (reply tuple mirrored)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)  # nfgenmsg
    body += _tuple(CTA_TUPLE_ORIG, s, d, sport, dport)
    body += _tuple(CTA_TUPLE_REPLY, d, s, dport, sport)
    body += _attr(CTA_TIMEOUT, struct.pack(">I", FILL_TIMEOUT))
    if assured:
        body += _attr(CTA_STATUS, struct.pack(">I", IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED))
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    header = struct.pack(
        "=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW, flags, seq, 0
    )
    return header + body


def fill_tuple(i: int) -> tuple[str, str, int, int]:
    """The i-th filler tuple: 50000 source ports per destination address, all distinct."""
    dst = socket.inet_ntoa(struct.pack(">I", (198 << 24 | 19 << 16) + i // 50000))
    return NS_ADDR, dst, 1024 + i % 50000, 7


def fill(count: int, assured: bool, batch: int = 1000) -> int:
    """Create `count` entries in this process's namespace; returns how many the kernel refused."""
    errors = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as nl:
        nl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        nl.bind((0, 0))
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            # Without NLM_F_ACK the kernel answers only failures; sendmsg returns after the
            # kernel processed every message of the datagram.
            batch_bytes = (ct_new_message(i, *fill_tuple(i), assured) for i in range(start, stop))
            nl.send(b"".join(batch_bytes))
            errors += _drain_errors(nl)
    return errors


def _drain_errors(nl: socket.socket) -> int:
    errors = 0
    while True:
        try:
            data = nl.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return errors
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == NLMSG_ERROR and struct.unpack_from("=i", data, offset + 16)[0] != 0:
                errors += 1
            offset += (length + 3) & ~3


def send_udp(count: int, base_port: int) -> int:
    """One datagram per new tuple; returns how many sendto() calls the kernel refused (conntrack
    drops at LOCAL_OUT surface as EPERM)."""
    refused = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((NS_ADDR, 0))
        for port in range(base_port, base_port + count):
            try:
                s.sendto(b"x", (PEER_ADDR, port))
            except OSError:
                refused += 1
    return refused


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_packet(sport: int, dport: int) -> bytes:
    """IPv4 + TCP SYN from NS_ADDR:sport to PEER_ADDR:dport (the kernel fills the IP checksum)."""
    src, dst = socket.inet_aton(NS_ADDR), socket.inet_aton(PEER_ADDR)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, socket.IPPROTO_TCP, 0, src, dst)
    return ip + tcp


def _syn_sender(cpu: int, rounds: int, base_port: int, barrier) -> None:
    os.sched_setaffinity(0, {cpu})
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    packets = [syn_packet(base_port + r, 80) for r in range(rounds)]
    for packet in packets:
        barrier.wait(5)  # both senders release the same tuple at the same moment
        try:
            s.sendto(packet, (PEER_ADDR, 0))
        except OSError:
            pass  # the loser of the race is dropped: EPERM
    s.close()


def syn_race(rounds: int, base_port: int) -> None:
    """Two senders pinned to CPU 0 and CPU 1 (as `taskset -c` would) race one TCP SYN per round
    with identical tuples; the loser's unconfirmed entry fails to insert (TCP allows no clash)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_syn_sender, args=(cpu, rounds, base_port, barrier)) for cpu in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join()


# --- namespace setup and kernel-side readings used by the tests -----------------------------


def setup_namespace(ns: Netns) -> None:
    """ct0 with NS_ADDR and a permanent neighbour for PEER_ADDR, so datagrams leave without ARP;
    its veth peer stays down and swallows them. Then the nftables rule set (track)."""
    ns.ip("link", "add", "ct0", "type", "veth", "peer", "name", "ct1")
    ns.ip("addr", "add", f"{NS_ADDR}/15", "dev", "ct0")
    ns.ip("link", "set", "ct0", "up")
    ns.ip("neigh", "add", PEER_ADDR, "lladdr", "02:00:00:00:00:02", "dev", "ct0", "nud", "permanent")
    track(ns)


def track(ns: Netns, widen_rules: int = 0) -> None:
    """An nftables `ct state new` rule: conntrack hooks are registered in a namespace only when a
    rule needs them. Loopback is not tracked, so the exporter's own HTTP connections do not
    change the counts under test (nor get dropped when the table is full).

    widen_rules adds no-op rules between conntrack (priority -200) and the confirmation (last in
    POSTROUTING): a wider window makes the insert race likely in every round."""
    rules = "\n".join("        meta mark 0x5eed counter" for _ in range(widen_rules))
    ns.exec(
        "nft",
        "-f",
        "-",
        input=f"""flush ruleset
table inet nsetest {{
    chain notrack_loopback {{
        type filter hook output priority -300;
        oifname "lo" notrack
    }}
    chain output {{
        type filter hook output priority 0;
        ct state new counter
{rules}
    }}
}}
""",
    )


def run_tool(ns: Netns, *args: str, timeout: float = 120) -> str:
    from tests.helpers import ROOT

    return ns.exec(
        sys.executable,
        "-m",
        "tests.integration.test_conntrack_tools",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=timeout,
    ).stdout


def kernel_count(ns: Netns) -> int:
    """`conntrack -C`: the kernel's entry count for the namespace."""
    return int(ns.exec("conntrack", "-C").stdout.strip())


def kernel_stats(ns: Netns) -> dict[str, int]:
    """`conntrack -S` summed over CPUs: {'insert_failed': n, 'drop': n, ...}."""
    totals: dict[str, int] = {}
    for line in ns.exec("conntrack", "-S").stdout.splitlines():
        for field in line.split()[1:]:
            key, _, number = field.partition("=")
            if number.isdigit():
                totals[key] = totals.get(key, 0) + int(number)
    return totals


def test_fill_creates_exactly_the_entries_asked_for():
    need_tool("conntrack", "conntrack")
    with Netns("nsect") as ns:
        setup_namespace(ns)
        out = run_tool(ns, "fill", "3000", "--assured")
        assert out.strip() == "refused=0"
        assert kernel_count(ns) == 3000
        listing = ns.exec("conntrack", "-L", "-p", "udp", "--src", NS_ADDR, "--sport", "1024").stdout
        assert "ASSURED" in listing and "dport=7" in listing


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="test_conntrack_tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fill")
    p.add_argument("count", type=int)
    p.add_argument("--assured", action="store_true")
    p = sub.add_parser("udp")
    p.add_argument("count", type=int)
    p.add_argument("--base-port", type=int, required=True)
    p = sub.add_parser("synrace")
    p.add_argument("rounds", type=int)
    p.add_argument("--base-port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "fill":
        started = time.monotonic()
        refused = fill(args.count, args.assured)
        print(f"refused={refused}")
        print(f"seconds={time.monotonic() - started:.2f}", file=sys.stderr)
    elif args.command == "udp":
        print(f"refused={send_udp(args.count, args.base_port)}")
    else:
        syn_race(args.rounds, args.base_port)


if __name__ == "__main__":
    main(sys.argv[1:])
