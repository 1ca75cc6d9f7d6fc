"""`netstack-exporter check` against the real kernel: the whole report on this host in time and
valid against docs/check-schema.json; as uid 65534 with the checks it cannot do skipped and why;
an overlay MTU mismatch on a real vxlan device in network namespaces (rtnetlink); a BGP peer
going down between the two readings on real BIRD daemons (tests/bird.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

import pytest

from exporter import field_guide
from tests.bird import TwoNodes, config, mesh_name
from tests.check_trees import run_check, verdict
from tests.helpers import ROOT, Netns, need_root, need_tool, run
from tests.unit.test_check_schema import errors as schema_errors

CHECK = [sys.executable, "-m", "exporter", "check"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ALL_CHECKS = {c.id for c in field_guide.CHECKS} | {"collectors"}


def check_process(
    *args: str, netns: Netns | None = None, timeout: float = 60
) -> tuple[int, dict, str, float]:
    """The check as its own process: (exit status, JSON report, stderr, seconds it took)."""
    cmd = [*CHECK, "--output=json", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns.name, *cmd]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)
    took = time.monotonic() - started
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout), out.stderr, took


# --- the real host -----------------------------------------------------------------------------


def test_real_host_gives_a_complete_valid_report_in_time(tmp_path):
    status, report, _, took = check_process(
        "--check.duration=2s", f"--check.fsync-dir={tmp_path}", "--check.fsync-size=1m"
    )
    assert took < 2 + 5, f"took {took:.1f} s"
    assert {c["check"] for c in report["checks"]} == ALL_CHECKS
    assert schema_errors(report) == []
    assert status == report["exit_status"] == (1 if report["summary"]["fail"] else 0)
    assert 2 <= report["interval_seconds"] < 4
    assert all(c["value"] for c in report["checks"] if c["status"] == "skip")
    # this host's own sources were read, not skipped
    for always_here in ("cpu.steal_node", "softnet.squeezes", "conntrack.fill", "fsync.p99"):
        assert verdict(report, always_here)["status"] != "skip", verdict(report, always_here)
    assert report["fsync_probe"]["path"] == str(tmp_path) and report["fsync_probe"]["syncs"] > 0
    assert os.listdir(tmp_path) == [], "the probe left something behind"


def test_table_output_of_the_real_host():
    out = subprocess.run(
        [*CHECK, "--check.duration=1s", "--no-collector.fsync"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr
    assert "\033[" not in out.stdout  # not a terminal
    assert out.stdout.splitlines()[0].split()[0] in ("OK", "WARN", "FAIL", "SKIP")


def test_bad_usage_exits_2_with_one_line():
    out = subprocess.run(
        [*CHECK, "--check.duration=never"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("netstack-exporter: error: --check.duration")


# --- without privileges ------------------------------------------------------------------------


def _imported_packages() -> list[str]:
    """Top-level packages outside the standard library that `check` imports with every collector
    on (asked of a child process, so this test's own imports do not count)."""
    script = (
        "import io, sys, sysconfig\n"
        "from exporter.main import main\n"
        "main(['check', '--check.duration=100ms', '--collector.ebpf_softirq', '--collector.ebpf_drops',"
        " '--no-collector.fsync'])\n"
        "std = sysconfig.get_paths()['stdlib']\n"
        "names = {m.split('.')[0] for m, mod in list(sys.modules.items())"
        " if (getattr(mod, '__file__', None) or std).startswith(std) is False}\n"
        "print(' '.join(sorted(names)), file=sys.stderr)\n"
    )
    out = run([sys.executable, "-c", script], env=ENV, cwd=ROOT, check=False)
    return out.stderr.split("\n")[-2].split()


@contextlib.contextmanager
def code_readable_by_anyone():
    """The exporter and what it imports in a directory uid 65534 can read (the checkout and the
    venv may sit below a directory only root may enter)."""
    dest = tempfile.mkdtemp(prefix="nse-check-code-")
    try:
        os.chmod(dest, 0o755)
        roots = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        for name in _imported_packages():
            for root in roots:
                source = os.path.join(root, name)
                if os.path.isdir(source):
                    shutil.copytree(
                        source,
                        os.path.join(dest, name),
                        ignore=shutil.ignore_patterns("__pycache__"),
                        symlinks=False,
                    )
                    break
                if os.path.isfile(source + ".py"):
                    shutil.copy(source + ".py", dest)
                    break
        for dirpath, dirnames, filenames in os.walk(dest):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)


UNPRIVILEGED = (
    "import sys; sys.path.insert(0, sys.argv[1]); from exporter.main import main; "
    "sys.exit(main(['check', *sys.argv[2:]]))"
)


