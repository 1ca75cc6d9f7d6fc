"""Encoding cost: our encoders against prometheus_client's on the same families.

.venv/bin/python -m bench.bench_encode [--series 15000]
"""

import argparse
import statistics
import time

from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.exposition import encode_openmetrics, encode_text


class _Source:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def families(series: int):
    counter = CounterMetricFamily("bench_packets", "Packets.", labels=["protocol", "address", "port"])
    gauge = GaugeMetricFamily("bench_backends", "Backends.", labels=["protocol", "address", "port"])
    for i in range(series // 2):
        labels = ["TCP", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", str(1024 + i % 50000)]
        counter.add_metric(labels, i * 1000003)
        gauge.add_metric(labels, i % 4)
    return [counter, gauge]


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=15000)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    fams = families(args.series)
    rows = [
        ("text, ours", lambda: encode_text(fams)),
        ("text, prometheus_client", lambda: exposition.generate_latest(_Source(fams))),
        ("OpenMetrics, ours", lambda: encode_openmetrics(fams)),
        ("OpenMetrics, prometheus_client", lambda: openmetrics.generate_latest(_Source(fams))),
    ]
    print(f"encoding {args.series} series, median of {args.repeat}")
    results = {name: median_ms(fn, args.repeat) for name, fn in rows}
    for name, ms in results.items():
        print(f"{name:<34}{ms:>9.2f} ms")
    print(
        f"ratio ours/prometheus_client: text {results['text, ours'] / results['text, prometheus_client']:.2f}, "
        f"OpenMetrics {results['OpenMetrics, ours'] / results['OpenMetrics, prometheus_client']:.2f}"
    )


if __name__ == "__main__":
    main()
