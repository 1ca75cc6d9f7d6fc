"""IPVS at kube-proxy scale on a real kernel: this exporter vs node_exporter in the kernel lab.

Runs inside the lab's guest (Debian's 6.1 kernel under qemu; docs/kernel-lab.md):

    python -m tests.kernellab --command python bench/bench_ipvs_guest.py [--services 5000] [--backends 3] [--scrapes 7]

Builds a services x backends table with `ipvsadm -R` (default 5,000 x 3: 20,000 lines, every
tenth service UDP), starts this exporter with its default IPVS configuration, this exporter
with --collector.ipvs.source=netlink (one netlink round trip per service, the default before
the auto source), and Debian's node_exporter with --collector.ipvs, each with only its IPVS
collector; scrapes the default and node_exporter in turn, then the netlink source alone, and
prints median scrape time, the exporter's own collection time, idle RSS (before any scrape),
peak RSS (VmHWM) and series; then where the default collection's time goes, in-process.
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


def status_bytes(pid: int, field: str = "VmHWM") -> int:
    """VmHWM (peak RSS) or VmRSS of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def collection_seconds(body: bytes) -> float | None:
    """This exporter's own figure for its IPVS collection (the rest of a scrape is encoding and HTTP)."""
    key = b'netstack_scrape_collector_duration_seconds{collector="ipvs"} '
    at = body.find(key)
    return None if at < 0 else float(body[at + len(key) : body.index(b"\n", at)])


@contextmanager
def started(name: str, argv: list[str], timeout: float = 300):
    """argv (with {port}) running until the block ends; ready once /healthz answers (our
    start-up takes tens of seconds under TCG). Not / or /metrics: this exporter's landing page
    collects, and the idle RSS is read before any collection."""
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
                conn.request("GET", "/healthz")  # node_exporter's 404 is an answer too
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
    parser.add_argument("--scrapes", type=int, default=7)
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
        time.sleep(2)
        idle = {t.name: status_bytes(t.proc.pid, "VmRSS") for t in targets}  # before any scrape
        conns = {t.name: http.client.HTTPConnection("127.0.0.1", t.port, timeout=300) for t in targets}
        bodies: dict[str, bytes] = {}
        latencies: dict[str, list[float]] = {t.name: [] for t in targets}
        collections: dict[str, list[float]] = {t.name: [] for t in targets}
        # The default against node_exporter, interleaved so that each sees the same guest; the
        # netlink source alone afterwards: its collections outlast the scrape timeout and go on
        # in the background, which would take CPU from the other two's scrapes.
        for phase in (targets[0::2], targets[1:2]):
            for t in phase:
                bodies[t.name] = scrape(conns[t.name], headers={})  # warm-up
            for _ in range(opts.scrapes):
                for t in phase:
                    begin = time.perf_counter()
                    body = scrape(conns[t.name], headers={})
                    latencies[t.name].append(time.perf_counter() - begin)
                    seconds = collection_seconds(body)
                    if seconds is not None:
                        collections[t.name].append(seconds)
        rss = {t.name: status_bytes(t.proc.pid) for t in targets}

    print(f"\nIPVS scrape in the kernel lab ({os.uname().release}, TCG), median of {opts.scrapes} scrapes")
    print(
        f"{'exporter':<34}{'median s':>10}{'min s':>8}{'max s':>8}{'collect s':>10}"
        f"{'idle MB':>9}{'peak RSS MB':>13}{'peak-idle':>10}{'series':>8}"
    )
    for t in targets:
        lat, own = latencies[t.name], collections[t.name]
        print(
            f"{t.name:<34}{statistics.median(lat):>10.3f}{min(lat):>8.3f}{max(lat):>8.3f}"
            f"{statistics.median(own) if own else float('nan'):>10.3f}{idle[t.name] / 2**20:>9.1f}"
            f"{rss[t.name] / 2**20:>13.1f}{(rss[t.name] - idle[t.name]) / 2**20:>10.1f}"
            f"{series_count(bodies[t.name]):>8}"
        )
    ne = targets[-1].name
    for t in targets[:-1]:
        print(
            f"{t.name} / node_exporter: scrape "
            f"{statistics.median(latencies[t.name]) / statistics.median(latencies[ne]):.3f}, "
            f"peak RSS {rss[t.name] / rss[ne]:.2f}, peak minus idle "
            f"{(rss[t.name] - idle[t.name]) / max(rss[ne] - idle[ne], 1):.2f}"
        )
    print(f"node_exporter: {NODE_EXPORTER}")
    breakdown(opts.scrapes)
    subprocess.run(["ipvsadm", "-C"], check=True)
    return 0


def breakdown(repeats: int) -> None:
    """Where the default collection's time goes, in this process: the kernel's side (reading the
    file, the dump's datagrams) and ours (parse, decode, families, encoding). Medians."""
    from collectors import ipvs
    from exporter.contract import Context, Paths
    from exporter.exposition import encode_text

    collector = ipvs.IpvsCollector(Context(paths=Paths(), options={}))
    collector.probe()
    assert collector.netlink is not None and collector.source == ipvs.NETLINK_AND_PROCFS
    nl = collector.netlink
    path = collector.paths.proc("net", "ip_vs")
    text = ipvs.read_table_text(path)
    collector.collect()  # the caches, as after a first scrape
    table = collector.read_table()
    families = ipvs.build_metrics(table, False, ipvs.DEFAULT_MAX_SERIES, collector.row_template)
    phases = {
        "read /proc/net/ip_vs (kernel + decode)": lambda: ipvs.read_table_text(path),
        "netlink service dump, datagrams only": lambda: nl.genl.dump(
            nl.family, ipvs.IPVS_CMD_GET_SERVICE, ipvs.IPVS_GENL_VERSION, b"", list
        ),
        "netlink dump + TrafficDecoder": lambda: nl.dump_traffic(collector.traffic_decoder),
        "parse_ip_vs (every service as last time)": lambda: ipvs.parse_ip_vs(
            text, path, False, collector.known_lines
        ),
        "parse_ip_vs (no cache: every service new)": lambda: ipvs.parse_ip_vs(text, path, False, {}),
        "read_table (the read overlapping the dump)": collector.read_table,
        "build_metrics": lambda: ipvs.build_metrics(
            table, False, ipvs.DEFAULT_MAX_SERIES, collector.row_template
        ),
        "encode_text (the collector's row template)": lambda: encode_text(families),
    }
    print(f"\nin-process breakdown of the default collection, median of {repeats}:")
    for name, fn in phases.items():
        seconds = []
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - begin)
        print(f"  {name:<44}{statistics.median(seconds):>8.3f} s")


if __name__ == "__main__":
    sys.exit(main())
