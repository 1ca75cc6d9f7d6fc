"""`netstack-exporter check` on fixture host trees (tests/check_trees.py): one tree per failure
mode, changed between the two readings through check.main's `between` seam, each asserting its
verdict, the measured value and the exit status (0, 1, and 1 with --strict for warnings). The
slow disk is os.fdatasync with an injected delay (check.main's `datasync` seam)."""

from __future__ import annotations

import io
import os
import re
import time

import pytest

from exporter import check, field_guide
from tests.check_trees import DURATION, HostTree, run_check, verdict


@pytest.fixture
def tree(tmp_path) -> HostTree:
    t = HostTree(tmp_path / "host")
    t.healthy()
    return t


def number(text: str) -> float:
    """The last number in a verdict's value: 'worst cpu 3: 85.7%' -> 85.7."""
    return float(re.findall(r"[-\d.]+", text)[-1])


def per_second(amount: float, report: dict):
    """`amount` over the report's interval, as the check computes it (the interval is printed
    to the millisecond)."""
    return pytest.approx(amount / report["interval_seconds"], rel=5e-3, abs=0.01)


def statuses(report: dict) -> dict[str, str]:
    return {c["check"]: c["status"] for c in report["checks"]}


def test_healthy_tree_is_all_ok_and_skips_say_why(tree, tmp_path):
    status, report = run_check(
        tree,
        f"--check.fsync-dir={tmp_path}",
        "--check.fsync-size=46000",
        "--strict",
        between=tree.quiet_interval,
        datasync=lambda fd: None,
    )
    assert status == 0
    got = statuses(report)
    assert set(got) == {c.id for c in field_guide.CHECKS} | {"collectors"}, "a check is missing"
    skipped = {c["check"]: c["value"] for c in report["checks"] if c["status"] == "skip"}
    # the sources this tree does not have: rtnetlink devices, BIRD, eBPF
    assert set(skipped) == {"overlay.mtu", "overlay.drops", "bgp.peers", "ebpf.softirq_wait"}
    assert skipped["overlay.mtu"] == "overlay: collector overlay not enabled"
    assert skipped["ebpf.softirq_wait"] == "ebpf_softirq: collector ebpf_softirq not enabled"
    assert all(v == "ok" for k, v in got.items() if k not in skipped), got
    assert verdict(report, "conntrack.fill")["value"] == "0.2% (500 of 262144)"
    assert verdict(report, "ipvs.mode")["value"] == "IPVS, 8 virtual services"
    # tests/fixtures/host is a KVM guest that can load modules
    assert verdict(report, "virtualization.kernel")["value"] == "kvm (guest)"
    assert report["fsync_probe"]["syncs"] == 20 and report["summary"]["fail"] == 0
    assert check.CHECK_SUBDIR not in os.listdir(tmp_path), "the probe left its directory behind"


def test_steal_on_one_vcpu(tree):
    status, report = run_check(tree, between=lambda: tree.tick(steal={3: 0.9}))
    per_cpu, node = verdict(report, "cpu.steal_per_cpu"), verdict(report, "cpu.steal_node")
    stolen = 0.9 * DURATION * 100  # percent-seconds on CPU 3
    assert per_cpu["status"] == "warn" and per_cpu["value"].startswith("worst cpu 3: ")
    assert number(per_cpu["value"]) == per_second(stolen, report)
    assert per_cpu["details"] == [per_cpu["value"].removeprefix("worst ")]
    assert node["status"] == "warn" and number(node["value"]) == per_second(stolen / 3, report)
    assert per_cpu["why"] and per_cpu["action"]
    assert status == 0  # warnings only
    assert run_check(tree, "--strict", between=lambda: tree.tick(steal={3: 0.9}))[0] == 1


def test_steal_spread_over_the_node(tree):
    # 24 % on every vCPU: no single CPU over 25 %, the node over 10 %
    status, report = run_check(tree, "--strict", between=lambda: tree.tick(steal={0: 0.24, 1: 0.24, 3: 0.24}))
    assert verdict(report, "cpu.steal_per_cpu")["status"] == "ok"
    assert verdict(report, "cpu.steal_node")["status"] == "warn"
    assert status == 1


def test_softirq_share(tree):
    status, report = run_check(tree, between=lambda: tree.tick(softirq={1: 0.7}, user=0.1))
    share = verdict(report, "softirq.share")
    assert (
        share["status"] == "warn" and share["value"] == "worst cpu 1: 70.0% (all softirq vectors, /proc/stat)"
    )
    assert status == 0


