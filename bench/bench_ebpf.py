"""eBPF collectors: compile+attach time, exporter RSS with and without them, and what the
tracepoints cost the packet path under a bounded loopback UDP flood.

    sudo .venv/bin/python -m bench.bench_ebpf [--trials 5] [--packets 50000] [--scrapes 100]

Needs root, bcc (python3-bpfcc linked into the venv) and headers (scripts/kernel-headers.sh is
run into a temporary directory when BCC_KERNEL_SOURCE is not set). Mounts tracefs if it is not
mounted and unmounts it afterwards. The flood runs in a network namespace of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager

from bench.common import ROOT, measure, netstack, print_table, started
from exporter.contract import Context
from collectors.ebpf_drops import EbpfDrops
from collectors.ebpf_softirq import EbpfSoftirq

COLLECTORS = {
    "ebpf_softirq": lambda: EbpfSoftirq(Context(options={"all-vectors": False, "per-cpu": False})),
    "ebpf_drops": lambda: EbpfDrops(Context(options={"all-reasons": False})),
}

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
        if not any(os.path.isdir(f"{p}/events") for p in ("/sys/kernel/debug/tracing",
                                                           "/sys/kernel/tracing")):
            subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
            stack.callback(subprocess.run, ["umount", "/sys/kernel/tracing"], check=False)
        if not os.environ.get("BCC_KERNEL_SOURCE"):
            tmp = tempfile.mkdtemp(prefix="bench-ebpf-headers-")
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            out = subprocess.run(["sh", str(ROOT / "scripts" / "kernel-headers.sh"), tmp],
                                 check=True, capture_output=True, text=True).stdout.strip()
            os.environ["BCC_KERNEL_SOURCE"] = out
            stack.callback(os.environ.pop, "BCC_KERNEL_SOURCE", None)
        yield


@contextmanager
def loaded(names: list[str]):
    """The named collectors probed, compiled and attached in this process until the block ends."""
    collectors = [COLLECTORS[n]() for n in names]
    try:
        for c in collectors:
            c.probe()
            c.start()
            if not c.load.wait(60):
                raise RuntimeError(f"{c.name}: compile+attach did not finish in 60 s")
            c.load.program()  # raises the reason if it failed
        yield collectors
    finally:
        for c in collectors:
            c.close()


def bench_compile(trials: int) -> None:
    print(f"\ncompile + attach, {trials} trials each (bcc, in-process)")
    print(f"{'collector':<16}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name in COLLECTORS:
        seconds = []
        for _ in range(trials):
            with loaded([name]) as [c]:
                seconds.append(c.load.seconds)
        print(f"{name:<16}{statistics.median(seconds):>10.3f}{min(seconds):>8.3f}{max(seconds):>8.3f}")


def bench_rss(scrapes: int) -> None:
    base = ["--collector.disable-defaults", "--collector.cpu", "--collector.softirq"]
    with_ebpf = [*base, "--collector.ebpf_softirq", "--collector.ebpf_drops"]
    with started("cpu+softirq", netstack(*base)) as without, \
         started("cpu+softirq+ebpf_*", netstack(*with_ebpf)) as with_:
        time.sleep(3)  # compile + attach finish in the background (~1 s)
        results = measure([with_, without], scrapes)
        peaks = {t.name: peak_rss(t.proc.pid) for t in (with_, without)}
    print_table(f"exporter with and without the eBPF collectors, {scrapes} sequential scrapes",
                results)
    print("peak RSS (VmHWM, includes clang at compile time): "
          + ", ".join(f"{name} {mb:.1f} MB" for name, mb in peaks.items()))


def peak_rss(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def netns():
    name = f"bebpf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def flood(ns: str, packets: int, mode: str) -> tuple[float, float]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", FLOOD, str(packets), mode],
                         check=True, capture_output=True, text=True, timeout=120).stdout.split()
    elapsed, cpu = float(out[0]), float(out[1])
    return packets / elapsed, cpu / packets


def bench_flood(trials: int, packets: int) -> None:
    configs = {"none": [], "ebpf_softirq": ["ebpf_softirq"], "ebpf_drops": ["ebpf_drops"],
               "both": ["ebpf_softirq", "ebpf_drops"]}
    for mode in ("open", "closed"):
        pps = {c: [] for c in configs}
        cpu = {c: [] for c in configs}
        with netns() as ns:
            for _ in range(trials):  # interleaved, so every config sees the same machine noise
                for config, names in configs.items():
                    with loaded(names):
                        p, c = flood(ns, packets, mode)
                    pps[config].append(p)
                    cpu[config].append(c)
        what = "send+receive" if mode == "open" else "send to a closed port (NO_SOCKET drop)"
        print(f"\nloopback UDP flood, {what}: {packets} datagrams x {trials} trials per config")
        print(f"{'attached':<14}{'median pps':>12}{'ratio':>7}{'CPU us/pkt':>12}{'ratio':>7}")
        base_pps, base_cpu = statistics.median(pps["none"]), statistics.median(cpu["none"])
        for config in configs:
            p, c = statistics.median(pps[config]), statistics.median(cpu[config])
            print(f"{config:<14}{p:>12.0f}{p / base_pps:>7.3f}{c * 1e6:>12.2f}{c / base_cpu:>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--packets", type=int, default=50000)
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()
    with prerequisites():
        print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, "
              f"BCC_KERNEL_SOURCE={os.environ['BCC_KERNEL_SOURCE']}")
        bench_compile(args.trials)
        bench_rss(args.scrapes)
        bench_flood(args.trials, args.packets)


if __name__ == "__main__":
    main()
