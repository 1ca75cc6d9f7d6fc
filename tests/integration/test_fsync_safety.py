"""The fsync probe, running as root, never writes, truncates or deletes anything outside its
directory: a symlinked directory, a symlinked probe file, a hard link, a FIFO, a probe file of
another user, and a directory swapped while a probe runs. Each test records the outside files
(names, types, sizes, mtimes, contents) before and checks them after the collector closed."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from collectors.fsync import PROBE_FILE
from tests.helpers import need_root, samples
from tests.integration.test_fsync import WRITES, errors, make, running, scrape, wait_for


def snapshot(root: Path) -> dict:
    """Everything under root as it is now, without following symlinks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                st.st_size,
                st.st_mtime_ns,
                st.st_nlink,
                st.st_uid,
                digest,
            )
    return out


@pytest.fixture
def outside(tmp_path):
    """A directory the probe must never touch, with a victim file named like the probe file."""
    need_root()
    d = tmp_path / "outside"
    d.mkdir()
    (d / PROBE_FILE).write_bytes(b"precious data, not a probe file\n")
    (d / "victim").write_bytes(b"also precious\n")
    return d


def refused(c, path, reason: str) -> dict:
    return wait_for(
        lambda: (lambda m: m if errors(m, path)[reason] >= 2 else None)(scrape(c)),
        what=f"two probes refused with {reason}",
    )


def no_probe_succeeded(m, path) -> bool:
    """No quantiles: nothing was measured (the last-success timestamp is the collector's start
    until a probe succeeds)."""
    return not samples(m, "netstack_fsync_probe_quantile_seconds", path=str(path))


def test_symlinked_directory_is_refused(tmp_path, outside):
    before = snapshot(outside)
    link = tmp_path / "probe-dir"
    link.symlink_to(outside)
    c = make([link])
    with running(c):
        m = refused(c, link, "unsafe_directory")
    assert no_probe_succeeded(m, link)
    assert snapshot(outside) == before
    assert link.is_symlink()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "other-uid"])
def test_planted_probe_file_is_refused_and_left_alone(tmp_path, outside, kind):
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir(mode=0o700)
    planted = probe_dir / PROBE_FILE
    if kind == "symlink":
        planted.symlink_to(outside / "victim")
    elif kind == "hardlink":
        os.link(outside / "victim", planted)
    elif kind == "fifo":
        os.mkfifo(planted)  # opening it for writing would block forever without O_NONBLOCK
    else:
        planted.write_bytes(b"nobody's file\n")
        os.chown(planted, 65534, 65534)
    planted_before = planted.lstat()
    content = planted.read_bytes() if kind == "other-uid" else None
    before = snapshot(outside)
    c = make([probe_dir])
    start = time.monotonic()
    with running(c):
        m = refused(c, probe_dir, "unsafe_file")
    assert time.monotonic() - start < 10, "a probe blocked"
    assert no_probe_succeeded(m, probe_dir)
    assert snapshot(outside) == before
    # the planted entry is still there, unchanged: not overwritten, truncated or deleted at close
    after = planted.lstat()
    assert (after.st_ino, after.st_mode, after.st_size, after.st_mtime_ns) == (
        planted_before.st_ino,
        planted_before.st_mode,
        planted_before.st_size,
        planted_before.st_mtime_ns,
    )
    if content is not None:
        assert planted.read_bytes() == content
    assert os.listdir(probe_dir) == [PROBE_FILE]


@pytest.mark.parametrize(
    "mode, owner, allowed",
    [
        (0o700, 0, True),
        (0o1777, 0, True),  # sticky: others may create entries but not replace ours
        (0o777, 0, False),  # world-writable without the sticky bit
        (0o770, 0, False),  # group-writable without the sticky bit
        (0o700, 65534, False),  # another user's directory
    ],
)
def test_directory_owner_and_mode_like_strict_modes(tmp_path, mode, owner, allowed):
    need_root()
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    os.chown(probe_dir, owner, owner)
    probe_dir.chmod(mode)
    c = make([probe_dir])
    with running(c):
        if allowed:
            wait_for(lambda: not no_probe_succeeded(scrape(c), probe_dir), what="a successful probe")
        else:
            m = refused(c, probe_dir, "unsafe_directory")
            assert no_probe_succeeded(m, probe_dir)
            assert os.listdir(probe_dir) == []
    assert os.listdir(probe_dir) == []  # a successful probe's file is removed at close


def test_directory_swapped_for_a_symlink_while_probing(tmp_path, outside):
    """The probe directory is renamed away and replaced by a symlink to `outside` during a probe
    (slow fdatasync); shutdown then removes the probe file. Before, the unlink went through the
    path and deleted outside's file of the same name."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir(mode=0o700)
    in_sync = threading.Event()
    release = threading.Event()

    def slow_sync(fd):
        in_sync.set()
        release.wait(10)
        os.fdatasync(fd)

    before = snapshot(outside)
    c = make([probe_dir], datasync=slow_sync)
    c.start()
    try:
        assert in_sync.wait(10), "the probe did not start"
        moved = tmp_path / "probe.moved"
        probe_dir.rename(moved)
        probe_dir.symlink_to(outside)
        release.set()
        # the next probes see a symlink where the directory was: refused, nothing written
        m = refused(c, probe_dir, "unsafe_directory")
        assert value_count(m, probe_dir) >= 1
    finally:
        release.set()
        c.close()
    assert snapshot(outside) == before
    # the probe file was written and removed in the directory itself, wherever it went
    assert os.listdir(moved) == []


def value_count(m, path) -> float:
    found = samples(m, "netstack_fsync_duration_seconds_count", path=str(path))
    return next(iter(found.values()), 0.0)


def test_own_leftover_file_is_still_reused(tmp_path):
    need_root()
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir(mode=0o700)
    leftover = probe_dir / PROBE_FILE
    leftover.write_bytes(b"x" * 100)
    inode = leftover.stat().st_ino
    c = make([probe_dir])
    with running(c):
        wait_for(lambda: value_count(scrape(c), probe_dir) >= WRITES, what="a probe")
        assert leftover.stat().st_ino == inode
    assert not leftover.exists()
