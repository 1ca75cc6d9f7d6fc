"""TLS + basic auth cost per scrape: netstack-exporter and node_exporter, each plain and behind the
same --web.config.file (TLS 1.3 with an openssl-made P-256 certificate, a bcrypt cost-10 user made
by htpasswd), in one run, scrapes interleaved.

Two connection patterns: keep-alive (Prometheus reuses its connection: the TLS cost is record
encryption only, bcrypt is cached) and a new connection per scrape (a full handshake each time,
what a scraper without keep-alive, or one behind a connection-closing proxy, pays).

    .venv/bin/python -m bench.bench_tls [--scrapes 300]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import NODE_EXPORTER, PROMETHEUS_HEADERS, ROOT, Target
from tests.helpers import free_port, stop_process
from tests.tls import bcrypt_hash, make_ca, make_cert, write_web_config

NETSTACK_ARGS = ("--collector.disable-defaults", "--collector.cpu", "--collector.softirq")
NODE_ARGS = ("--collector.disable-defaults", "--collector.cpu", "--collector.stat", "--collector.softnet")
PASSWORD = "bench-password"


def make_material(directory: Path) -> tuple[Path, Path]:
    """(web config in the exporter-toolkit format, CA certificate): the tests' openssl and
    htpasswd helpers, so the bench and the tests use one kind of material."""
    ca = make_ca(directory)
    server = make_cert(ca, directory, "server")
    config = write_web_config(directory / "web.yml", pair=server, users={"prometheus": bcrypt_hash(PASSWORD)})
    return config, ca.cert


@dataclass
class Endpoint:
    target: Target
    tls: bool
    ctx: ssl.SSLContext | None
    headers: dict

    def connect(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection("127.0.0.1", self.target.port, context=self.ctx, timeout=60)
        return http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=60)


def get(conn: http.client.HTTPConnection, headers: dict) -> bytes:
    conn.request("GET", "/metrics", headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return body


@contextmanager
def started(name: str, argv: list[str], endpoint_kw: dict):
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = Endpoint(Target(name, proc, port), **endpoint_kw)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(endpoint.connect(), endpoint.headers)
                break
            except (OSError, RuntimeError, http.client.HTTPException):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not answer") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        stop_process(proc, 5)


def run(endpoints: list[Endpoint], scrapes: int, keepalive: bool) -> dict[str, tuple[list[float], float]]:
    conns = {e.target.name: e.connect() for e in endpoints}
    for e in endpoints:  # warm up (and the one bcrypt check that is then cached)
        for _ in range(5):
            get(conns[e.target.name], e.headers)
    latencies: dict[str, list[float]] = {e.target.name: [] for e in endpoints}
    cpu0 = {e.target.name: e.target.cpu_seconds() for e in endpoints}
    for _ in range(scrapes):
        for e in endpoints:
            name = e.target.name
            start = time.perf_counter()
            if not keepalive:
                conns[name].close()
                conns[name] = e.connect()
            get(conns[name], e.headers)
            latencies[name].append(time.perf_counter() - start)
    return {
        e.target.name: (latencies[e.target.name], (e.target.cpu_seconds() - cpu0[e.target.name]) / scrapes)
        for e in endpoints
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp, ExitStack() as stack:
        config, ca_cert = make_material(Path(tmp))
        ctx = ssl.create_default_context(cafile=str(ca_cert))
        auth = {"Authorization": "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()}
        plain = {"tls": False, "ctx": None, "headers": PROMETHEUS_HEADERS}
        secure = {"tls": True, "ctx": ctx, "headers": {**PROMETHEUS_HEADERS, **auth}}
        ours = [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:{port}", *NETSTACK_ARGS]
        theirs = [NODE_EXPORTER, "--web.listen-address=127.0.0.1:{port}", *NODE_ARGS]
        endpoints = [
            stack.enter_context(started("netstack plain", ours, plain)),
            stack.enter_context(started("netstack TLS+auth", [*ours, f"--web.config.file={config}"], secure)),
            stack.enter_context(started("node_exporter plain", theirs, plain)),
            stack.enter_context(
                started("node_exporter TLS+auth", [*theirs, f"--web.config.file={config}"], secure)
            ),
        ]
        for keepalive in (True, False):
            results = run(endpoints, args.scrapes, keepalive)
            title = "keep-alive connection" if keepalive else "new connection (full TLS handshake) per scrape"
            print(f"\n{title}, {args.scrapes} scrapes each, interleaved (OpenMetrics + gzip)")
            print(f"{'target':<26}{'median ms':>10}{'p90 ms':>9}{'CPU ms/scrape':>15}")
            for name, (lat, cpu) in results.items():
                ordered = sorted(lat)
                print(
                    f"{name:<26}{statistics.median(lat) * 1e3:>10.2f}{ordered[int(0.9 * len(ordered))] * 1e3:>9.2f}"
                    f"{cpu * 1e3:>15.2f}"
                )
            for who in ("netstack", "node_exporter"):
                (pl, pc), (tl, tc) = results[f"{who} plain"], results[f"{who} TLS+auth"]
                print(
                    f"{who}: TLS+auth / plain: median latency {statistics.median(tl) / statistics.median(pl):.2f}, "
                    f"CPU/scrape {tc / pc if pc else float('nan'):.2f}; "
                    f"added {(statistics.median(tl) - statistics.median(pl)) * 1e3:.2f} ms, "
                    f"{(tc - pc) * 1e3:.2f} ms CPU"
                )


if __name__ == "__main__":
    main()
