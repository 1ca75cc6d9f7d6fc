"""Cost of one conntrack collection by each source, and of --collector.conntrack.by-state.

    sudo .venv/bin/python bench/bench_conntrack.py [--entries 250000] [--runs 50] [--dump-runs 5]

Runs in a network namespace it creates (and deletes): the namespace's table is filled with
--entries unreplied UDP entries through ctnetlink, then each measurement is repeated and the
median printed. Statistics reads do not depend on the table size; the by-state dump does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def receive_dump_only() -> int:
    """The same dump request as dump_states(), received but not parsed."""
    import socket
    import struct

    from collectors.conntrack import (
        CT_GET,
        NETLINK_NETFILTER,
        NLM_F_DUMP,
        NLM_F_REQUEST,
        NLMSG_DONE,
    )

    received = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as nl:
        nl.bind((0, 0))
        nl.send(struct.pack("=IHHIIBBH", 20, CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, 0, 0, 0, 0))
        while True:
            data = nl.recv(1 << 17)
            received += len(data)
            # NLMSG_DONE comes alone in the last datagram
            if struct.unpack_from("=H", data, 4)[0] == NLMSG_DONE:
                return received


def measure(args) -> None:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

    from collectors.conntrack import COLLECTOR, dump_states, read_netlink
    from exporter.contract import Context, Paths
    from tests.integration.test_conntrack_tools import fill

    started = time.monotonic()
    refused = fill(args.entries, assured=False)
    print(f"filled {args.entries - refused} entries in {time.monotonic() - started:.1f} s")

    c = COLLECTOR(Context(paths=Paths(), options={"per-cpu": False, "by-state": False}))
    netlink = median_ms(lambda: list(c.families(read_netlink())), args.runs)
    procfs = median_ms(lambda: list(c.families(c.read_procfs())), args.runs)
    print(f"collection via netlink: median {netlink:.3f} ms over {args.runs} runs")
    print(
        f"collection via procfs:  median {procfs:.3f} ms over {args.runs} runs "
        f"(netlink/procfs = {netlink / procfs:.2f})"
    )

    def fresh_socket():
        with NFCTSocket() as s:
            s.stat(), s.count()

    kept = NFCTSocket()
    fresh = median_ms(fresh_socket, args.runs)
    reused = median_ms(lambda: (kept.stat(), kept.count()), args.runs)
    kept.close()
    print(f"ctnetlink stats, fresh socket per collection: {fresh:.3f} ms; kept open: {reused:.3f} ms")

    totals: list[int] = []
    dump = median_ms(lambda: totals.append(sum(dump_states().values())), args.dump_runs)
    print(
        f"by-state dump of {min(totals)}..{max(totals)} entries: "
        f"median {dump:.0f} ms over {args.dump_runs} runs (raw socket, minimal parser)"
    )
    raw = median_ms(receive_dump_only, args.dump_runs)
    print(
        f"  of which the kernel's dump and recv() alone: median {raw:.0f} ms "
        f"({raw / dump:.0%}); the rest is parsing in Python"
    )

    def pyroute2_dump():
        with NFCTSocket() as s:
            return sum(1 for _ in s.dump())

    started = time.perf_counter()
    n = pyroute2_dump()
    print(
        f"same dump decoded by pyroute2 NFCTSocket.dump(): {n} entries in "
        f"{(time.perf_counter() - started) * 1e3:.0f} ms (1 run)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=250_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dump-runs", type=int, default=5)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        measure(args)
        return
    if os.geteuid() != 0:
        sys.exit("bench_conntrack: needs root (creates a network namespace)")
    name = f"nsebench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                name,
                sys.executable,
                __file__,
                "--inside",
                f"--entries={args.entries}",
                f"--runs={args.runs}",
                f"--dump-runs={args.dump_runs}",
            ],
            check=True,
            cwd=ROOT,
            timeout=600,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
