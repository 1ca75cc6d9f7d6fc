"""The landing page's verdicts: VerdictHistory fed by a real Scheduler on a fixture host tree
gives the check's verdicts (it keeps only field_guide.FAMILIES of each collection, so a family a
check reads but FAMILIES lacks would turn that verdict into a skip here), over a window of
recent collections; _verdict_rows puts the worst first and escapes what it prints.
tests/e2e/test_landing.py loads the page itself in Chromium."""

from __future__ import annotations

import asyncio
import re
import time

from collectors import available_collectors
from exporter import field_guide
from exporter.check import VerdictHistory
from exporter.cli import parse_config
from exporter.contract import Context, Paths
from exporter.scheduling import CollectorRunner, Scheduler
from exporter.server import _verdict_rows
from tests.check_trees import HostTree
from tests.helpers import ROOT


def collect_twice(tree: HostTree, change, window: float = 60.0, readings: int = 2):
    classes = available_collectors()
    config = parse_config(tree.args(), {}, classes)
    paths = Paths(procfs=config.procfs, sysfs=config.sysfs)
    runners = [
        CollectorRunner(cls(Context(paths=paths, options=config.collector_options[cls.name])))
        for cls in classes
        if config.enabled[cls.name]
    ]
    scheduler = Scheduler(runners, list, 5.0)
    history = VerdictHistory(runners, window)
    scheduler.listeners.append(history.add)

    async def run():
        try:
            await scheduler.snapshot()
            for _ in range(readings - 1):
                change()
                await asyncio.sleep(0.15)
                await scheduler.snapshot()
        finally:
            await asyncio.to_thread(scheduler.close, 0.5)

    asyncio.run(run())
    return history


def test_landing_verdicts_are_the_checks(tmp_path):
    tree = HostTree(tmp_path / "host")
    tree.healthy()

    def change():
        tree.tick(seconds=0.15, steal={1: 0.8})
        tree.conntrack(entries=250000, cpu=0, drop=20, insert_failed=2)
        tree.softnet(3, dropped=4)
        tree.ipvs_drop_backends("TCP  0A600001:01BB")

    verdicts = {v.check: v for v in collect_twice(tree, change).verdicts()}
    assert set(verdicts) == {c.id for c in field_guide.CHECKS}  # no collectors row: / has a table
    got = {k: v.status for k, v in verdicts.items()}
    assert got["conntrack.drops"] == "fail" and got["conntrack.fill"] == "warn"
    assert got["cpu.steal_per_cpu"] == "warn" and got["softnet.backlog_drops"] == "warn"
    assert got["ipvs.without_backends"] == "warn" and got["conntrack.insert_failed"] == "warn"
    assert got["virtualization.kernel"] == "ok" and got["ipvs.modules"] == "ok"
    # only what this tree has no source for is skipped, each with the reason
    assert {k for k, s in got.items() if s == "skip"} == {
        "overlay.mtu",
        "overlay.drops",
        "fsync.p99",
        "bgp.peers",
        "ebpf.softirq_wait",
    }


def test_the_families_kept_are_the_families_the_checks_read():
    source = (ROOT / "exporter" / "field_guide.py").read_text()
    read = {
        re.sub(r"_(total|bucket|sum)$", "", name) for name in re.findall(r'"(netstack_[a-z0-9_]+)"', source)
    }
    assert read - {"netstack_check_fsync_p99_seconds"} == field_guide.FAMILIES  # that one is check's own


def test_history_keeps_one_reading_older_than_the_window(tmp_path):
    tree = HostTree(tmp_path / "host")
    history = collect_twice(tree, tree.tick, window=0.1, readings=4)
    assert len(history._readings) == 2
    (then, *_), (now, *_) = history._readings
    assert now - then >= 0.1 and now <= time.monotonic()


def test_collections_closer_than_a_sixth_of_the_window_are_not_reduced(tmp_path):
    """Each collection reduced would cost a scrape as much again: the ones in between are kept
    only as the latest, which the verdicts read (the tick's steal shows in them)."""
    tree = HostTree(tmp_path / "host")
    tree.healthy()
    history = collect_twice(tree, lambda: tree.tick(seconds=0.15, steal={1: 0.8}), readings=3)
    assert len(history._readings) == 1
    assert {v.check: v.status for v in history.verdicts()}["cpu.steal_per_cpu"] == "warn"


def test_no_collection_yet():
    assert VerdictHistory([]).verdicts() == []
    assert "no collection yet" in _verdict_rows([])


def test_rows_put_the_worst_first_and_escape():
    V = field_guide.Verdict
    rows = _verdict_rows(
        [
            V("a", "fine", "ok"),
            V("b", "<b>skipped</b>", "skip", value="x & y"),
            V("c", "warned", "warn", why="<script>", action="act"),
            V("d", "failed", "fail"),
        ]
    )
    order = re.findall(r'<tr class="verdict (\w+)">', rows)
    assert order == ["fail", "warn", "skip", "ok"]
    assert "&lt;b&gt;skipped&lt;/b&gt;" in rows and "x &amp; y" in rows and "&lt;script&gt;" in rows
    assert "<script>" not in rows
