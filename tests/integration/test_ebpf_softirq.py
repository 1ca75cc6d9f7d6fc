"""ebpf_softirq on the real kernel (root), on both backends: loopback traffic fills the NET_RX
wait and service histograms, through the real exporter; the histograms are consistent and agree
with /proc/softirqs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.common import parse_cpu_list
from tests.helpers import ROOT, Exporter, Netns, samples, value
from tests.integration.test_ebpf_loader import backend_env, ebpf_env, wait_success  # noqa: F401

N = 3000
# receiver and sender in one namespace over lo: every datagram is a NET_RX softirq
TRAFFIC = """
import socket, sys
n = int(sys.argv[1])
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.bind(("127.0.0.1", 0))
r.settimeout(5)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"x", r.getsockname())
    r.recv(16)
"""


def net_rx_total() -> int:
    """NET_RX softirqs run so far, all CPUs (the kernel counts them where softirq_entry fires)."""
    with open("/proc/softirqs") as f:
        for line in f:
            if line.split(":")[0].strip() == "NET_RX":
                return sum(int(x) for x in line.split(":")[1].split())
    raise AssertionError("no NET_RX row in /proc/softirqs")


def check_histogram(metrics, name, **labels):
    """Cumulative buckets never decrease and the +Inf bucket equals _count."""
    count = value(metrics, f"{name}_count", **labels)
    buckets = samples(metrics, f"{name}_bucket", **labels)
    by_le = sorted((float(dict(k[1])["le"]), v) for k, v in buckets.items())
    assert len(by_le) == 26  # 25 log2 buckets + +Inf
    counts = [v for _, v in by_le]
    assert counts == sorted(counts), by_le
    assert by_le[-1] == (float("inf"), count)
    # the per-bucket counts (differences) sum to the count
    assert sum(b - a for a, b in zip([0, *counts], counts)) == count
    return count


def test_loopback_traffic_fills_net_rx_histograms(backend_env):  # noqa: F811
    backend, env = backend_env
    with (
        Netns("ebs") as ns,
        Exporter(
            "--collector.disable-defaults",
            "--collector.ebpf_softirq",
            f"--collector.ebpf_softirq.backend={backend}",
            env=env,
        ) as exporter,
    ):
        first = wait_success(exporter, "ebpf_softirq")
        proc_before = net_rx_total()
        before = exporter.scrape()
        ns.exec(sys.executable, "-c", TRAFFIC, str(N))
        after = exporter.scrape()
        proc_after = net_rx_total()

        vectors = {dict(k[1])["vector"] for k in samples(first, "netstack_softirq_wait_seconds_count")}
        assert vectors == {"NET_RX", "NET_TX"}
        for name in ("netstack_softirq_wait_seconds", "netstack_softirq_service_seconds"):
            for vector in ("NET_RX", "NET_TX"):
                check_histogram(after, name, vector=vector)
        service = value(after, "netstack_softirq_service_seconds_count", vector="NET_RX") - value(
            before, "netstack_softirq_service_seconds_count", vector="NET_RX"
        )
        wait = value(after, "netstack_softirq_wait_seconds_count", vector="NET_RX") - value(
            before, "netstack_softirq_wait_seconds_count", vector="NET_RX"
        )
        proc = proc_after - proc_before
        # /proc/softirqs' window encloses the scrapes' window; the difference is the softirqs
        # of the scrape's own HTTP exchange and other host traffic
        assert N <= service <= proc, (service, proc)
        assert proc - service <= 0.05 * proc, (service, proc)
        # every NET_RX run here was raised while the program watched, so each has a wait
        assert N <= wait <= service + 5, (wait, service)
        wait_sum = value(after, "netstack_softirq_wait_seconds_sum", vector="NET_RX") - value(
            before, "netstack_softirq_wait_seconds_sum", vector="NET_RX"
        )
        assert 0 < wait_sum / wait < 0.1  # a mean wait between 0 and 100 ms on an idle box


def test_per_cpu_and_all_vectors(backend_env):  # noqa: F811
    backend, env = backend_env
    with (
        Netns("ebs") as ns,
        Exporter(
            "--collector.disable-defaults",
            "--collector.ebpf_softirq",
            f"--collector.ebpf_softirq.backend={backend}",
            "--collector.ebpf_softirq.per-cpu",
            "--collector.ebpf_softirq.all-vectors",
            env=env,
        ) as exporter,
    ):
        wait_success(exporter, "ebpf_softirq")
        ns.exec(sys.executable, "-c", TRAFFIC, "500")
        metrics = exporter.scrape()
        series = samples(metrics, "netstack_softirq_service_seconds_count")
        labels = [dict(k[1]) for k in series]
        online = parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())
        assert {str(c) for c in online} <= {lab["cpu"] for lab in labels}
        assert {"NET_RX", "NET_TX", "TIMER", "RCU", "SCHED"} <= {lab["vector"] for lab in labels}
        rx = sum(v for k, v in series.items() if dict(k[1])["vector"] == "NET_RX")
        assert rx >= 500
        timer = sum(v for k, v in series.items() if dict(k[1])["vector"] == "TIMER")
        assert timer > 0  # the tick ran while we watched
        for lab in labels:
            check_histogram(metrics, "netstack_softirq_service_seconds", **lab)


def test_bpf_slot_function_matches_the_bucket_boundaries(ebpf_env, tmp_path):  # noqa: F811
    """Run softirq.c's own slot_of() in the kernel on chosen values (lseek offsets, a syscall
    argument we control) and compare with the Python twin the buckets are built on."""
    import os
    import re

    from collectors.ebpf_loader import BccLoader, bpf_source, slot_of

    c_slot_of = re.search(
        r"static inline u32 slot_of\(u64 v\)\n\{.*?\n\}", bpf_source("softirq.c"), re.S
    ).group(0)
    program = BccLoader().load_source(
        c_slot_of
        + """
