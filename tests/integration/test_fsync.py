"""fsync collector against the real kernel: real fdatasync on temp directories, a full tmpfs, a
read-only bind mount, a removed directory, a non-root user, and a stuck disk (injected writer)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from collectors.fsync import PROBE_FILE, REASONS, FsyncCollector
from exporter.contract import Context, Paths
from tests.helpers import (
    ROOT,
    Exporter,
    collector_metrics,
    need_root,
    need_tool,
    parse_metrics,
    run,
    samples,
    value,
)

WRITES = 20
BLOCK = 2300


def make(dirs, datasync=os.fdatasync, **options) -> FsyncCollector:
    opts = {
        "directory": [str(d) for d in dirs],
        "interval": 0.1,
        "writes": WRITES,
        "block-size": BLOCK,
        "timeout": 10.0,
        **options,
    }
    c = FsyncCollector(Context(Paths(), opts), datasync=datasync)
    c.probe()
    return c


def scrape(c: FsyncCollector) -> dict:
    return collector_metrics(c)


def succeeded(m: dict, path=None) -> bool:
    """A probe has succeeded (until one has, the timestamp is the collector's start)."""
    labels = {} if path is None else {"path": str(path)}
    return any(samples(m, "netstack_fsync_probe_quantile_seconds", **labels).values())


def errors(m: dict, path) -> dict[str, float]:
    found = samples(m, "netstack_fsync_probe_errors_total", path=str(path))
    return {dict(k[1])["reason"]: v for k, v in found.items()}


def wait_for(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def running(c: FsyncCollector):
    c.start()
    try:
        yield c
    finally:
        c.close()


@contextlib.contextmanager
def mounted(target: Path, *mount_args: str):
    need_root()
    need_tool("mount", "mount")
    run(["mount", *mount_args, str(target)])
    try:
        yield target
    finally:
        run(["umount", "-l", str(target)], check=False)


def own_mount_labels(path: Path) -> tuple[str, str]:
    """device and fstype of path straight from `findmnt` and sysfs, to cross-check ours."""
    out = run(
        [need_tool("findmnt", "util-linux"), "-n", "-o", "MAJ:MIN,FSTYPE,SOURCE", "-T", str(path)]
    ).stdout.split()
    majmin, fstype, source = out[0], out[1], out[2]
    uevent = Path(f"/sys/dev/block/{majmin}/uevent")
    if uevent.exists():
        source = dict(kv.split("=", 1) for kv in uevent.read_text().split())["DEVNAME"]
    return source, fstype


# --- real probes ------------------------------------------------------------------------------


def test_real_probes_count_every_fdatasync_and_reuse_one_file(tmp_path):
    probe_file = tmp_path / PROBE_FILE
    inodes = set()
    c = make([tmp_path])
    with running(c):

        def three_probes():
            if probe_file.exists():
                inodes.add(probe_file.stat().st_ino)
            m = scrape(c)
            return (
                m
                if value(m, "netstack_fsync_duration_seconds_count", path=str(tmp_path)) >= 3 * WRITES
                else None
            )

        m = wait_for(three_probes, what="three probes")
        assert probe_file.stat().st_size == WRITES * BLOCK  # disk use bounded and constant
        assert os.listdir(tmp_path) == [PROBE_FILE]
    assert not probe_file.exists(), "close() removes the probe file"
    assert len(inodes) == 1, "the same file is reused by every probe"

    path = str(tmp_path)
    count = value(m, "netstack_fsync_duration_seconds_count", path=path)
    assert count % WRITES == 0, "histogram count is writes x completed probes"
    assert value(m, "netstack_fsync_written_bytes_total", path=path) == count * BLOCK
    assert value(m, "netstack_fsync_duration_seconds_bucket", path=path, le="+Inf") == count
    assert value(m, "netstack_fsync_duration_seconds_sum", path=path) > 0
    q = [
        value(m, "netstack_fsync_probe_quantile_seconds", path=path, q=x) for x in ("0.5", "0.9", "0.99", "1")
    ]
    assert 0 < q[0] <= q[1] <= q[2] <= q[3]
    assert abs(value(m, "netstack_fsync_probe_last_success_timestamp_seconds", path=path) - time.time()) < 30
    assert set(errors(m, path).values()) == {0.0}
    labels = dict(next(iter(samples(m, "netstack_fsync_duration_seconds_count", path=path)))[1])
    assert (labels["device"], labels["fstype"]) == own_mount_labels(tmp_path)


def test_leftover_probe_file_from_a_crash_is_reused(tmp_path):
    leftover = tmp_path / PROBE_FILE
    leftover.write_bytes(b"x" * 5000)  # a crashed run with another block size
    inode = leftover.stat().st_ino
    c = make([tmp_path])
    with running(c):
        wait_for(
            lambda: value(scrape(c), "netstack_fsync_duration_seconds_count", path=str(tmp_path)) >= WRITES
        )
        assert leftover.stat().st_ino == inode and leftover.stat().st_size == WRITES * BLOCK
        assert os.listdir(tmp_path) == [PROBE_FILE]


def test_directory_is_created_when_absent(tmp_path):
    target = tmp_path / "a" / "b"
    c = make([target])
    with running(c):
        wait_for(
            lambda: value(scrape(c), "netstack_fsync_duration_seconds_count", path=str(target)) >= WRITES
        )
    assert target.is_dir() and not (target / PROBE_FILE).exists()


def test_directories_are_probed_one_at_a_time(tmp_path):
    # Two directories on one disk must not disturb each other's numbers.
    active, peak, lock = [0], [0], threading.Lock()

    def counting_datasync(fd):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.001)
            os.fdatasync(fd)
        finally:
            with lock:
                active[0] -= 1

    dirs = [tmp_path / "a", tmp_path / "b"]
    c = make(dirs, datasync=counting_datasync, interval=0.01)
    with running(c):
        wait_for(
            lambda: all(
                value(scrape(c), "netstack_fsync_duration_seconds_count", path=str(d)) >= 3 * WRITES
                for d in dirs
            ),
            what="three probes each",
        )
    assert peak[0] == 1


# --- failures: each gives its reason, the other directory keeps being probed -------------------


def _assert_reason_and_neighbour_ok(c, bad, good, reason, succeeded_before=False):
    m = wait_for(
        lambda: (
            lambda m: (
                m
                if errors(m, bad)[reason] >= 2
                and value(m, "netstack_fsync_duration_seconds_count", path=str(good)) >= 2 * WRITES
                else None
            )
        )(scrape(c)),
        what=f"reason={reason}",
    )
    others = {r: v for r, v in errors(m, bad).items() if r != reason}
    assert set(others.values()) == {0.0}, others
    if not succeeded_before:
        assert not succeeded(m, bad)
    assert set(errors(m, good).values()) == {0.0}
    return m


def test_enospc_on_a_full_tmpfs(tmp_path, caplog):
    small, good = tmp_path / "small", tmp_path / "good"
    small.mkdir(), good.mkdir()
    with mounted(small, "-t", "tmpfs", "-o", "size=16k", "tmpfs"):
        c = make([small, good])
        with caplog.at_level("INFO", logger="netstack.fsync"), running(c):
            m = _assert_reason_and_neighbour_ok(c, small, good, "no_space")
        labels = dict(next(iter(samples(m, "netstack_fsync_duration_seconds_count", path=str(small))))[1])
        assert labels["fstype"] == "tmpfs"
        failed = [r for r in caplog.records if r.getMessage() == "fsync probe failed"]
        assert len(failed) == 1, "one log line per state change, not one per probe"
        assert failed[0].kv["reason"] == "no_space" and "ENOSPC" in failed[0].kv["detail"]
        assert not (small / PROBE_FILE).exists()


def test_a_disk_that_fills_after_the_start_fails_the_probe_and_recovers(tmp_path):
    """The probe's file is allocated once, so its writes succeed on a full disk (as etcd's do into
    its current WAL segment); the free-space check makes the probe fail as etcd would at its next
    segment, and succeed again once room is made."""
    disk, good = tmp_path / "disk", tmp_path / "good"
    disk.mkdir(), good.mkdir()
    with mounted(disk, "-t", "tmpfs", "-o", "size=512k", "tmpfs"):
        c = make([disk, good])
        with running(c):
            wait_for(lambda: succeeded(scrape(c), disk) or None, what="a first good probe")
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):  # ENOSPC: every block taken
                while True:
                    os.write(fd, b"\0" * 4096)
            os.close(fd)
            m = wait_for(
                lambda: (lambda m: m if errors(m, disk)["no_space"] >= 1 else None)(scrape(c)),
                what="no_space",
            )
            assert set(errors(m, good).values()) == {0.0}
            filler.unlink()
            before = value(scrape(c), "netstack_fsync_duration_seconds_count", path=str(disk))
            wait_for(
                lambda: (
                    value(scrape(c), "netstack_fsync_duration_seconds_count", path=str(disk)) > before or None
                ),
                what="probes succeeding again",
            )