def test_softirq_share_is_net_rx_own_where_ebpf_times_it_per_cpu():
    """With the eBPF softirq collector's per-CPU service time, the share is NET_RX's alone: a CPU
    busy with NET_TX (or timers) is not taken for a NET_RX one."""

    def cpu(softirq: float, idle: float):
        return [
            ({"cpu": c, "mode": m}, v) for c in ("0", "1") for m, v in (("softirq", softirq), ("idle", idle))
        ]

    def service(net_rx_cpu1: float):
        return [
            ({"vector": "NET_RX", "cpu": "0"}, 0.0),
            ({"vector": "NET_RX", "cpu": "1"}, net_rx_cpu1),
            ({"vector": "NET_TX", "cpu": "0"}, 0.0),
        ]

    def share(service_after: float):
        readings = field_guide.Readings(
            {"netstack_cpu_seconds_total": cpu(0, 0), "netstack_softirq_service_seconds_sum": service(0)},
            {
                "netstack_cpu_seconds_total": cpu(6, 4),
                "netstack_softirq_service_seconds_sum": service(service_after),
            },
            10.0,
            {"cpu": "", "ebpf_softirq": ""},
        )
        (v,) = [v for v in field_guide.evaluate(readings) if v.check == "softirq.share"]
        return v.status, v.value

    # 60 % of both CPUs in softirqs, of which NET_RX on CPU 1 is 0.5 s of 10 s: 5 %
    assert share(0.5) == ("ok", "worst cpu 1: 5.0% (NET_RX, eBPF)")
    assert share(7.0) == ("warn", "worst cpu 1: 70.0% (NET_RX, eBPF)")


def test_squeezes_and_backlog_drops(tree):
    def between():
        tree.quiet_interval()
        tree.softnet(1, processed=90000, dropped=50, squeezed=30)

    status, report = run_check(tree, between=between)
    drops, squeezes = verdict(report, "softnet.backlog_drops"), verdict(report, "softnet.squeezes")
    assert drops["status"] == "warn" and drops["value"].startswith("worst cpu 1: ")
    assert number(drops["value"]) == per_second(50, report)
    assert squeezes["status"] == "warn" and number(squeezes["value"]) == per_second(30, report)
    assert status == 0
    assert run_check(tree, "--strict", between=between)[0] == 1


def test_one_squeeze_a_second_is_not_yet_a_squeeze_problem(tree):
    # the rule fires above 1/s: one squeeze in a second is normal
    _, report = run_check(tree, duration=1.0, between=lambda: tree.softnet(0, squeezed=1))
    assert verdict(report, "softnet.squeezes")["status"] == "ok"


def test_conntrack_near_full(tree):
    status, report = run_check(tree, between=lambda: tree.conntrack(entries=247000))
    fill = verdict(report, "conntrack.fill")
    assert fill["status"] == "warn" and fill["value"] == "94.2% (247000 of 262144)"
    assert verdict(report, "conntrack.drops")["status"] == "ok"
    assert status == 0
    assert run_check(tree, "--strict")[0] == 1  # still 94 %


def test_insert_failures_are_the_race_not_a_full_table(tree):
    # The kernel counts every insert_failed packet in drop too (nf_conntrack_confirm): a race on
    # CPU 1 moves both counters by the same amount, and the table is not full.
    status, report = run_check(tree, between=lambda: tree.conntrack(cpu=1, insert_failed=12, drop=12))
    failed, drops = verdict(report, "conntrack.insert_failed"), verdict(report, "conntrack.drops")
    assert failed["status"] == "warn"
    assert number(failed["value"]) == per_second(12, report)
    assert drops["status"] == "ok" and drops["value"] == "0.00/s"
    assert status == 0, "a race must not fail the check"


def test_drops_of_a_full_table_fail(tree):
    def between():
        tree.conntrack(entries=262144, cpu=2, drop=30, early_drop=10, insert_failed=5)

    status, report = run_check(tree, between=between)
    drops = verdict(report, "conntrack.drops")
    assert drops["status"] == "fail"  # the rule is critical
    # (30 - 5) + 10 per interval
    assert number(drops["value"]) == per_second(35, report)
    assert verdict(report, "conntrack.fill")["status"] == "warn"
    assert status == 1  # a failure exits 1 without --strict


