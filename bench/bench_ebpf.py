"""eBPF collectors on both backends side by side, in one run: load+attach time, exporter RSS
with and without them, each program's in-kernel run time (kernel.bpf_stats_enabled), what the
programs cost the packet path under a bounded loopback UDP flood, and exact counting (datagrams
to a closed port -> NO_SOCKET drops).

    sudo .venv/bin/python -m bench.bench_ebpf [--trials 5] [--packets 50000] [--scrapes 100]
                                              [--backends libbpf,bcc] [--sample-every 1,4,16]

Needs root; libbpf1 and the CO-RE objects (built by the package build) for libbpf; bcc
(python3-bpfcc linked into the venv) and headers for bcc (scripts/kernel-headers.sh is run into
a temporary directory when BCC_KERNEL_SOURCE is not set). A backend that cannot run is reported
and left out. Mounts tracefs if it is not mounted and unmounts it afterwards. The floods run in
network namespaces of their own. --sample-every lists ebpf_softirq's sample-every values to
compare (each one's floods and in-kernel run time, in the same interleaved rounds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.common import ROOT, Target, measure, netstack, print_table, scrape, started
from collectors.ebpf_drops import EbpfDrops
from collectors.ebpf_softirq import EbpfSoftirq
from exporter.contract import Context, SourceUnavailable

COLLECTORS = {
    "ebpf_softirq": lambda backend, every=1: EbpfSoftirq(
        Context(options={"backend": backend, "sample-every": every})
    ),
    "ebpf_drops": lambda backend, every=1: EbpfDrops(Context(options={"backend": backend})),
}
BACKENDS = ("libbpf", "bcc")

# One process, one namespace's lo: `open` = send + receive (NET_RX softirq per datagram),
# `closed` = send to a port nobody listens on (softirq + kfree_skb NO_SOCKET per datagram).
FLOOD = """
import resource, socket, sys, time
n, mode = int(sys.argv[1]), sys.argv[2]
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.bind(("127.0.0.1", 0))
dest = r.getsockname() if mode == "open" else ("127.0.0.1", 9)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
for _ in range(n):
    s.sendto(b"x", dest)
    if mode == "open":
        r.recv(16)