def test_read_only_bind_mount(tmp_path):
    ro, good = tmp_path / "ro", tmp_path / "good"
    ro.mkdir(), good.mkdir()
    (ro / PROBE_FILE).write_bytes(b"")  # even an existing probe file cannot be opened for writing
    with mounted(ro, "--bind", str(ro)):
        run(["mount", "-o", "remount,bind,ro", str(ro)])
        c = make([ro, good])
        with running(c):
            _assert_reason_and_neighbour_ok(c, ro, good, "read_only")


def test_removed_directory_is_reported_not_recreated(tmp_path):
    gone, good = tmp_path / "gone", tmp_path / "good"
    gone.mkdir(), good.mkdir()
    c = make([gone, good])
    with running(c):
        wait_for(lambda: value(scrape(c), "netstack_fsync_duration_seconds_count", path=str(gone)) >= WRITES)
        shutil.rmtree(gone)
        _assert_reason_and_neighbour_ok(c, gone, good, "missing_directory", succeeded_before=True)
        assert not gone.exists(), "a vanished directory may be an unmounted disk: never re-created"


def test_directory_created_once_its_parent_becomes_writable(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    target = parent / "probe"
    with mounted(parent, "--bind", str(parent)):
        run(["mount", "-o", "remount,bind,ro", str(parent)])
        c = make([target])
        with running(c):
            wait_for(lambda: errors(scrape(c), target)["read_only"] >= 1, what="read_only")
            run(["mount", "-o", "remount,bind,rw", str(parent)])
            wait_for(
                lambda: succeeded(scrape(c), target),
                what="a successful probe",
            )
        assert target.is_dir()


PERMISSION_SCRIPT = """
import json, logging, sys, time
from exporter.contract import Context, Paths
from collectors.fsync import FsyncCollector
from tests.helpers import collector_text, parse_metrics, samples
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s %(kv)s")
c = FsyncCollector(Context(Paths(), {"directory": [sys.argv[1]], "interval": 0.05, "writes": 5}))
c.probe(); c.start()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    text = collector_text(c)
    if any(v >= 3 for v in samples(parse_metrics(text), "netstack_fsync_probe_errors_total",
                                   reason="permission_denied").values()):
        break
    time.sleep(0.05)
c.close()
print(json.dumps({"metrics": text}))
"""


def test_permission_denied_without_dac_override(tmp_path):
    # Root bypasses permission bits through CAP_DAC_OVERRIDE. A container running as root with
    # `capabilities: drop: [ALL]` does not have it; reproduce that with setpriv, probing a
    # directory of root's with mode 0555 that root may enter but (without the capability) not
    # write to. (A directory of another user would be refused before: unsafe_directory.)
    need_root()
    setpriv = need_tool("setpriv", "util-linux")
    target = tmp_path / "readonly"
    target.mkdir()
    target.chmod(0o555)
    proc = subprocess.run(
        [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            PERMISSION_SCRIPT,
            str(target),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    m = parse_metrics(json.loads(proc.stdout)["metrics"])
    assert errors(m, target)["permission_denied"] >= 3
    assert {r: v for r, v in errors(m, target).items() if r != "permission_denied"} == {
        r: 0.0 for r in REASONS if r != "permission_denied"
    }
    assert proc.stderr.count("fsync probe failed") == 1, proc.stderr  # logged once
    assert "Traceback" not in proc.stderr
    assert not (target / PROBE_FILE).exists()


def test_eio_from_the_disk(tmp_path):
    # No device-mapper on this kernel (dm-error/dm-flakey would give a real EIO): inject it.
    def failing_datasync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    c = make([tmp_path], datasync=failing_datasync)
    with running(c):
        m = wait_for(lambda: (lambda m: m if errors(m, tmp_path)["io_error"] >= 2 else None)(scrape(c)))
    assert value(m, "netstack_fsync_duration_seconds_count", path=str(tmp_path)) == 0
    assert value(m, "netstack_fsync_written_bytes_total", path=str(tmp_path)) > 0


def test_stuck_probe_times_out_once_and_is_not_stacked(tmp_path):
    release = threading.Event()
    calls = []

    def stuck_first_sync(fd):  # the first fdatasync hangs like a dying disk; bounded at 20 s
        calls.append(threading.get_ident())
        if len(calls) == 1:
            release.wait(20)
        os.fdatasync(fd)

    c = make([tmp_path], datasync=stuck_first_sync, timeout=0.3, interval=0.05)
    with running(c):
        m = wait_for(
            lambda: (
                lambda m: (
                    m if value(m, "netstack_fsync_probes_skipped_total", path=str(tmp_path)) >= 5 else None
                )
            )(scrape(c))
        )
        assert errors(m, tmp_path)["timeout"] == 1, "one timeout per stuck probe, not one per tick"
        assert len(calls) == 1, "no second probe while the first is stuck"
        assert sum(t.name == "fsync-probe" for t in threading.enumerate()) == 1
        release.set()
        m = wait_for(lambda: (lambda m: m if succeeded(m, tmp_path) else None)(scrape(c)))
    assert errors(m, tmp_path)["timeout"] == 1
    # the stuck probe stopped after its one slow sync; that sync is in the histogram
    assert value(m, "netstack_fsync_duration_seconds_bucket", path=str(tmp_path), le="0.256") < value(
        m, "netstack_fsync_duration_seconds_bucket", path=str(tmp_path), le="+Inf"
    )


# --- through the real exporter ------------------------------------------------------------------


def test_through_the_exporter_failures_do_not_stop_serving(tmp_path):
    need_root()
    if not (ROOT / "exporter" / "main.py").exists():
        pytest.fail("exporter/main.py missing")
    good, small, ro = tmp_path / "good", tmp_path / "small", tmp_path / "ro"
    for d in (good, small, ro):
        d.mkdir()
    with mounted(small, "-t", "tmpfs", "-o", "size=16k", "tmpfs"), mounted(ro, "--bind", str(ro)):
        run(["mount", "-o", "remount,bind,ro", str(ro)])
        args = [
            "--collector.disable-defaults",
            "--collector.fsync",
            "--collector.fsync.interval=200ms",
            f"--collector.fsync.writes={WRITES}",
            *(f"--collector.fsync.directory={d}" for d in (good, small, ro)),
        ]
        with Exporter(*args) as e:
            m = wait_for(
                lambda: (
                    lambda m: (
                        m
                        if value(m, "netstack_fsync_duration_seconds_count", path=str(good)) >= 2 * WRITES
                        and errors(m, small)["no_space"] >= 1
                        and errors(m, ro)["read_only"] >= 1
                        else None
                    )
                )(e.scrape())
            )
            assert value(m, "netstack_scrape_collector_success", collector="fsync") == 1
            assert (good / PROBE_FILE).exists()
            e.proc.terminate()
            assert e.proc.wait(10) == 0
            log = e.log()
        assert not (good / PROBE_FILE).exists(), "clean shutdown removes the probe file"
        assert "Traceback" not in log
        assert log.count("reason=no_space") == 1 and log.count("reason=read_only") == 1, log


def test_shutdown_during_a_probe_removes_the_probe_file():
    need_root()
    # /var/tmp, unlike /tmp on some hosts, is on a disk: there a 40,000-sync probe takes seconds
    # (0.1 ms per fdatasync here), long enough to be interrupted by SIGTERM.
    directory = Path(tempfile.mkdtemp(prefix="fsync-shutdown-", dir="/var/tmp"))
    try:
        args = [
            "--collector.disable-defaults",
            "--collector.fsync",
            "--collector.fsync.writes=40000",
            f"--collector.fsync.directory={directory}",
        ]
        with Exporter(*args) as e:
            probe_file = directory / PROBE_FILE
            wait_for(probe_file.exists, what="the probe to start")
            m = e.scrape()
            assert not succeeded(m), "probe already done"
            e.proc.terminate()
            assert e.proc.wait(10) == 0
        assert not probe_file.exists()
    finally:
        shutil.rmtree(directory)


def test_a_probe_that_never_succeeds_fails_the_collector_and_reads_as_stale(tmp_path):
    """Issue 11: success reflects the probe, and 'never succeeded' is visible to the stale alert."""
    from exporter.contract import Failed

    ro = tmp_path / "ro"
    ro.mkdir()
    with mounted(ro, "--bind", str(ro)):
        run(["mount", "-o", "remount,bind,ro", str(ro)])
        c = make([ro])
        with running(c):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not errors(scrape(c), ro)["read_only"]:
                time.sleep(0.05)
            with pytest.raises(Failed, match="read_only") as failed:
                list(c.collect())
    m = parse_metrics(collector_text_of(failed.value.families))
    assert errors(m, ro)["read_only"] >= 1  # the error counters are still served
    (since,) = samples(m, "netstack_fsync_probe_last_success_timestamp_seconds").values()
    assert since == c._created  # never succeeded: the collector's start, which ages into stale


def collector_text_of(families) -> str:
    from exporter.exposition import encode_text

    return encode_text(families).decode()
