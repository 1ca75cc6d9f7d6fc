"""Soak benchmark: does the exporter's RSS keep growing over tens of thousands of scrapes?

Runs netstack-exporter with its default collectors (or only those named) beside node_exporter
with the collectors that read the same sources, scrapes both the same number of times over keep-alive connections, interleaved,
and prints RSS every `--every` scrapes and the growth per 10,000 scrapes after the warm-up.
Target (issue 11): < 0.5 MB per 10,000 scrapes after warm-up.

    .venv/bin/python -m bench.bench_soak [--scrapes 40000] [--warmup 10000] [--collector NAME ...]
"""

from __future__ import annotations

import argparse
import http.client
import tempfile

from bench.common import PROMETHEUS_HEADERS, netstack, node_exporter, scrape, started

# node_exporter's collectors that read what ours read (its full default set costs ~20x more per
# scrape and would make the soak take hours).
NODE_EXPORTER_PEERS = (
    "--collector.disable-defaults",
    "--collector.cpu",
    "--collector.stat",
    "--collector.softnet",
    "--collector.conntrack",
    "--collector.netdev",
    "--collector.netstat",
    "--collector.ipvs",
)


def growth_per_10k(samples: list[tuple[int, int]], warmup: int) -> float:
    """MB of RSS growth per 10,000 scrapes, least-squares over the samples after `warmup`."""
    points = [(n, rss) for n, rss in samples if n >= warmup]
    if len(points) < 2:
        return float("nan")
    mean_n = sum(n for n, _ in points) / len(points)
    mean_r = sum(r for _, r in points) / len(points)
    slope = sum((n - mean_n) * (r - mean_r) for n, r in points) / sum((n - mean_n) ** 2 for n, _ in points)
    return slope * 10_000 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=40_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=2_000)
    parser.add_argument(
        "--collector",
        action="append",
        default=[],
        help="only these netstack collectors (default: the default set)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nse-soak-") as probe_dir:
        ours_args = [f"--collector.fsync.directory={probe_dir}"]
        if args.collector:
            ours_args = [
                "--collector.disable-defaults",
                *(f"--collector.{c}" for c in args.collector),
                *(ours_args if "fsync" in args.collector else []),
            ]
        with (
            started("netstack-exporter", netstack(*ours_args)) as ours,
            started("node_exporter", node_exporter(*NODE_EXPORTER_PEERS)) as theirs,
        ):
            targets = [ours, theirs]
            conns = {t.name: http.client.HTTPConnection("127.0.0.1", t.port, timeout=60) for t in targets}
            samples: dict[str, list[tuple[int, int]]] = {t.name: [] for t in targets}
            print(f"{'scrapes':>8}" + "".join(f"{t.name + ' RSS MB':>24}" for t in targets))
            for n in range(args.scrapes + 1):
                if n % args.every == 0:
                    for t in targets:
                        samples[t.name].append((n, t.rss_bytes()))
                    print(
                        f"{n:>8}" + "".join(f"{samples[t.name][-1][1] / 2**20:>24.2f}" for t in targets),
                        flush=True,
                    )
                for t in targets:
                    scrape(conns[t.name], t.path, PROMETHEUS_HEADERS)
    print(f"\nRSS growth per 10,000 scrapes after {args.warmup} (least squares):")
    for name, points in samples.items():
        print(f"  {name:<20} {growth_per_10k(points, args.warmup):+.3f} MB")


if __name__ == "__main__":
    main()