@pytest.mark.root
def test_runs_as_nobody_with_what_it_cannot_do_skipped(tmp_path):
    need_root()
    setpriv = need_tool("setpriv", "util-linux")
    root_only = tmp_path / "root-only"  # a probe directory uid 65534 may not write
    root_only.mkdir(mode=0o755)
    with code_readable_by_anyone() as code:
        started = time.monotonic()
        out = run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                sys.executable,
                "-c",
                UNPRIVILEGED,
                code,
                "--output=json",
                "--check.duration=1s",
                f"--check.fsync-dir={root_only}",
                "--collector.ebpf_softirq",
            ],
            check=False,
            cwd="/",
            env={"PATH": os.environ["PATH"]},
        )
        took = time.monotonic() - started
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert schema_errors(report) == [] and took < 1 + 5
    assert {c["check"] for c in report["checks"]} == ALL_CHECKS
    fsync = verdict(report, "fsync.p99")
    assert fsync["status"] == "skip" and "permission_denied" in fsync["value"], fsync
    ebpf = verdict(report, "ebpf.softirq_wait")
    assert ebpf["status"] == "skip" and ebpf["value"].startswith("ebpf_softirq: unavailable: "), ebpf
    # what needs no privilege still works
    for check_id in ("cpu.steal_node", "softnet.squeezes", "conntrack.fill"):
        assert verdict(report, check_id)["status"] != "skip", verdict(report, check_id)
    assert all(c["value"] for c in report["checks"] if c["status"] == "skip")
    assert os.listdir(root_only) == []


# --- overlay MTU mismatch (rtnetlink, real vxlan) ---------------------------------------------


@contextlib.contextmanager
def vxlan_hosts(dev: bool):
    """Namespaces a and b joined by a 1500-byte veth underlay (198.18.0.1 <-> 198.18.0.2), vxlan
    vx0 on a towards b; without dev the kernel leaves vx0 at 1500, 50 bytes too large."""
    with Netns("nse-check") as a, Netns("nse-check") as b:
        a.ip("link", "add", "ula", "type", "veth", "peer", "name", "ulb", "netns", b.name)
        a.ip("addr", "add", "198.18.0.1/24", "dev", "ula")
        b.ip("addr", "add", "198.18.0.2/24", "dev", "ulb")
        a.ip("link", "set", "ula", "up")
        b.ip("link", "set", "ulb", "up")
        args = [
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "remote",
            "198.18.0.2",
            "local",
            "198.18.0.1",
        ]
        a.ip(*args, *(["dev", "ula"] if dev else []))
        a.ip("link", "set", "vx0", "up")
        yield a


@pytest.mark.root
def test_overlay_mtu_mismatch_on_a_real_vxlan_device():
    need_tool("ip", "iproute2")
    overlay_only = ("--collector.disable-defaults", "--collector.overlay", "--check.duration=200ms")
    with vxlan_hosts(dev=False) as a:
        status, report, _, _ = check_process(*overlay_only, netns=a)
        mtu = verdict(report, "overlay.mtu")
        assert (mtu["status"], mtu["value"], mtu["details"]) == ("warn", "mismatch on vx0", ["vx0"])
        assert verdict(report, "overlay.drops")["status"] == "ok"
        assert status == 0
        assert check_process(*overlay_only, "--strict", netns=a)[0] == 1
    with vxlan_hosts(dev=True) as a:  # bound to the underlay: the kernel sizes vx0 to 1450
        status, report, _, _ = check_process(*overlay_only, "--strict", netns=a)
        assert verdict(report, "overlay.mtu")["status"] == "ok"
        assert verdict(report, "overlay.mtu")["value"] == "1 devices fit"
        assert status == 0


# --- BGP peer down (real BIRD) -----------------------------------------------------------------


@pytest.fixture
def mesh():
    """Node A on BIRD 1.6, node B on BIRD 2, one Established mesh session between them."""
    with TwoNodes() as nodes:
        a_peers = {mesh_name(nodes.B4): (nodes.B4, nodes.A4)}
        b_peers = {mesh_name(nodes.A4): (nodes.A4, nodes.B4)}
        nodes.bird_a = nodes.add(nodes.a, 1, config(1, nodes.A4, a_peers), "a")
        nodes.bird_b = nodes.add(nodes.b, 2, config(2, nodes.B4, b_peers), "b")
        nodes.bird_a.wait_for(mesh_name(nodes.B4), "Established")
        nodes.bird_b.wait_for(mesh_name(nodes.A4), "Established")
        yield nodes


@pytest.mark.root
def test_bgp_peer_going_down_between_the_readings(mesh):
    bgp_only = (
        "--collector.disable-defaults",
        "--collector.bgp",
        f"--collector.bgp.socket={mesh.bird_a.socket_path}",
    )
    status, report = run_check(None, *bgp_only, "--strict")
    peers = verdict(report, "bgp.peers")
    assert (peers["status"], peers["value"]) == ("ok", "1 Established") and status == 0

    status, report = run_check(
        None, *bgp_only, between=lambda: mesh.bird_a.birdc("disable", mesh_name(mesh.B4))
    )
    peers = verdict(report, "bgp.peers")
    assert peers["status"] == "warn"  # NetstackBGPPeerNotEstablished is a warning
    assert peers["value"] == "1 of 1 not Established" and peers["details"] == [f"{mesh.B4} (ipv4)"]
    assert status == 0
    assert run_check(None, *bgp_only, "--strict")[0] == 1  # still down


def test_ctrl_c_exits_130_and_leaves_nothing_behind(tmp_path):
    import signal

    # a child of a non-interactive shell may inherit SIGINT ignored: give it the default back
    proc = subprocess.Popen(
        [*CHECK, "--check.duration=30s", f"--check.fsync-dir={tmp_path}"],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 20
    while not os.listdir(tmp_path) and time.monotonic() < deadline:  # the probe has started
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and out == ""
    assert err == "netstack-exporter check: interrupted\n"
    assert os.listdir(tmp_path) == []