def test_ipvs_black_hole(tree):
    # kube-proxy in IPVS mode (ip_vs in /proc/modules); the Service's endpoints disappear
    status, report = run_check(tree, between=lambda: tree.ipvs_drop_backends("TCP  0A600001:01BB"))
    hole = verdict(report, "ipvs.without_backends")
    assert hole["status"] == "warn" and hole["value"] == "1 of 8 virtual services"
    assert verdict(report, "ipvs.mode")["value"] == "IPVS, 8 virtual services"
    assert verdict(report, "ipvs.modules")["status"] == "ok"
    assert status == 0
    status, _ = run_check(tree, "--strict")  # the table stays without backends
    assert status == 1


def test_ipvs_sysctl_reset_behind_kube_proxys_back(tree):
    (tree.proc / "sys" / "net" / "ipv4" / "vs" / "conntrack").write_text("0\n")
    status, report = run_check(tree)
    sysctls = verdict(report, "ipvs.sysctls")
    assert (sysctls["status"], sysctls["value"]) == ("warn", "net.ipv4.vs.conntrack=0")
    assert sysctls["threshold"] == "net.ipv4.vs.conntrack=1, net.ipv4.vs.expire_nodest_conn=1"
    assert status == 0


def test_iptables_mode_needs_no_ipvs_modules(tree):
    # no ip_vs loaded and no table: not IPVS mode, nothing to do
    (tree.proc / "net" / "ip_vs").unlink()
    (tree.proc / "net" / "ip_vs_stats").unlink()
    modules = tree.proc / "modules"
    modules.write_text(
        "".join(line + "\n" for line in modules.read_text().splitlines() if not line.startswith("ip_vs"))
    )
    status, report = run_check(tree, "--strict")
    mode = verdict(report, "ipvs.mode")
    assert (mode["status"], mode["value"]) == ("ok", "iptables or nftables mode (no IPVS table)")
    assert verdict(report, "ipvs.modules")["status"] == "ok"
    assert verdict(report, "ipvs.sysctls")["value"] == "not needed: no IPVS in use"
    hole = verdict(report, "ipvs.without_backends")
    assert hole["status"] == "skip" and "IPVS not available" in hole["value"]
    assert status == 0


def test_slow_fsync(tree, tmp_path):
    def slow_disk(fd: int) -> None:
        os.fdatasync(fd)
        time.sleep(0.015)

    status, report = run_check(
        tree, f"--check.fsync-dir={tmp_path}", "--check.fsync-size=46000", datasync=slow_disk
    )
    p99 = verdict(report, "fsync.p99")
    assert p99["status"] == "warn" and p99["value"].endswith(f"ms on {tmp_path}")
    assert number(p99["value"].removesuffix(f" ms on {tmp_path}")) >= 15
    assert p99["threshold"] == "> 10 ms"
    assert report["fsync_probe"]["syncs"] == 20 and report["fsync_probe"]["p99"] >= 0.015
    assert status == 0
    assert check.CHECK_SUBDIR not in os.listdir(tmp_path)
    status, _ = run_check(
        tree, f"--check.fsync-dir={tmp_path}", "--check.fsync-size=46000", "--strict", datasync=slow_disk
    )
    assert status == 1


def test_fsync_directory_missing_is_a_skip_with_the_reason(tree, tmp_path):
    status, report = run_check(tree, f"--check.fsync-dir={tmp_path / 'absent'}", "--strict")
    p99 = verdict(report, "fsync.p99")
    assert p99["status"] == "skip"
    assert p99["value"] == (
        f"fsync: unavailable: {tmp_path / 'absent'}: missing_directory (No such file or directory)"
    )
    assert verdict(report, "collectors")["status"] == "ok"  # nothing to measure is not a failure
    assert status == 0


def test_a_disk_that_refuses_writes_is_a_failing_probe(tree, tmp_path):
    def broken_disk(fd: int) -> None:
        raise OSError(5, "Input/output error")

    _, report = run_check(
        tree, f"--check.fsync-dir={tmp_path}", "--check.fsync-size=46000", datasync=broken_disk
    )
    assert verdict(report, "fsync.p99")["status"] == "skip"
    collectors = verdict(report, "collectors")
    assert collectors["status"] == "warn"
    assert f"fsync: failing: {tmp_path}: io_error (Input/output error)" in collectors["details"]
    assert check.CHECK_SUBDIR not in os.listdir(tmp_path)


