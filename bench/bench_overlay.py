"""Scrape cost of the overlay collector against node_exporter's netdev+netclass, same interfaces.

    sudo .venv/bin/python bench/bench_overlay.py [--pairs 5,200] [--scrapes 200] [--runs 50]

For each size, a network namespace (created here, deleted at the end) gets N veth pairs (2N
interfaces) plus two vxlan devices: one bound to a veth (underlay by link attribute), one whose
underlay is found by route. Both exporters run inside the namespace on free 127.0.0.1 ports:

    netstack-exporter --collector.disable-defaults --collector.overlay
    prometheus-node-exporter --collector.disable-defaults --collector.netdev --collector.netclass

and are scraped interleaved (bench/common.measure): median and p90 latency, exporter CPU per scrape,
series, ratio. Then, in-process: one topology refresh (raw link dump, tunnels decoded by pyroute2)
against a pyroute2 IPRoute().get_links() dump that decodes every interface, and one collect()
when nothing changed (the per-scrape path).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import measure, netstack, node_exporter, print_table, started  # noqa: E402

CLONE_NEWNET = 0x40000000


@contextmanager
def namespace_with(pairs: int):
    """A netns with `pairs` veth pairs and two vxlan devices; this process's thread inside it."""
    name = f"ovbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
            batch.write("link set lo up\n")
            for i in range(pairs):
                batch.write(f"link add v{i} type veth peer name p{i}\n")
            batch.write("link set v0 up\naddr add 198.18.0.1/24 dev v0\n")
            batch.write("link add vxdev type vxlan id 10 dstport 4789 dev v0\n")
            batch.write("link add vxroute type vxlan id 11 dstport 4790 remote 198.18.0.2\n")
            batch.flush()
            subprocess.run(["ip", "-n", name, "-batch", batch.name], check=True)
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
            if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                yield name
            finally:
                libc.setns(home.fileno(), CLONE_NEWNET)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started_at = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started_at)
    return statistics.median(times) * 1e3


def in_process(runs: int) -> None:
    from pyroute2 import IPRoute

    from collectors import overlay, overlay_rtnl
    from exporter.contract import Context

    sock = overlay_rtnl.RtnlSocket()
    collector = overlay.OverlayCollector(Context(options={"topology-refresh-interval": 3600.0}))
    try:

        def refresh():
            overlay.build_topology(sock.dump_links(), lambda n: True, sock.route_oif, sock.address_owner)

        def pyroute2_dump():
            with IPRoute() as ipr:
                ipr.get_links()

        links = len(sock.dump_links())
        list(collector.collect())
        refresh_ms = median_ms(refresh, runs)
        pyroute2_ms = median_ms(pyroute2_dump, max(5, runs // 5))
        collect_ms = median_ms(lambda: list(collector.collect()), runs)
        print(
            f"in-process, {links} interfaces: topology refresh {refresh_ms:.2f} ms "
            f"(pyroute2 full dump {pyroute2_ms:.2f} ms, x{pyroute2_ms / refresh_ms:.1f}); "
            f"collect() without changes {collect_ms:.2f} ms; dumps during the run: "
            f"{collector.refreshes}"
        )
    finally:
        collector.close()
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="5,200", help="veth pairs per run, comma-separated")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=50, help="repetitions of in-process timings")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for pairs in (int(p) for p in args.pairs.split(",")):
        with namespace_with(pairs) as ns:
            with (
                started(
                    "netstack overlay",
                    netstack("--collector.disable-defaults", "--collector.overlay"),
                    netns=ns,
                ) as ours,
                started(
                    "node_exporter netdev+netclass",
                    node_exporter(
                        "--collector.disable-defaults", "--collector.netdev", "--collector.netclass"
                    ),
                    netns=ns,
                ) as theirs,
            ):
                results = measure([ours, theirs], args.scrapes)
            print_table(
                f"{pairs} veth pairs ({2 * pairs} veth + 2 vxlan + lo), {args.scrapes} scrapes each", results
            )
            in_process(args.runs)


if __name__ == "__main__":
    main()
