"""bgp collector against real BIRD with a large mesh: N BGP protocols named like Calico's
(Mesh_198_18_x_y), in a network namespace without routes (every session fails at once with
"Network unreachable", no packet leaves; retries are slowed down so that BIRD is idle, as a
healthy daemon is), BIRD 1.6 and BIRD 2. Beside it the peer tool that
reads the same socket: birdc (calicoctl node status does the same conversation).

    sudo .venv/bin/python -m bench.bench_bgp [--peers 1000] [--rounds 15]

Prints medians of wall and CPU time (this process and birdc; BIRD's own time is in neither):
the collector's collect() (per-peer: `show protocols all`; counts: `show
protocols`), and `birdc show protocols all` / `birdc show protocols` as a subprocess, with the
reply's size.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import time

from collectors.bgp import BgpCollector
from exporter.contract import Context
from tests.bird import Bird, birdc_binary, config
from tests.helpers import Netns


def mesh(n: int) -> dict[str, tuple[str, str]]:
    peers = {}
    for i in range(n):
        address = f"198.18.{2 + i // 250}.{1 + i % 250}"
        peers["Mesh_" + address.replace(".", "_")] = (address, "198.18.0.1")
    return peers


def medians(fns: dict[str, object], rounds: int) -> dict[str, tuple[float, float]]:
    """{name: (wall ms, CPU ms)} medians, the functions run alternately so that each sees the same
    phases of BIRD's own work (its periodic scans delay any client). CPU is this process's plus
    its children's (birdc), not BIRD's."""
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            cpu = _cpu()
            start = time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(_cpu() - cpu)
    return {
        name: (statistics.median(walls[name]) * 1000, statistics.median(cpus[name]) * 1000) for name in fns
    }


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(version: int, peers: int, rounds: int, workdir) -> list[tuple[str, float, float, int]]:
    with Netns("nse-bgp-bench") as ns:
        d = workdir / f"bird{version}"
        d.mkdir()
        conf = (
            config(version, "198.18.0.1", mesh(peers))
            .replace("connect retry time 1;", "connect retry time 600;")
            .replace("error wait time 1,5;", "error wait time 600,900;")
        )
        bird = Bird(ns, version, conf, d).start(timeout=60)
        try:
            time.sleep(5)  # every protocol in its steady (failed, waiting) state
            rows = []
            for mode, command in (("per-peer", "show protocols all"), ("counts", "show protocols")):
                c = BgpCollector(
                    Context(
                        options={
                            "socket": [bird.socket_path],
                            "peer-series": mode,
                            "max-peers": 1_000_000,
                            "timeout": 30.0,
                        }
                    )
                )
                c.probe()
                got = sum(len(f.samples) for f in c.collect())
                birdc = [birdc_binary(version), "-s", bird.socket_path, *command.split()]
                size = len(subprocess.run(birdc, capture_output=True, check=True).stdout)
                ours, theirs = f"netstack bgp collect ({mode})", f"birdc {command}"
                result = medians(
                    {
                        ours: c.collect,
                        theirs: lambda cmd=birdc: subprocess.run(cmd, capture_output=True, check=True),
                    },
                    rounds,
                )
                rows += [(ours, *result[ours], got), (theirs, *result[theirs], size)]
            return rows
        finally:
            bird.stop()


def main() -> None:
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nse-bgp-bench-") as tmp:
        for version in (1, 2):
            print(f"BIRD {'1.6' if version == 1 else '2'}, {opts.peers} BGP peers, median of {opts.rounds}:")
            print(f"  {'what':36} {'wall ms':>8} {'CPU ms':>8}  series / reply bytes")
            for what, wall, cpu, n in run(version, opts.peers, opts.rounds, Path(tmp)):
                print(f"  {what:36} {wall:8.1f} {cpu:8.1f}  {n}")


if __name__ == "__main__":
    main()
