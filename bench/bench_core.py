"""Core benchmark: cpu + softirq collectors against node_exporter's cpu, stat and softnet
collectors on this host, in one run.

    .venv/bin/python -m bench.bench_core [--scrapes 300]
"""

import argparse

from bench.common import measure, netstack, node_exporter, print_table, started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    with (
        started(
            "netstack-exporter",
            netstack("--collector.disable-defaults", "--collector.cpu", "--collector.softirq"),
        ) as ours,
        started(
            "node_exporter",
            node_exporter(
                "--collector.disable-defaults", "--collector.cpu", "--collector.stat", "--collector.softnet"
            ),
        ) as theirs,
    ):
        results = measure([ours, theirs], args.scrapes)
    print_table(
        f"cpu/softirq vs node_exporter cpu/stat/softnet, {args.scrapes} sequential scrapes each "
        "(Prometheus headers: OpenMetrics + gzip)",
        results,
    )


if __name__ == "__main__":
    main()