def test_shared_kernel_container(tree):
    tree.openvz_container()
    status, report = run_check(tree)
    v = verdict(report, "virtualization.kernel")
    assert v["status"] == "warn" and v["value"] == "openvz (container): shared kernel"
    assert status == 0 and run_check(tree, "--strict")[0] == 1


def test_modules_that_cannot_load_say_why_and_what_to_do(tree):
    (tree.proc / "sys" / "kernel" / "modules_disabled").write_text("1\n")
    status, report = run_check(tree)
    v = verdict(report, "virtualization.kernel")
    assert v["status"] == "warn" and v["value"].endswith(", modules cannot be loaded: modules_disabled")
    assert v["details"] == [field_guide.MODULES_ADVICE["modules_disabled"]]
    assert "modules-load.d" in v["details"][0]
    assert status == 0 and run_check(tree, "--strict")[0] == 1


def test_failing_collector_is_reported_not_hidden(tree):
    (tree.proc / "net" / "softnet_stat").write_text("garbage\n")
    status, report = run_check(tree)
    assert verdict(report, "softnet.squeezes")["status"] == "skip"
    assert verdict(report, "softnet.squeezes")["value"].startswith("softirq: failing: ")
    collectors = verdict(report, "collectors")
    assert collectors["status"] == "warn" and "failing: softirq" in collectors["value"]
    assert status == 0


# --- output and usage -------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_table_is_coloured_only_on_a_terminal(tree):
    tree.openvz_container()
    plain, tty = io.StringIO(), Terminal()
    assert check.main([*tree.args(), "--check.duration=100ms"], environ={}, out=plain) == 0
    assert check.main([*tree.args(), "--check.duration=100ms"], environ={}, out=tty) == 0
    assert "\033[" not in plain.getvalue()
    assert "\033[33mWARN\033[0m" in tty.getvalue()
    lines = plain.getvalue().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("WARN  Own kernel"))
    assert lines[row + 1].startswith("      why: ") and lines[row + 2].startswith("      do:  ")
    assert re.fullmatch(r"\d+ ok, 1 warn, 0 fail, \d+ skip", lines[-1])
    no_colour = Terminal()
    check.main([*tree.args(), "--check.duration=100ms"], environ={"NO_COLOR": "1"}, out=no_colour)
    assert "\033[" not in no_colour.getvalue()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--check.duration=soon"], "--check.duration: invalid duration 'soon'"),
        (["--check.duration=0"], "--check.duration"),
        (["--check.fsync-size=22q"], "--check.fsync-size: invalid size '22q'"),
        (["--output=xml"], "--output"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        check.main(args, environ={}, out=io.StringIO())
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netstack-exporter: error: ") and message in err


def test_exit_status():
    ok, warn, fail = (field_guide.Verdict("x", "x", s) for s in ("ok", "warn", "fail"))
    assert check.exit_status([ok, warn], strict=False) == 0
    assert check.exit_status([ok, warn], strict=True) == 1
    assert check.exit_status([ok, fail], strict=False) == 1
    assert check.exit_status([ok], strict=True) == 0


def test_softirq_wait_p99_from_the_ebpf_histogram():
    # Two readings of the eBPF collector's cumulative buckets, as the exporter exposes them; the
    # p99 is interpolated in its bucket as Prometheus' histogram_quantile does.
    def buckets(*counts: int) -> list:
        bounds = ("0.0001", "0.001", "0.004", "+Inf")
        return [
            ({"vector": vector, "le": le}, n * (1 if vector == "NET_RX" else 7))
            for vector in ("NET_RX", "NET_TX")
            for le, n in zip(bounds, counts)
        ]

    readings = field_guide.Readings(
        {"netstack_softirq_wait_seconds_bucket": buckets(0, 0, 0, 0)},
        {"netstack_softirq_wait_seconds_bucket": buckets(900, 950, 1000, 1000)},
        10.0,
        {"ebpf_softirq": ""},
    )
    (wait,) = [v for v in field_guide.evaluate(readings) if v.check == "ebpf.softirq_wait"]
    # rank 990 of 1000 lies in (1 ms, 4 ms]: 1 ms + 3 ms x (990 - 950) / 50
    assert (wait.status, wait.value, wait.threshold) == ("warn", "3400 µs", "> 1000 µs")
    quiet = field_guide.Readings(readings.before, readings.before, 10.0, {"ebpf_softirq": ""})
    (wait,) = [v for v in field_guide.evaluate(quiet) if v.check == "ebpf.softirq_wait"]
    assert (wait.status, wait.value) == ("skip", "no NET_RX softirqs between the two readings")
