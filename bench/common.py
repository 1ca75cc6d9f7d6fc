"""Shared benchmark plumbing: start exporters, scrape them like Prometheus does, print tables.

Numbers are medians and ratios: these machines are noisy; never compare single runs.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
USER_HZ = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    proc: subprocess.Popen
    port: int
    path: str = "/metrics"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / USER_HZ

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def wait_http(port: int, path: str = "/metrics", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port}")


@contextmanager
def started(name: str, argv: list[str], netns: str | None = None, ready_path: str = "/metrics"):
    """Run argv (which must include the port placeholder {port}) until the block ends."""
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port, ready_path)
        yield Target(name, proc, port)
    finally:
        stop_process(proc, 5)


def netstack(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:{port}", *args]


def node_exporter(*args: str) -> list[str]:
    return [NODE_EXPORTER, "--web.listen-address=127.0.0.1:{port}", *args]


def scrape(conn: http.client.HTTPConnection, path: str = "/metrics", headers=PROMETHEUS_HEADERS) -> bytes:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"scrape failed: HTTP {response.status}")
    return gzip.decompress(body) if response.getheader("Content-Encoding") == "gzip" else body


def series_count(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


@dataclass
class Result:
    name: str
    latencies: list[float]
    cpu_per_scrape: float
    rss: int
    series: int
    body_bytes: int

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(targets: list[Target], scrapes: int, warmup: int = 5) -> list[Result]:
    """Scrape every target `scrapes` times, interleaved so both see the same machine noise."""
    conns = {t.name: http.client.HTTPConnection("127.0.0.1", t.port, timeout=120) for t in targets}
    for t in targets:
        for _ in range(warmup):
            scrape(conns[t.name], t.path)
    latencies = {t.name: [] for t in targets}
    cpu_start = {t.name: t.cpu_seconds() for t in targets}
    for _ in range(scrapes):
        for t in targets:
            start = time.perf_counter()
            scrape(conns[t.name], t.path)
            latencies[t.name].append(time.perf_counter() - start)
    results = []
    for t in targets:
        cpu = (t.cpu_seconds() - cpu_start[t.name]) / scrapes
        plain = scrape(conns[t.name], t.path, headers={})
        results.append(Result(t.name, latencies[t.name], cpu, t.rss_bytes(), series_count(plain), len(plain)))
    return results


def print_table(title: str, results: list[Result]) -> None:
    print(f"\n{title}")
    print(
        f"{'exporter':<28}{'median ms':>10}{'p90 ms':>9}{'CPU ms/scrape':>15}{'RSS MB':>8}{'series':>8}{'bytes':>10}"
    )
    for r in results:
        print(
            f"{r.name:<28}{statistics.median(r.latencies) * 1e3:>10.2f}{r.p(0.9) * 1e3:>9.2f}"
            f"{r.cpu_per_scrape * 1e3:>15.2f}{r.rss / 2**20:>8.1f}{r.series:>8}{r.body_bytes:>10}"
        )
    if len(results) == 2:
        a, b = results
        print(
            f"ratio {a.name} / {b.name}: median latency "
            f"{statistics.median(a.latencies) / statistics.median(b.latencies):.2f}, "
            f"CPU/scrape {a.cpu_per_scrape / b.cpu_per_scrape if b.cpu_per_scrape else float('nan'):.2f}, "
            f"RSS {a.rss / b.rss:.2f}"
        )
