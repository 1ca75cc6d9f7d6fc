"""Alerts end to end: a real Prometheus with the shipped rules scrapes real exporters, one per
fixture host tree, every 2 s; the test advances each tree as a node would (CPU time passes,
packets are processed) and, after a healthy start, turns one tree into one sick node. Every
scenario's expected alerts must reach the firing state through /api/v1/alerts, and nothing else
may fire or be pending anywhere, the healthy tree included.

The one change to the rules: every `for:` is shortened to FOR (a `for: 8m` cannot be waited out
in CI). The expressions, windows and thresholds are the shipped ones; how long each alert takes
with its real `for:` is tested by promtool in alerts/time-to-fire.yml (tests/unit/test_alert_timing.py).
Covered elsewhere, because a fixture tree cannot describe them: the MTU mismatch (a real vxlan in
network namespaces), BGP (a real BIRD), slow and stale fsync (the collector's datasync seam) and
an absent exporter, and NetstackNetRxStarved (it needs an hour of history): alerts/tests.yml and
alerts/time-to-fire.yml."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.check_trees import HostTree
from tests.helpers import ROOT, Exporter, free_port, need_root, need_tool, run, stop_process

RULES = ROOT / "alerts" / "netstack.rules.yml"
FOR = "4s"
ABSENT_FOR = "1m"  # longer than the start of Prometheus and the exporters
HEALTHY_FOR = 8.0  # seconds of healthy samples before the faults start
DEADLINE = 120.0  # seconds after the faults start for every expected alert to fire
SETTLE = 15.0  # seconds the test keeps watching after the last expected alert fired


def short_for(rules: str) -> str:
    """Every `for:` shortened to FOR, but NetstackExporterAbsent's to ABSENT_FOR: before the first
    scrape there is no `up` at all, which is the absent alert's condition."""
    blocks = re.split(r"(?m)^(?=\s+- alert: )", rules)
    out = []
    for block in blocks:
        wait = ABSENT_FOR if "- alert: NetstackExporterAbsent\n" in block else FOR
        out.append(re.sub(r"(?m)^(\s+for: )\S+$", rf"\g<1>{wait}", block))
    shortened = "".join(out)
    assert shortened.count(f"for: {FOR}\n") == rules.count("- alert:") - 1, "every alert has a for:"
    return shortened


class Scenario:
    """One node: a fixture tree, the exporter's extra flags, what happens every second once sick,
    and the alerts that must fire for it (and only those)."""

    def __init__(
        self,
        name: str,
        expect: set[str],
        sick: Callable[[HostTree], None] = lambda tree: None,
        setup: Callable[[HostTree], None] = lambda tree: None,
        flags: tuple[str, ...] = (),
        once: Callable[[HostTree], None] = lambda tree: None,
    ):
        self.name, self.expect, self.sick, self.setup, self.flags, self.once = (
            name,
            expect,
            sick,
            setup,
            flags,
            once,
        )
        self.tree: HostTree | None = None
        self.processed = {0: 1000, 1: 1000, 3: 1000}  # packets per second per online CPU
        self.processed_when_sick = self.processed
        self.steal: dict[int, float] = {}  # steal fraction per CPU once sick

    def second(self, faulty: bool) -> None:
        """One second of this node's life, in the kernel's formats."""
        tree = self.tree
        tree.tick(1.0, steal=self.steal if faulty else None)
        for cpu, n in (self.processed_when_sick if faulty else self.processed).items():
            tree.softnet(cpu, processed=n)
        if faulty:
            self.sick(tree)


def starved(tree: HostTree) -> None:
    # a SCHED_FIFO task holds CPU 0: it processes a tenth of its packets (see processed_when_sick),
    # the backlog overflows
    tree.softnet(0, dropped=30)


def squeezed(tree: HostTree) -> None:
    tree.softnet(1, squeezed=5)


def conntrack_full(tree: HostTree) -> None:
    tree.conntrack(entries=950, limit=1000, cpu=0, drop=20)


def conntrack_race(tree: HostTree) -> None:
    # the clash race: the kernel counts each insert_failed packet in drop too (issue 18.1)
    tree.conntrack(cpu=0, insert_failed=20, drop=20)


def conntrack_broken(tree: HostTree) -> None:
    # the source exists but no collection can parse it
    path = tree.proc / "net" / "stat" / "nf_conntrack"
    path.write_text("entries  searched\nnot hex at all\n")


