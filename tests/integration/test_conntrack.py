"""The conntrack collector against the real kernel, through the real exporter process.

Every test owns a fresh network namespace: conntrack's count and statistics are per namespace,
so the kernel's own view (`conntrack -C`, `conntrack -S` run in the same namespace) is the
reference. nf_conntrack_max is one value for the whole host and read-only in a child namespace,
so "table full" means filling this namespace's table up to it (about 2 s for 262144 entries).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import Exporter, Netns, need, need_tool, samples, value
from tests.integration.test_conntrack_tools import (
    kernel_count,
    kernel_stats,
    run_tool,
    setup_namespace,
    track,
)

pytestmark = pytest.mark.root

BASE = ("--collector.disable-defaults", "--collector.conntrack")
HOST_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
# setpriv drops CAP_NET_ADMIN from the bounding set: root keeps everything else, so `ip netns
# exec` still works, but ctnetlink answers EPERM.
WITHOUT_NET_ADMIN = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")


@pytest.fixture
def ns():
    need_tool("conntrack", "conntrack")
    need_tool("nft", "nftables")
    need(HOST_MAX.exists(), "needs nf_conntrack (modprobe nf_conntrack)")
    with Netns("nsect") as ns:
        setup_namespace(ns)
        # unreplied UDP entries live 30 s by default; the tests must not race their expiry
        ns.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
        yield ns


def counter(metrics: dict, name: str) -> float:
    return value(metrics, f"netstack_conntrack_{name}_total")


def fill_to_max(ns: Netns, assured: bool) -> int:
    limit = int(HOST_MAX.read_text())
    # the fill is ~7 us per entry; refuse hosts where it would not be bounded
    need(limit <= 4_000_000, f"nf_conntrack_max={limit} is too big to fill in a test")
    missing = limit - kernel_count(ns)
    out = run_tool(ns, "fill", str(missing), *(["--assured"] if assured else []), timeout=120)
    assert out.strip() == "refused=0"
    assert kernel_count(ns) == limit
    return limit


def test_entries_match_the_kernel_count_and_by_state_adds_up(ns):
    assert run_tool(ns, "udp", "300", "--base-port", "20000").strip() == "refused=0"
    for sport in (41001, 41002):
        ns.exec(
            "conntrack",
            "-I",
            "-p",
            "tcp",
            "-s",
            "198.18.0.1",
            "-d",
            "198.18.0.2",
            "--sport",
            str(sport),
            "--dport",
            "443",
            "--state",
            "ESTABLISHED",
            "-t",
            "600",
            "-u",
            "ASSURED,SEEN_REPLY",
        )
    with ns.entered(), Exporter(*BASE, "--collector.conntrack.by-state", netns=ns) as exp:
        metrics = exp.scrape()
    kernel = kernel_count(ns)
    assert kernel == 302
    assert value(metrics, "netstack_conntrack_entries") == kernel
    assert value(metrics, "netstack_conntrack_source_info", source="netlink") == 1
    assert value(metrics, "netstack_conntrack_entries_limit") == int(HOST_MAX.read_text())
    assert value(metrics, "netstack_conntrack_buckets") == int(
        Path("/proc/sys/net/netfilter/nf_conntrack_buckets").read_text()
    )
    by_state = samples(metrics, "netstack_conntrack_entries_by_state")
    assert by_state == {
        ("netstack_conntrack_entries_by_state", (("protocol", "tcp"), ("state", "ESTABLISHED"))): 2,
        ("netstack_conntrack_entries_by_state", (("protocol", "udp"), ("state", "none"))): 300,
    }
    assert value(metrics, "netstack_scrape_collector_success", collector="conntrack") == 1


def test_full_table_of_unreplied_entries_counts_early_drops(ns):
    limit = fill_to_max(ns, assured=False)
    with ns.entered(), Exporter(*BASE, netns=ns) as exp:
        before, kernel_before = exp.scrape(), kernel_stats(ns)
        # each new tuple finds the table full and evicts unreplied entries to get in
        assert run_tool(ns, "udp", "40", "--base-port", "30000").strip() == "refused=0"
        after, kernel_after = exp.scrape(), kernel_stats(ns)
    early = counter(after, "early_drop") - counter(before, "early_drop")
    assert early == kernel_after["early_drop"] - kernel_before["early_drop"]
    assert early >= 40  # one eviction per packet at least (a bucket may hold several)
    assert counter(after, "drop") == counter(before, "drop")
    assert value(after, "netstack_conntrack_entries") == kernel_count(ns) <= limit


def test_full_table_of_assured_entries_counts_drops_per_cpu(ns):
    fill_to_max(ns, assured=True)
    with ns.entered(), Exporter(*BASE, "--collector.conntrack.per-cpu", netns=ns) as exp:
        before, kernel_before = exp.scrape(), kernel_stats(ns)
        # nothing can be evicted: every new tuple is dropped (sendto sees EPERM)
        assert run_tool(ns, "udp", "40", "--base-port", "31000").strip() == "refused=40"
        after, kernel_after = exp.scrape(), kernel_stats(ns)

    def total(metrics, name):
        per_cpu = samples(metrics, f"netstack_conntrack_{name}_total")
        assert len(per_cpu) == os.cpu_count() and all(dict(k[1]).get("cpu") for k in per_cpu)
        return sum(per_cpu.values())

    assert total(after, "drop") - total(before, "drop") == 40
    assert kernel_after["drop"] - kernel_before["drop"] == 40
    assert total(after, "early_drop") == total(before, "early_drop")


def test_racing_identical_tcp_syns_on_two_cpus_count_insert_failed(ns):
    need((os.cpu_count() or 1) >= 2, "needs two CPUs")
    # More rules between conntrack and confirmation widen the race window (see setup_namespace).
    track(ns, widen_rules=300)
    with ns.entered(), Exporter(*BASE, netns=ns) as exp:
        before, kernel_before = exp.scrape(), kernel_stats(ns)
        for attempt in range(10):  # bounded: each round of 500 SYN pairs takes < 1 s
            run_tool(ns, "synrace", "500", "--base-port", str(10000 + attempt * 500), timeout=60)
            if kernel_stats(ns)["insert_failed"] > kernel_before["insert_failed"]:
                break
        after, kernel_after = exp.scrape(), kernel_stats(ns)
    failed = counter(after, "insert_failed") - counter(before, "insert_failed")
    assert failed > 0, "no insert race in 10 rounds of 500 SYN pairs"
    assert failed == kernel_after["insert_failed"] - kernel_before["insert_failed"]
    # the kernel also counts each loser as a dropped packet
    assert counter(after, "drop") - counter(before, "drop") == failed


def test_without_cap_net_admin_it_falls_back_to_procfs(ns):
    need_tool("setpriv", "util-linux")
    need(Path("/proc/net/stat/nf_conntrack").exists(), "needs CONFIG_NF_CONNTRACK_PROCFS")
    assert run_tool(ns, "udp", "25", "--base-port", "20000").strip() == "refused=0"
    exp = Exporter(*BASE, netns=ns)
    exp.args = [*WITHOUT_NET_ADMIN, *exp.args]
    with ns.entered(), exp:
        metrics = exp.scrape()
        log = exp.log()
    assert value(metrics, "netstack_conntrack_source_info", source="procfs") == 1
    assert value(metrics, "netstack_conntrack_entries") == kernel_count(ns) == 25
    kernel = kernel_stats(ns)
    for name in ("insert_failed", "drop", "early_drop", "invalid"):
        assert counter(metrics, name) == kernel[name]
    assert value(metrics, "netstack_scrape_collector_success", collector="conntrack") == 1
    assert log.count("served from procfs") == 1 and "needs CAP_NET_ADMIN" in log
    assert "Traceback" not in log


def test_neither_source_makes_the_collector_unavailable_with_a_reason(ns):
    need_tool("setpriv", "util-linux")
    with tempfile.TemporaryDirectory() as empty:
        exp = Exporter(*BASE, f"--path.procfs={empty}", netns=ns)
        exp.args = [*WITHOUT_NET_ADMIN, *exp.args]
        with ns.entered(), exp:
            metrics = exp.scrape()
            with exp.get("/") as r:
                page = r.read().decode()
            log = exp.log()
    assert value(metrics, "netstack_collector_available", collector="conntrack") == 0
    assert not samples(metrics, "netstack_conntrack_entries")
    reason = "nf_conntrack is not loaded"
    assert reason in page
    assert log.count(reason) == 1 and "Traceback" not in log