t1, ru1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
print(t1 - t0, cpu)
"""


@contextmanager
def prerequisites():
    if os.geteuid() != 0:
        sys.exit("bench_ebpf: needs root")
    with ExitStack() as stack:
        if not any(
            os.path.isdir(f"{p}/events") for p in ("/sys/kernel/debug/tracing", "/sys/kernel/tracing")
        ):
            subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
            stack.callback(subprocess.run, ["umount", "/sys/kernel/tracing"], check=False)
        if not os.environ.get("BCC_KERNEL_SOURCE"):
            tmp = tempfile.mkdtemp(prefix="bench-ebpf-headers-")
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            result = subprocess.run(
                ["sh", str(ROOT / "scripts" / "kernel-headers.sh"), tmp], capture_output=True, text=True
            )
            if result.returncode == 0:
                os.environ["BCC_KERNEL_SOURCE"] = result.stdout.strip()
                stack.callback(os.environ.pop, "BCC_KERNEL_SOURCE", None)
        yield


def usable_backends(wanted: list[str]) -> list[str]:
    """The backends that can run here; the others are reported with their reason."""
    usable = []
    for backend in wanted:
        try:
            for make in COLLECTORS.values():
                make(backend).probe()
        except SourceUnavailable as e:
            print(f"backend {backend}: unavailable ({e}); left out")
            continue
        usable.append(backend)
    return usable


@contextmanager
def loaded(names: list[str], backend: str, every: int = 1):
    """The named collectors probed, loaded and attached in this process until the block ends
    (ebpf_softirq with sample-every=every)."""
    collectors = [COLLECTORS[n](backend, every) for n in names]
    try:
        for c in collectors:
            c.probe()
            c.start()
            if not c.load.wait(60):
                raise RuntimeError(f"{c.name}: load+attach did not finish in 60 s")
            c.load.program()  # raises the reason if it failed
        yield collectors
    finally:
        for c in collectors:
            c.close()


def bench_load(backends: list[str], trials: int) -> None:
    print(f"\nload + attach (bcc: + compile), {trials} trials each, in-process")
    print(f"{'collector':<16}{'backend':<9}{'median ms':>10}{'min ms':>8}{'max ms':>8}")
    for name in COLLECTORS:
        for backend in backends:
            seconds = []
            for _ in range(trials):
                with loaded([name], backend) as [c]:
                    seconds.append(c.load.seconds)
            print(
                f"{name:<16}{backend:<9}{statistics.median(seconds) * 1e3:>10.1f}"
                f"{min(seconds) * 1e3:>8.1f}{max(seconds) * 1e3:>8.1f}"
            )


def wait_loaded(target: Target, collectors: list[str], timeout: float = 60) -> None:
    """Scrape until every eBPF collector reports success (loaded and attached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        body = scrape(conn, target.path, headers={}).decode()
        conn.close()
        if all(f'netstack_scrape_collector_success{{collector="{c}"}} 1' in body for c in collectors):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{target.name}: eBPF collectors not loaded after {timeout} s")


def bench_rss(backends: list[str], scrapes: int) -> None:
    base = ["--collector.disable-defaults", "--collector.cpu", "--collector.softirq"]
    ebpf = ["ebpf_softirq", "ebpf_drops"]
    with ExitStack() as stack:
        targets = [stack.enter_context(started("cpu+softirq", netstack(*base)))]
        for backend in backends:
            args = [
                *base,
                *(f"--collector.{c}" for c in ebpf),
                *(f"--collector.{c}.backend={backend}" for c in ebpf),
            ]
            target = stack.enter_context(started(f"+ebpf_* ({backend})", netstack(*args)))
            wait_loaded(target, ebpf)
            targets.append(target)
        results = measure(targets, scrapes)
        peaks = {t.name: peak_rss(t.proc.pid) for t in targets}
    print_table(
        f"exporter with and without both eBPF collectors, {scrapes} sequential scrapes (interleaved)", results
    )
    base_rss = results[0].rss
    for r in results[1:]:
        print(
            f"RSS increase {r.name}: {(r.rss - base_rss) / 2**20:+.1f} MB "
            f"(peak VmHWM {peaks[r.name]:.1f} MB vs {peaks[results[0].name]:.1f} MB)"
        )


def peak_rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def netns():
    name = f"nse-ebpf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def flood(ns: str, packets: int, mode: str) -> tuple[float, float]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", FLOOD, str(packets), mode],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    elapsed, cpu = float(out[0]), float(out[1])
    return packets / elapsed, cpu / packets


def flood_configs(backends: list[str], everies: list[int]) -> dict[str, tuple[list[str], str, int]]:
    configs: dict[str, tuple[list[str], str, int]] = {"none": ([], "", 1)}
    for backend in backends:
        for every in everies:
            tag = "" if everies == [1] else f" N={every}"
            configs[f"{backend}: ebpf_softirq{tag}"] = (["ebpf_softirq"], backend, every)
        configs[f"{backend}: ebpf_drops"] = (["ebpf_drops"], backend, 1)
        for every in everies:
            tag = "" if everies == [1] else f" N={every}"
            configs[f"{backend}: both{tag}"] = (["ebpf_softirq", "ebpf_drops"], backend, every)
    return configs


def bench_flood(backends: list[str], trials: int, packets: int, everies: list[int]) -> None:
    configs = flood_configs(backends, everies)
    for mode in ("open", "closed"):
        pps: dict[str, list[float]] = {c: [] for c in configs}
        cpu: dict[str, list[float]] = {c: [] for c in configs}
        with netns() as ns:
            for _ in range(trials):  # interleaved, so every config sees the same machine noise
                for config, (names, backend, every) in configs.items():
                    with loaded(names, backend, every):
                        p, c = flood(ns, packets, mode)
                    pps[config].append(p)
                    cpu[config].append(c)
        what = "send+receive" if mode == "open" else "send to a closed port (NO_SOCKET drop)"
        print(f"\nloopback UDP flood, {what}: {packets} datagrams x {trials} trials per config")
        # paired: each trial's CPU per datagram over the same round's "none" (rounds are
        # interleaved, so a slow stretch of the shared machine weighs on both), then the median
        print(f"{'attached':<26}{'median pps':>12}{'ratio':>7}{'CPU us/pkt':>12}{'ratio':>7}{'paired':>8}")
        base_pps, base_cpu = statistics.median(pps["none"]), statistics.median(cpu["none"])
        for config in configs:
            p, c = statistics.median(pps[config]), statistics.median(cpu[config])
            paired = statistics.median(x / y for x, y in zip(cpu[config], cpu["none"]))
            print(
                f"{config:<26}{p:>12.0f}{p / base_pps:>7.3f}{c * 1e6:>12.2f}{c / base_cpu:>7.3f}{paired:>8.3f}"
            )


STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def bpf_programs() -> dict[int, dict]:
    """{id: bpftool's record} of every loaded BPF program (run_cnt/run_time_ns while stats on)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    return {p["id"]: p for p in json.loads(out.stdout or "[]")}


def bench_run_time(backends: list[str], packets: int, everies: list[int]) -> None:
    """In-kernel run time per program run (kernel.bpf_stats_enabled=1 for the floods, restored
    after): steadier than the floods' CPU ratios on a shared machine. The statistics add two
    clock reads per run (~60 ns here, the figure an empty program shows)."""
    if not shutil.which("bpftool") and not os.path.exists("/usr/sbin/bpftool"):
        print("\nin-kernel run time: left out (no bpftool)")
        return
    print(f"\nin-kernel run time per program run, {packets} closed-port + {packets} send+receive datagrams")
    print(f"{'backend':<9}{'N':>5} {'program':<34}{'runs':>10}{'ns/run':>9}")
    previous = Path(STATS_SYSCTL).read_text().strip()
    for backend, every in [(b, e) for b in backends for e in everies]:
        before = set(bpf_programs())
        with loaded(list(COLLECTORS), backend, every), netns() as ns:
            ours = set(bpf_programs()) - before
            Path(STATS_SYSCTL).write_text("1")
            try:
                flood(ns, packets, "closed")
                flood(ns, packets, "open")
                progs = bpf_programs()
            finally:
                Path(STATS_SYSCTL).write_text(previous)
        for pid in sorted(ours & set(progs)):
            p = progs[pid]
            runs = p.get("run_cnt", 0)
            if runs:
                name = p.get("name", pid)
                print(f"{backend:<9}{every:>5} {name:<34}{runs:>10}{p['run_time_ns'] / runs:>9.1f}")


def bench_exact(backends: list[str], datagrams: int = 5000) -> None:
    print(f"\nexact counting: {datagrams} datagrams to a closed UDP port in a fresh namespace")
    print(f"{'backend':<9}{'NO_SOCKET before':>18}{'after':>10}{'increase':>10}")
    for backend in backends:
        with loaded(["ebpf_drops"], backend) as [c], netns() as ns:
            before = no_socket(c)
            flood(ns, datagrams, "closed")
            after = no_socket(c)
        print(f"{backend:<9}{before:>18.0f}{after:>10.0f}{after - before:>+10.0f}")


def no_socket(collector) -> float:
    [family] = list(collector.collect())
    return sum(s.value for s in family.samples if s.labels["reason"] == "NO_SOCKET")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--packets", type=int, default=50000)
    parser.add_argument("--scrapes", type=int, default=100)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sample-every", default="1", help="ebpf_softirq sample-every values, e.g. 1,4,16")
    parser.add_argument(
        "--only", default="", help="comma-separated parts to run: load,exact,rss,runtime,flood (default all)"
    )
    args = parser.parse_args()
    everies = [int(v) for v in args.sample_every.split(",")]
    parts = set(args.only.split(",")) if args.only else {"load", "exact", "rss", "runtime", "flood"}
    with prerequisites():
        print(
            f"kernel {os.uname().release}, {os.cpu_count()} CPUs, "
            f"BCC_KERNEL_SOURCE={os.environ.get('BCC_KERNEL_SOURCE', '(none)')}"
        )
        backends = usable_backends(args.backends.split(","))
        if not backends:
            sys.exit("bench_ebpf: no backend can run here")
        if "load" in parts:
            bench_load(backends, args.trials)
        if "exact" in parts:
            bench_exact(backends)
        if "rss" in parts:
            bench_rss(backends, args.scrapes)
        if "runtime" in parts:
            bench_run_time(backends, args.packets, everies)
        if "flood" in parts:
            bench_flood(backends, args.trials, args.packets, everies)


if __name__ == "__main__":
    main()
