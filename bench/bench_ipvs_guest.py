"""IPVS at kube-proxy scale on a real kernel: this exporter vs node_exporter in the kernel lab.

Runs inside the lab's guest (Debian's 6.1 kernel under qemu; docs/kernel-lab.md):

    python -m tests.kernellab --command python bench/bench_ipvs_guest.py [--services 5000]

Builds a services x backends table with `ipvsadm -R` (default 5,000 x 3: 20,000 lines, every
tenth service UDP), starts this exporter with its default IPVS configuration, this exporter
with --collector.ipvs.source=netlink (one netlink round trip per service, the default before
the auto source), and Debian's node_exporter with --collector.ipvs, each with only its IPVS
collector; scrapes them in turn and prints median scrape time, peak RSS (VmHWM) and series.
Under TCG every process runs ~20x slower than on the host: compare only within one run.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import NODE_EXPORTER, Target, node_exporter, scrape, series_count  # noqa: E402
from tests.helpers import free_port, stop_process  # noqa: E402

IPVS_ONLY = ("--collector.disable-defaults", "--collector.ipvs")


def rules(services: int, backends: int) -> str:
    """ipvsadm -R input: services on 198.18.0.0/16, backends on 198.19.0.0/16 (masq)."""
    lines = []
    for i in range(services):
        flag = "-u" if i % 10 == 9 else "-t"
        vip = f"198.18.{i // 250}.{i % 250 + 1}:80"
        lines.append(f"-A {flag} {vip} -s rr")
        for j in range(backends):
            n = i * backends + j
            lines.append(f"-a {flag} {vip} -r 198.19.{n // 250}.{n % 250 + 1}:8080 -m -w 1")
    return "\n".join(lines) + "\n"


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def started(name: str, argv: list[str], timeout: float = 300):
    """argv (with {port}) running until the block ends; ready once /metrics answers (our
    start-up takes tens of seconds under TCG)."""
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: nothing answered on port {port}") from None
                time.sleep(0.5)
        yield Target(name, proc, port)
    finally:
        stop_process(proc, 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=5)
    opts = parser.parse_args()
    if not os.uname().release.startswith("6.1.") or os.environ.get("KERNELLAB_GUEST") != "1":
        print(
            "run inside the kernel lab: python -m tests.kernellab --command python bench/bench_ipvs_guest.py",
            file=sys.stderr,
        )
        return 2

    subprocess.run(["modprobe", "ip_vs"], check=True)
    subprocess.run(["ipvsadm", "-C"], check=True)
    text = rules(opts.services, opts.backends)
    start = time.perf_counter()
    subprocess.run(["ipvsadm", "-R"], input=text, text=True, check=True)
    print(
        f"table: {opts.services} services x {opts.backends} backends "
        f"({text.count(chr(10))} ipvsadm -R lines, {time.perf_counter() - start:.1f} s)"
    )

    ours = [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:{port}", *IPVS_ONLY]
    with ExitStack() as stack:
        targets = [
            stack.enter_context(started("netstack (default: auto)", ours)),
            stack.enter_context(
                started("netstack source=netlink", [*ours, "--collector.ipvs.source=netlink"])
            ),
            stack.enter_context(started("node_exporter --collector.ipvs", node_exporter(*IPVS_ONLY))),
        ]
        conns = {t.name: http.client.HTTPConnection("127.0.0.1", t.port, timeout=300) for t in targets}
        bodies = {t.name: scrape(conns[t.name], headers={}) for t in targets}  # warm-up
        latencies: dict[str, list[float]] = {t.name: [] for t in targets}
        for _ in range(opts.scrapes):  # interleaved: each sees the same guest
            for t in targets:
                begin = time.perf_counter()
                scrape(conns[t.name], headers={})
                latencies[t.name].append(time.perf_counter() - begin)
        rss = {t.name: peak_rss(t.proc.pid) for t in targets}

    print(f"\nIPVS scrape in the kernel lab ({os.uname().release}, TCG), median of {opts.scrapes} scrapes")
    print(f"{'exporter':<34}{'median s':>10}{'min s':>8}{'max s':>8}{'peak RSS MB':>13}{'series':>8}")
    for t in targets:
        lat = latencies[t.name]
        print(
            f"{t.name:<34}{statistics.median(lat):>10.3f}{min(lat):>8.3f}{max(lat):>8.3f}"
            f"{rss[t.name] / 2**20:>13.1f}{series_count(bodies[t.name]):>8}"
        )
    ne = targets[-1].name
    for t in targets[:-1]:
        print(
            f"{t.name} / node_exporter: scrape "
            f"{statistics.median(latencies[t.name]) / statistics.median(latencies[ne]):.3f}, "
            f"peak RSS {rss[t.name] / rss[ne]:.2f}"
        )
    print(f"node_exporter: {NODE_EXPORTER}")
    subprocess.run(["ipvsadm", "-C"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