def scenarios(fsync_ro: Path | None) -> list[Scenario]:
    steal = Scenario("steal", {"NetstackCPUStealHigh", "NetstackCPUStealHighPerCPU"})
    steal.steal = {3: 0.9}
    # NetstackNetRxStarved compares the 5 m processed rate with its peak of the hour: a series
    # minutes old cannot show that (its 5 m rates grow as it ages), so here only the drops alert.
    starving = Scenario("starved", {"NetstackSoftnetDropping"}, sick=starved)
    starving.processed_when_sick = {0: 100, 1: 1000, 3: 1000}
    out = [
        Scenario("healthy", set()),
        steal,
        Scenario("squeeze", {"NetstackSoftnetSqueezed"}, sick=squeezed),
        starving,
        Scenario(
            "conntrack-full",
            {"NetstackConntrackTableNearlyFull", "NetstackConntrackDropping"},
            sick=conntrack_full,
        ),
        Scenario("conntrack-race", {"NetstackConntrackInsertFailed"}, sick=conntrack_race),
        Scenario(
            "ipvs-black-hole",
            {"NetstackIPVSServicesWithoutBackends"},
            once=lambda tree: tree.ipvs_drop_backends("TCP  0A600001:01BB"),
        ),
        Scenario("ipvs-capped", {"NetstackIPVSSeriesCapped"}, flags=("--collector.ipvs.max-series=3",)),
        Scenario("collector-failing", {"NetstackCollectorFailing"}, once=conntrack_broken),
        Scenario("openvz", {"NetstackSharedKernelNode"}, once=lambda tree: tree.openvz_container()),
    ]
    if fsync_ro is not None:
        out.append(
            Scenario(
                "fsync-read-only",
                {"NetstackFsyncProbeFailing"},
                flags=(
                    "--collector.fsync",
                    f"--collector.fsync.directory={fsync_ro}",
                    "--collector.fsync.interval=1s",
                    "--collector.fsync.writes=4",
                ),
            )
        )
    return out


@pytest.fixture
def read_only_fs(tmp_path):
    """A tmpfs that goes read-only after the probe directory exists (a remount as on I/O errors)."""
    need_root()
    mnt = tmp_path / "ro"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "nse-e2e-ro", str(mnt)])
    try:
        (mnt / "probe").mkdir()
        run(["mount", "-o", "remount,ro", str(mnt)])
        yield mnt / "probe"
    finally:
        run(["umount", str(mnt)], check=False)


def get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]


def test_each_sick_node_raises_its_alerts_and_a_healthy_one_none(tmp_path, read_only_fs):
    started = time.monotonic()
    prometheus = need_tool("prometheus", "prometheus")
    rules = tmp_path / "rules.yml"
    rules.write_text(short_for(RULES.read_text()))
    nodes = scenarios(read_only_fs)
    exporters = []
    down_port = free_port()  # nothing listens: the "exporter down" node
    ticking = threading.Event()
    faulty = threading.Event()
    proc = log = None
    try:
        for node in nodes:
            node.tree = HostTree(tmp_path / node.name)
            node.tree.healthy()
            node.setup(node.tree)
            exp = Exporter(*node.tree.args(), *node.flags)
            exporters.append(exp.__enter__())
            node.instance = f"127.0.0.1:{exp.port}"
        instances = {node.instance: node for node in nodes}
        down = f"127.0.0.1:{down_port}"
        targets = ", ".join(f"'{i}'" for i in [*instances, down])
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 1900ms\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n"
            "scrape_configs:\n  - job_name: netstack-exporter\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )
        port = free_port()
        log = open(tmp_path / "prometheus.log", "w")
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"

        def life():
            while not ticking.is_set():
                t0 = time.monotonic()
                for node in nodes:
                    node.second(faulty.is_set())
                ticking.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

        ticker = threading.Thread(target=life, daemon=True)
        ticker.start()
        time.sleep(HEALTHY_FOR)
        for node in nodes:
            node.once(node.tree)
        faulty.set()
        fault_at = time.monotonic()

        expected = {(node.name, a) for node in nodes for a in node.expect} | {
            ("down", "NetstackExporterDown")
        }
        fired_at: dict[tuple[str, str], float] = {}
        seen: set[tuple[str, str, str]] = set()
        last_new = None
        while time.monotonic() - fault_at < DEADLINE:
            try:
                alerts = get(f"{base}/api/v1/alerts")["alerts"]
            except OSError:
                alerts = []
            for a in alerts:
                inst = a["labels"].get("instance", "")
                name = "down" if inst == down else instances[inst].name if inst in instances else inst
                key = (name, a["labels"]["alertname"])
                seen.add((*key, a["state"], a["labels"].get("collector", "")))
                if a["state"] == "firing" and key not in fired_at:
                    fired_at[key] = time.monotonic() - fault_at
                    last_new = time.monotonic()
            if expected <= set(fired_at) and time.monotonic() - last_new > SETTLE:
                break
            time.sleep(0.5)
        ticking.set()
        ticker.join(5)

        for key in sorted(fired_at):
            print(f"{key[0]:>18} {key[1]:<38} firing {fired_at[key]:5.1f} s after the fault")
        missing = expected - set(fired_at)
        assert not missing, f"never fired: {sorted(missing)}; seen: {sorted(seen)}"
        unexpected = {s for s in seen if s[:2] not in expected}
        assert not unexpected, f"raised but not expected: {sorted(unexpected)}"
        # every rule is healthy in the real server (no evaluation errors)
        groups = get(f"{base}/api/v1/rules")["groups"]
        broken = [r["name"] for g in groups for r in g["rules"] if r.get("health") != "ok"]
        assert not broken, broken
        print(f"alert e2e: {len(nodes)} nodes, total {time.monotonic() - started:.0f} s")
    finally:
        ticking.set()
        if proc is not None:
            stop_process(proc, 10)
        if log is not None:
            log.close()
        for exp in exporters:
            exp.__exit__(None, None, None)
