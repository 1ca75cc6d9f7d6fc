"""Issue 18.3 on the real kernel: a SCHED_FIFO busy loop on the CPU that processes NET_RX.
Two network namespaces joined by a veth; the receiving end's rx queue steers every packet to
CPU 1 (RPS), a bounded UDP flood from CPU 0 (to 198.18.0.2, closed ports) feeds it. After a
healthy start a SCHED_FIFO busy loop (priority 50, pinned to CPU 1, ending by itself; RT
throttling must be on) holds CPU 1 while the flood goes on. The real exporter (softirq, cpu and
ebpf_softirq on the libbpf backend, per CPU) and a real Prometheus with the shipped rules (`for:`
shortened as in tests/e2e/test_alerts_e2e.py, and the starvation rules' 5 m windows scaled to
20 s, see short_windows; thresholds as shipped) scrape every second; the figures of CPU 1 before
and during are read back from Prometheus and printed.

What the kernel (6.18, HZ=250) shows, measured here: a softirq raised by an interrupt (the RPS
IPI) runs when the interrupt returns, above any task, real-time or not. What a real-time task
starves is ksoftirqd, which takes NET_RX over when one run does not finish its work (~2 ms or
10 rounds). So:
- a light receive path (the flood as fast as one Python sender goes, ~30,000-80,000 packets/s):
  the busy loop gets ~75 % of CPU 1, the NET_RX wait p99 stays at µs, no drop, no squeeze; the
  processed rate falls only as far as the sender, on CPU 0 with the tasks pushed off CPU 1,
  sends less. No starvation alert, rightly: the packets do not wait.
- a costly receive path (250 nftables rules evaluated per packet in the receiving namespace,
  25,000 packets/s paced): NET_RX spills over to ksoftirqd, which the busy loop keeps off the
  CPU; NET_RX then runs at the next interrupt, the scheduler tick: the wait p99 goes from tens of
  µs to 2-4 ms. NetstackNetRxSoftirqWaitHigh fires for CPU 1; the CPU still processes every
  packet, nothing is dropped or squeezed: NetstackNetRxStarved (procfs: drops with a collapsed
  processed rate) and NetstackSoftnetSqueezed stay silent. procfs shows nothing of this delay.

The light case takes ~35 s, the costly one ~50 s."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.e2e.test_alerts_e2e import RULES, short_for
from tests.helpers import Exporter, Netns, need, need_root, need_tool, prometheus_server, run, stop_process
from tests.integration.test_ebpf_loader import core_environment

pytestmark = pytest.mark.root

RX_CPU = 1  # the CPU that RPS sends every packet to, and that the busy loop holds
TX_CPU = 0  # the sender, the exporter and Prometheus
FLOOD_START = 3.0  # seconds of flood before Prometheus starts
HEALTHY = 10.0  # seconds of flood, scraped, before the busy loop
HOG = 20.0  # seconds the busy loop holds CPU 1 (it ends by itself, whatever the test does)
COSTLY_HOG = 30.0
WINDOW = "20s"  # the starvation rules' rate window in this test (shipped: 5m), see short_windows
COSTLY_RULES = 250  # nftables rules each packet is matched against on CPU 1 (~10 µs a packet)
COSTLY_RATE = 25_000  # packets/s: CPU 1 keeps up, by interrupts alone, also when held

# argv: seconds, packets per second (0: as fast as it goes)
FLOOD = """
import socket, sys, time
seconds, rate = float(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 64
start = time.monotonic()
end = start + seconds
n = 0
while time.monotonic() < end:
    for _ in range(64):
        try:
            s.sendto(payload, ("198.18.0.2", 9000 + (n & 255)))
        except OSError:
            pass
        n += 1
    if rate:
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
print(n)
"""

# Bounded by itself: it ends after argv[2] seconds even if the test dies before killing it.
BUSY_LOOP = """
import os, sys, time
cpu, seconds = int(sys.argv[1]), float(sys.argv[2])
os.sched_setaffinity(0, {cpu})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
print("running", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    pass
"""

STARVATION = {
    "NetstackNetRxSoftirqWaitHigh",
    "NetstackNetRxStarved",
    "NetstackSoftnetSqueezed",
    "NetstackSoftnetDropping",
}


def nft_rules(n: int) -> str:
    """n rules that each packet of the flood is matched against and none matches."""
    rules = "".join(f"    udp dport {1 + i} counter\n" for i in range(n))
    return (
        "table ip nse_starve {\n  chain pre {\n    type filter hook prerouting priority 0;\n"
        + rules
        + "  }\n}\n"
    )


def short_windows(rules: str) -> str:
    """The two NET_RX starvation rules' 5 m rate windows scaled to WINDOW: within the test's
    minute the held seconds then fill the window as five minutes of a hold would (a 5 m window of
    a series seconds old averages the healthy start in)."""
    blocks = re.split(r"(?m)^(?=\s+- alert: )", rules)
    out = []
    for block in blocks:
        if re.search(r"- alert: (NetstackNetRxSoftirqWaitHigh|NetstackNetRxStarved)\n", block):
            assert "[5m]" in block, "the starvation rules' windows moved: update short_windows"
            block = block.replace("[5m]", f"[{WINDOW}]")
        out.append(block)
    return "".join(out)


def rt_throttling_on() -> bool:
    with open("/proc/sys/kernel/sched_rt_runtime_us") as f:
        return int(f.read()) >= 0


def query(base: str, expr: str, at: float) -> dict[str, float]:
    """{cpu: value} of an instant query at time `at`."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(url, timeout=5) as r:
        result = json.load(r)["data"]["result"]
    return {s["metric"].get("cpu", ""): float(s["value"][1]) for s in result}


def alerts(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=5) as r:
        return json.load(r)["data"]["alerts"]


def figures(base: str, at: float, window: str) -> dict[str, float]:
    """What CPU RX_CPU showed over `window` before `at`."""
    cpu = f'cpu="{RX_CPU}"'
    exprs = {
        "wait_p99_s": "histogram_quantile(0.99, sum by (cpu, le) "
        f'(rate(netstack_softirq_wait_seconds_bucket{{vector="NET_RX",{cpu}}}[{window}])))',
        "processed_per_s": f"rate(netstack_softnet_processed_total{{{cpu}}}[{window}])",
        "dropped_per_s": f"rate(netstack_softnet_dropped_total{{{cpu}}}[{window}])",
        "squeezed_per_s": f"rate(netstack_softnet_times_squeezed_total{{{cpu}}}[{window}])",
        "softirq_share": f'rate(netstack_cpu_seconds_total{{mode="softirq",{cpu}}}[{window}])',
        "user_share": f'rate(netstack_cpu_seconds_total{{mode="user",{cpu}}}[{window}])',
        "idle_share": f'rate(netstack_cpu_seconds_total{{mode="idle",{cpu}}}[{window}])',
        "steal_share": f'rate(netstack_cpu_seconds_total{{mode="steal",{cpu}}}[{window}])',
    }
    return {name: query(base, e, at).get(str(RX_CPU), float("nan")) for name, e in exprs.items()}


def reproduce(tmp_path, costly_rules: int = 0, rate: int = 0, hold: float = HOG):
    """The flood, a healthy start, the busy loop: (figures before, during, alerts seen)."""
    need_root()
    need(len(os.sched_getaffinity(0)) >= 2 and (os.cpu_count() or 1) >= 2, "needs two CPUs")
    # RT throttling keeps 5 % of CPU 1 for everything else; without it the busy loop would hold
    # the CPU for its whole run. The machine's setting: not changed here.
    need(rt_throttling_on(), "kernel.sched_rt_runtime_us is -1 (RT throttling off): no busy loop")
    with core_environment() as env, Netns("nse-starve") as a, Netns("nse-starve") as b:
        run(
            [
                "ip",
                "link",
                "add",
                "sv0",
                "netns",
                a.name,
                "type",
                "veth",
                "peer",
                "name",
                "sv1",
                "netns",
                b.name,
            ]
        )
        a.ip("addr", "add", "198.18.0.1/24", "dev", "sv0")
        b.ip("addr", "add", "198.18.0.2/24", "dev", "sv1")
        a.ip("link", "set", "sv0", "up")
        b.ip("link", "set", "sv1", "up")
        b.exec("sh", "-c", f"echo {1 << RX_CPU:x} > /sys/class/net/sv1/queues/rx-0/rps_cpus")
        if costly_rules:
            need_tool("nft", "nftables")
            b.exec("nft", "-f", "-", input=nft_rules(costly_rules))
        rules = tmp_path / "rules.yml"
        rules.write_text(short_windows(short_for(RULES.read_text())))
        exporter = Exporter(
            "--collector.disable-defaults",
            "--collector.softirq",
            "--collector.cpu",
            "--collector.ebpf_softirq",
            "--collector.ebpf_softirq.backend=libbpf",
            "--collector.ebpf_softirq.per-cpu",
            env=env,
        )
        flood = hog = None
        seen: set[tuple[str, str, str]] = set()
        with exporter:
            config = (
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files: ['{rules}']\n"
                "scrape_configs:\n  - job_name: netstack-exporter\n"
                f"    static_configs:\n      - targets: ['127.0.0.1:{exporter.port}']\n"
            )
            try:
                flood = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        a.name,
                        "taskset",
                        "-c",
                        str(TX_CPU),
                        sys.executable,
                        "-c",
                        FLOOD,
                        str(FLOOD_START + HEALTHY + hold + 10),
                        str(rate),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                # the flood at its pace before the first scrape: rates see no start-up burst
                time.sleep(FLOOD_START)
                with prometheus_server(config, tmp_path) as base:
                    time.sleep(HEALTHY)
                    healthy = {
                        (x["labels"]["alertname"], x["state"], x["labels"].get("cpu", ""))
                        for x in alerts(base)
                    }
                    # before the busy loop nothing is raised (the absent alert waits for a scrape)
                    assert healthy <= {("NetstackExporterAbsent", "pending", "")}, healthy
                    hog_start = time.time()
                    hog = subprocess.Popen(
                        [sys.executable, "-c", BUSY_LOOP, str(RX_CPU), str(hold)],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    assert hog.stdout is not None
                    assert hog.stdout.readline().strip() == "running", (
                        "the busy loop could not become SCHED_FIFO"
                    )
                    while hog.poll() is None:
                        for alert in alerts(base):
                            seen.add(
                                (
                                    alert["labels"]["alertname"],
                                    alert["state"],
                                    alert["labels"].get("cpu", alert["labels"].get("collector", "")),
                                )
                            )
                        time.sleep(0.5)
                    hog_end = time.time()
                    time.sleep(3)  # the last scrapes and evaluations of the held minute
                    for alert in alerts(base):
                        seen.add(
                            (
                                alert["labels"]["alertname"],
                                alert["state"],
                                alert["labels"].get("cpu", alert["labels"].get("collector", "")),
                            )
                        )
                    before = figures(base, hog_start - 1, f"{int(HEALTHY) - 2}s")
                    during = figures(base, hog_end, f"{int(hog_end - hog_start) - 3}s")
            finally:
                for proc in (hog, flood):
                    if proc is not None:
                        stop_process(proc)
        print(
            f"SCHED_FIFO busy loop on CPU {RX_CPU} for {hog_end - hog_start:.0f} s, {costly_rules} nft rules"
        )
        for name in before:
            print(f"  {name:<16} before {before[name]:12.6g}  during {during[name]:12.6g}")
        print(f"  alerts seen: {sorted(seen)}")
        # the busy loop held the CPU: it ran whenever NET_RX did not (never idle but for the 5 % RT
        # throttling leaves to others). Its share is what softirq leaves: ~55-90 % with the paced
        # costly flood, down to ~11 % (CI, alone on the machine) with the unpaced light one, whose
        # NET_RX runs at interrupt exit, above the loop
        assert during["idle_share"] < 0.1 and during["user_share"] > 0.05, during
        return before, during, seen


def test_a_realtime_task_does_not_delay_a_light_net_rx(tmp_path):
    before, during, seen = reproduce(tmp_path)
    # the packets still got through, at once
    assert during["processed_per_s"] > 1000, during
    assert during["wait_p99_s"] < 0.001, (before, during)
    assert during["dropped_per_s"] < 0.01 * during["processed_per_s"], during
    assert not {n for n, _, _ in seen} & STARVATION, seen


def test_a_realtime_task_delays_net_rx_that_spills_to_ksoftirqd(tmp_path):
    before, during, seen = reproduce(tmp_path, COSTLY_RULES, COSTLY_RATE, COSTLY_HOG)
    assert before["wait_p99_s"] < 0.001, before  # healthy: CPU 1 keeps up in interrupt context
    assert during["wait_p99_s"] > 10 * before["wait_p99_s"], (before, during)
    firing = {(n, c) for n, state, c in seen if state == "firing"}
    assert ("NetstackNetRxSoftirqWaitHigh", str(RX_CPU)) in firing, seen
    # every packet still processed: nothing for procfs to see, and no squeeze
    assert during["processed_per_s"] > 0.8 * COSTLY_RATE, during
    assert during["dropped_per_s"] == 0, during
    assert not {n for n, _, _ in seen} & (STARVATION - {"NetstackNetRxSoftirqWaitHigh"}), seen
