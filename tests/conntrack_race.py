"""The conntrack insert race, for real: two processes pinned to CPU 0 and 1 send the same TCP
SYN (same tuple, raw sockets) in lockstep, one new tuple after another, through conntrack in the
caller's network namespace. The loser's entry fails to insert (insert_failed) and its packet is
dropped (drop; sendto says EPERM). Run inside a namespace: python3 -m tests.conntrack_race N FIRST_PORT"""

import multiprocessing as mp
import os
import socket
import struct
import sys

SRC, DST = "198.18.0.1", "198.18.0.2"


def csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def syn(sport: int, dport: int = 80) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    ph = socket.inet_aton(SRC) + socket.inet_aton(DST) + struct.pack("!BBH", 0, 6, len(tcp))
    c = csum(ph + tcp)
    return tcp[:16] + struct.pack("!H", c) + tcp[18:]


def worker(cpu: int, me: int, step, ports: list[int], repeat: int) -> None:
    os.sched_setaffinity(0, {cpu})
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    pkts = [syn(p) for p in ports]
    other = 1 - me
    for k, p in enumerate(pkts, 1):
        step[me] = k
        while step[other] < k:  # lockstep: both CPUs send the same new tuple at the same moment
            pass
        for _ in range(repeat):
            try:
                s.sendto(p, (DST, 0))
            except PermissionError:  # netfilter dropped it: the insert race's loser
                pass


if __name__ == "__main__":
    n, first = int(sys.argv[1]), int(sys.argv[2])
    repeat = 1
    ports = list(range(first, first + n))
    step = mp.Array("l", 2, lock=False)
    ps = [mp.Process(target=worker, args=(c, c, step, ports, repeat)) for c in (0, 1)]
    [p.start() for p in ps]
    [p.join() for p in ps]