BPF_HASH(slots, u64, u32, 1024);
TRACEPOINT_PROBE(syscalls, sys_enter_lseek)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TGID)
        return 0;
    u64 v = args->offset;
    u32 s = slot_of(v);
    slots.update(&v, &s);
    return 0;
}
""",
        {"TGID": os.getpid()},
    )
    values = {0, 1, 2, 3, 4, 5, 7, 8, 255, 256, 1000}
    for s in range(1, 63):
        values |= {(1 << s) - 1, 1 << s, (1 << s) + 1}
    try:
        with open(tmp_path / "f", "w") as f:
            for v in values:
                try:
                    os.lseek(f.fileno(), v, os.SEEK_SET)
                except OSError:
                    pass  # the tracepoint fired on entry all the same
        seen = program.read_map("slots")
    finally:
        program.close()
    assert set(seen) == values
    assert {v: seen[v] for v in values} == {v: slot_of(v) for v in values}


def test_sampled_runs_are_about_one_in_n(backend_env):  # noqa: F811
    """sample-every=8: the program times one NET_RX run in 8 per CPU, the exported counts are
    the sampled ones times 8 (multiples of 8), and they still estimate every run."""
    backend, env = backend_env
    every = 8
    with (
        Netns("ebs") as ns,
        Exporter(
            "--collector.disable-defaults",
            "--collector.ebpf_softirq",
            f"--collector.ebpf_softirq.backend={backend}",
            f"--collector.ebpf_softirq.sample-every={every}",
            env=env,
        ) as exporter,
    ):
        wait_success(exporter, "ebpf_softirq")
        proc_before = net_rx_total()  # encloses the scrapes' window, as above
        before = exporter.scrape()
        ns.exec(sys.executable, "-c", TRAFFIC, str(N))
        after = exporter.scrape()
        proc_after = net_rx_total()
        assert value(after, "netstack_softirq_sample_every") == every
        delta = {}
        for name in ("netstack_softirq_wait_seconds", "netstack_softirq_service_seconds"):
            check_histogram(after, name, vector="NET_RX")
            count = value(after, f"{name}_count", vector="NET_RX")
            assert count % every == 0, count
            delta[name] = count - value(before, f"{name}_count", vector="NET_RX")
        wait, service = delta["netstack_softirq_wait_seconds"], delta["netstack_softirq_service_seconds"]
        proc = proc_after - proc_before
        # every 8th raised run per CPU is timed: sampled = runs / 8 within one per CPU, so the
        # scaled count is within 8 per CPU of the runs (other host traffic adds runs to both)
        cpus = os.cpu_count() or 1
        assert 0.8 * N <= wait <= proc + every * cpus, (wait, proc)
        assert wait / every < 0.2 * proc, (wait, proc)  # not every run: about one in 8
        # a timed run is timed from raise to exit, so wait and service are the same runs
        assert abs(service - wait) <= every * (cpus + 2), (service, wait)
        wait_sum = value(after, "netstack_softirq_wait_seconds_sum", vector="NET_RX") - value(
            before, "netstack_softirq_wait_seconds_sum", vector="NET_RX"
        )
        assert 0 < wait_sum / wait < 0.1


@pytest.mark.parametrize("bad", ["0", "100000", "x"])
def test_sample_every_out_of_range_is_refused_at_start(bad):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--collector.ebpf_softirq",
            f"--collector.ebpf_softirq.sample-every={bad}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("netstack-exporter: error: --collector.ebpf_softirq.sample-every"), line
