"""Disks that fail the fsync probe for real: ext4 on a loop device whose backing file lives in
/dev/shm (fast and steady, so that only what the test does makes it slow), filled up (ENOSPC),
or throttled for one process with a block-I/O cgroup (v1 blkio.throttle.write_iops_device, or
v2 io.max where the io controller is enabled). Everything is created under the `nse-alert-`
prefix and removed by the ExitStack the caller passes, also on failure."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from tests.helpers import need, need_root, need_tool, run

CGROUP_V1 = Path("/sys/fs/cgroup/blkio")
CGROUP_V2 = Path("/sys/fs/cgroup")


class LoopDisk:
    """An ext4 filesystem of `size_mb` MiB on a loop device, mounted at `mountpoint`."""

    def __init__(
        self, stack: contextlib.ExitStack, mountpoint: Path, size_mb: int = 16, journal: bool = True
    ):
        need_root()
        need_tool("losetup", "mount")
        need_tool("mkfs.ext4", "e2fsprogs")
        tag = uuid.uuid4().hex[:8]
        self.image = Path("/dev/shm") / f"nse-alert-{tag}.img"
        stack.callback(self.image.unlink, missing_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        self.device = run(["losetup", "--find", "--show", str(self.image)]).stdout.strip()
        stack.callback(run, ["losetup", "-d", self.device], check=False)
        # no blocks reserved for root; without a journal a sync is one write, not a hand-off to jbd2
        run(["mkfs.ext4", "-q", "-F", "-m", "0", *(() if journal else ("-O", "^has_journal")), self.device])
        mountpoint.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "ext4", self.device, str(mountpoint)])
        stack.callback(run, ["umount", str(mountpoint)], check=False)
        self.mountpoint = mountpoint
        rdev = os.stat(self.device).st_rdev
        self.major_minor = f"{os.major(rdev)}:{os.minor(rdev)}"

    def fill(self) -> None:
        """Take every free block (the probe preallocates its file at its first round: a disk
        full from the start makes that fail with ENOSPC, every round)."""
        chunk = 1 << 20
        fd = os.open(self.mountpoint / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while chunk >= 1024:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    chunk //= 4
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
        free = os.statvfs(self.mountpoint)
        assert free.f_bavail * free.f_frsize < 64 << 10, "the loop filesystem is not full"


class IoThrottle:
    """A cgroup that limits write IOPS on one block device for the processes put in it."""

    def __init__(self, stack: contextlib.ExitStack):
        need_root()
        name = f"nse-alert-{uuid.uuid4().hex[:8]}"
        if CGROUP_V1.is_dir():
            self.v1, self.path = True, CGROUP_V1 / name
        else:
            controllers = (CGROUP_V2 / "cgroup.controllers").read_text().split()
            need("io" in controllers, "needs a block-I/O cgroup: v1 blkio or v2 with the io controller")
            self.v1, self.path = False, CGROUP_V2 / name
        self.path.mkdir()
        self.limited: list[str] = []
        stack.callback(self.close)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def limit(self, major_minor: str, write_iops: int) -> None:
        if self.v1:
            (self.path / "blkio.throttle.write_iops_device").write_text(f"{major_minor} {write_iops}")
        else:
            (self.path / "io.max").write_text(f"{major_minor} wiops={write_iops}")
        self.limited.append(major_minor)

    def close(self) -> None:
        for major_minor in self.limited:  # lift the limit first: nothing stays throttled
            with contextlib.suppress(OSError):
                self.limit_off(major_minor)
        parent = self.path.parent
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def limit_off(self, major_minor: str) -> None:
        if self.v1:
            (self.path / "blkio.throttle.write_iops_device").write_text(f"{major_minor} 0")
        else:
            (self.path / "io.max").write_text(f"{major_minor} wiops=max")
