"""fsync: would etcd be healthy on this disk?

Every `interval` a probe writes `writes` sequential blocks of `block-size` bytes into one
preallocated file per directory and calls fdatasync after each write, the pattern of etcd's WAL
and of the usual `fio --rw=write --ioengine=sync --fdatasync=1 --bs=2300` check. Every fdatasync
is timed; the results are published and collect() only reads them.

Threads: one scheduler thread (common.PeriodicLoop) probes the directories one after the other, so
two directories on the same disk never disturb each other's numbers; each probe runs in its own
worker thread so that a probe stuck in the kernel can be reported as a timeout while it is still
stuck. A directory whose previous probe has not returned is skipped (never two probes in flight).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from exporter.contract import Collector, Failed, Option, ParseError
from exporter.logs import log_event
from exporter.metrics import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, go_float

from .common import PeriodicLoop, read_text

log = logging.getLogger("netstack.fsync")


# Fixed name: a probe file left behind by a crash is found and reused, never multiplied.
PROBE_FILE = ".netstack-fsync-probe"
DEFAULT_DIRECTORY = "/var/lib/netstack-exporter"
MAX_PROBE_FILE = 256 << 20  # a typo in writes must not fill the disk being watched

# etcd's WAL fsync buckets (0.001 s doubling up to 8.192 s) so dashboards and alerts written for
# etcd_disk_wal_fsync_duration_seconds work unchanged, plus sub-millisecond buckets for NVMe.
ETCD_WAL_BUCKETS = tuple(round(0.001 * 2**k, 3) for k in range(14))
BUCKETS = (0.0001, 0.00025, 0.0005) + ETCD_WAL_BUCKETS
QUANTILES = (0.5, 0.9, 0.99, 1.0)

# The documented reason label values of netstack_fsync_probe_errors_total.
REASONS = (
    "no_space",
    "read_only",
    "permission_denied",
    "io_error",
    "missing_directory",
    "unsafe_directory",
    "unsafe_file",
    "timeout",
    "other",
)
_ERRNO_REASONS = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EROFS: "read_only",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EIO: "io_error",
    errno.ENOENT: "missing_directory",
    errno.ENOTDIR: "missing_directory",
}


# --- pure functions ---------------------------------------------------------------------------


def error_reason(err: OSError) -> str:
    if isinstance(err, UnsafePath):
        return err.reason
    return _ERRNO_REASONS.get(err.errno or 0, "other")


class UnsafePath(OSError):
    """A probe directory or file the probe refuses to use; `reason` is its label value."""

    def __init__(self, reason: str, message: str):
        super().__init__(errno.EPERM, message)
        self.reason = reason


def check_directory(st: os.stat_result, euid: int) -> None:
    """Like ssh's StrictModes: the directory belongs to us or root, and nobody else can add,
    rename or remove entries in it (group/world-writable only with the sticky bit)."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath("unsafe_directory", "not a directory")
    if st.st_uid not in (euid, 0):
        raise UnsafePath(
            "unsafe_directory", f"owned by uid {st.st_uid}, neither this process's (uid {euid}) nor root's"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            "unsafe_directory",
            f"mode {stat.S_IMODE(st.st_mode):04o}: writable by group or others without the sticky bit",
        )


def check_probe_file(st: os.stat_result, euid: int) -> None:
    """The probe file is a plain file of ours with no other name: never a FIFO, a device, a
    symlink, someone else's file, or a hard link to a file elsewhere."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath("unsafe_file", f"{PROBE_FILE} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath("unsafe_file", f"{PROBE_FILE} is not a regular file (mode {st.st_mode:o})")
    if st.st_uid != euid:
        raise UnsafePath(
            "unsafe_file", f"{PROBE_FILE} belongs to uid {st.st_uid}, not to this process (uid {euid})"
        )
    if st.st_nlink != 1:
        raise UnsafePath(
            "unsafe_file", f"{PROBE_FILE} has {st.st_nlink} links (a hard link to a file elsewhere)"
        )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_probe_directory(path: str) -> int:
    """The directory's fd, opened without following a symlink in its last component, checked."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR (ELOOP without O_DIRECTORY)
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise UnsafePath("unsafe_directory", "is a symbolic link") from None
        raise
    try:
        check_directory(os.fstat(fd), os.geteuid())
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_probe_file(dir_fd: int) -> int:
    """Create the probe file in the directory (O_EXCL), or reuse the one an earlier run of ours
    left (a crash) if it is plainly ours; opened relative to the directory's fd, never through
    a symlink, never blocking on a FIFO."""
    euid = os.geteuid()
    try:
        return os.open(PROBE_FILE, _FILE_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        pass
    before = os.stat(PROBE_FILE, dir_fd=dir_fd, follow_symlinks=False)
    check_probe_file(before, euid)  # before opening: a FIFO or a device is never opened
    try:
        fd = os.open(PROBE_FILE, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):  # swapped for a symlink or a FIFO meanwhile
            raise UnsafePath("unsafe_file", f"{PROBE_FILE} was replaced while being opened") from None
        raise
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafePath("unsafe_file", f"{PROBE_FILE} was replaced while being opened")
        check_probe_file(st, euid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_probe_file(dir_fd: int, inode: int | None) -> bool:
    """Unlink the probe file relative to the directory's fd, only if it is still our file
    (the inode we wrote, when known). True if removed."""
    try:
        st = os.stat(PROBE_FILE, dir_fd=dir_fd, follow_symlinks=False)
        check_probe_file(st, os.geteuid())
    except (FileNotFoundError, UnsafePath):
        return False
    if inode is not None and st.st_ino != inode:
        return False
    os.unlink(PROBE_FILE, dir_fd=dir_fd)
    return True


@dataclass(frozen=True)
class Mount:
    major: int
    minor: int
    mount_point: str
    fstype: str
    source: str


def _unescape(field_: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as \040 \011 \012 \134.
    if "\\" not in field_:
        return field_
    out, i = [], 0
    while i < len(field_):
        digits = field_[i + 1 : i + 4]
        if field_[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str, source_name: str = "mountinfo") -> list[Mount]:
    """Parse /proc/<pid>/mountinfo (format: Documentation/filesystems/proc.rst, 3.5).

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
    Field 7 is zero or more optional fields, ended by a single "-".
    """
    mounts = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = (int(x) for x in fields[2].split(":"))
            mounts.append(
                Mount(major, minor, _unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2]))
            )
        except (ValueError, IndexError):
            raise ParseError(f"{source_name}:{lineno}: not a mountinfo line") from None
    return mounts


def find_mount(mounts: Sequence[Mount], path: str) -> Mount | None:
    """The mount that holds `path` (absolute, symlinks resolved): the longest mount point that is
    a path prefix of it; of several mounts on the same point the last one listed is on top."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mount_point
        holds = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        if holds and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def parse_uevent_devname(text: str) -> str | None:
    """DEVNAME from /sys/dev/block/M:m/uevent (KEY=value lines), e.g. "nvme0n1p2"."""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return value
    return None


def nearest_rank_quantiles(durations: Sequence[float], qs: Sequence[float]) -> dict[float, float]:
    """Quantiles by nearest rank: always one of the observed values; q=1 is the maximum."""
    ordered = sorted(durations)
    n = len(ordered)
    return {q: ordered[max(0, math.ceil(q * n) - 1)] for q in qs}


class Histogram:
    """Per-bucket counts (not cumulative) plus sum; cumulative() gives Prometheus' form."""

    def __init__(self, bounds: Sequence[float] = BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le is inclusive
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds + (math.inf,), self.counts):
            running += n
            out.append((go_float(bound), running))
        return out


# --- the probe itself -------------------------------------------------------------------------


FALLOC_FL_ZERO_RANGE = 0x10  # include/uapi/linux/falloc.h
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", _libc.fallocate)  # 64-bit offsets on every ABI
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def zero_range(fd: int, size: int) -> bool:
    """fallocate(FALLOC_FL_ZERO_RANGE): ext4 and xfs turn the range into unwritten extents and
    keep it allocated. False when the filesystem cannot (tmpfs, some network filesystems)."""
    if _fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, size) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def _require_room_for_another_file(fd: int, size: int) -> None:
    """ENOSPC when the filesystem has less free space than one more probe file. Writes into the
    preallocated file keep succeeding on a full disk, as etcd's do into its current WAL segment;
    etcd fails when it cuts the next segment, and so does this probe, a segment early."""
    vfs = os.fstatvfs(fd)
    if vfs.f_blocks and vfs.f_bfree * vfs.f_frsize < size:  # f_bfree: what root may still use
        raise OSError(errno.ENOSPC, f"less than {size} bytes free: no room for the next WAL segment")


@dataclass
class ProbeResult:
    durations: list[float] = field(default_factory=list)  # one per completed fdatasync
    bytes_written: int = 0
    error: OSError | None = None
    stopped: bool = False  # ended early by should_stop (timeout or shutdown)
    inode: int | None = None  # of the probe file written


def run_probe(
    directory: str | int,
    writes: int,
    block: bytes,
    datasync: Callable[[int], None] = os.fdatasync,
    should_stop: Callable[[], bool] = lambda: False,
    reset_extents: bool = True,
) -> ProbeResult:
    """One probe: `writes` sequential writes of `block` into the probe file of `directory` (a
    path, or the fd of a directory opened by open_probe_directory), each followed by a timed
    fdatasync. Expected failures land in result.error, never raised."""
    result = ProbeResult()
    size = writes * len(block)
    dir_fd = None
    try:
        # Directories may be shared hostPaths: never follow a planted symlink, FIFO or hard link.
        dir_fd = open_probe_directory(directory) if isinstance(directory, str) else directory
        fd = open_probe_file(dir_fd)
    except OSError as e:
        result.error = e
        return result
    finally:
        if isinstance(directory, str) and dir_fd is not None:
            os.close(dir_fd)
    result.inode = os.fstat(fd).st_ino
    try:
        st = os.fstat(fd)
        if st.st_size != size or st.st_blocks * 512 < size:
            # Allocate once (and again only if block-size or writes changed): disk use stays
            # constant and the probe's writes never have to find free space.
            if st.st_size > size:
                os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)
        elif reset_extents:  # False only in bench/bench_fsync.py, to show why it is here
            # Overwriting written blocks skips the extent conversion (a journal commit) that
            # etcd's fresh preallocated WAL segment and fio's fresh file pay on most syncs, and
            # measures faster than fio (bench/README.md). Turning the blocks back into allocated but
            # unwritten extents reproduces that cost without freeing the space.
            zero_range(fd, size)
        os.fdatasync(fd)  # make the preparation durable outside the measured syncs
        _require_room_for_another_file(fd, size)
        for i in range(writes):
            if should_stop():
                result.stopped = True
                break
            offset = i * len(block)
            written = 0
            while written < len(block):
                written += os.pwrite(fd, block[written:], offset + written)
            result.bytes_written += written
            start = time.perf_counter()
            datasync(fd)
            result.durations.append(time.perf_counter() - start)
    except OSError as e:
        result.error = e
    finally:
        os.close(fd)
    return result


# --- the collector ----------------------------------------------------------------------------


@dataclass
class _Run:
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False  # set by the scheduler, read by the worker, both under the lock


class _Directory:
    """One directory: its published results (guarded by the collector's lock) plus `worker`,
    owned by the scheduler thread, and `existed`, owned by the probe in flight."""

    def __init__(self, path: str):
        self.path = path
        self.device = ""
        self.fstype = ""
        self.histogram = Histogram()
        self.quantiles: dict[float, float] | None = None
        self.last_success: float | None = None
        self.errors = {reason: 0 for reason in REASONS}
        self.bytes_written = 0
        self.skipped = 0
        self.state: str | None = None  # "ok" or the last error reason; logged when it changes
        self.worker: threading.Thread | None = None
        self.existed = False
        # The directory, opened once (O_DIRECTORY|O_NOFOLLOW); files are made and removed
        # relative to it, so a path swapped for a symlink never leads a write elsewhere.
        self.dir_fd: int | None = None
        self.file_inode: int | None = None  # the probe file we wrote: the only one we remove
        self.fd_lock = threading.Lock()  # dir_fd between the probe thread and close()


def _absolute_paths(paths: list[str]) -> None:
    for path in paths:
        if not os.path.isabs(path):
            raise ValueError(f"directory must be an absolute path, got {path!r}")


class FsyncCollector(Collector):
    name = "fsync"
    default_enabled = True
    help = "Periodic fdatasync latency probe per directory (etcd WAL pattern, etcd's buckets)."
    options = (
        Option(
            "directory",
            "Directory to probe (repeatable); created if absent, but never "
            "re-created after it has existed (it may be a disk's mount point).",
            [DEFAULT_DIRECTORY],
            "list",
            validate=_absolute_paths,
        ),
        Option(
            "interval",
            "Pause between the end of one probe round and the next.",
            60.0,
            "duration",
            min=0.01,
            max=86400,
        ),
        Option("writes", "Writes (each followed by fdatasync) per probe.", 456, "int", min=1, max=1_000_000),
        Option(
            "block-size",
            "Bytes per write (etcd WAL entries are small; fio's check uses 2300).",
            2300,
            "int",
            min=1,
            max=MAX_PROBE_FILE,
        ),
        Option(
            "timeout",
            "A probe still running after this is reported as reason=timeout.",
            30.0,
            "duration",
            min=0.01,
            max=86400,
        ),
    )

    @classmethod
    def check_options(cls, values) -> None:
        if not values["directory"]:
            raise ValueError("--collector.fsync.directory: at least one directory is needed")
        size = values["writes"] * values["block-size"]
        if size > MAX_PROBE_FILE:
            raise ValueError(
                f"--collector.fsync.writes x --collector.fsync.block-size = {size} "
                f"bytes; the probe file is limited to {MAX_PROBE_FILE >> 20} MiB"
            )

    def __init__(self, ctx, *, datasync: Callable[[int], None] = os.fdatasync):
        super().__init__(ctx)
        # datasync is a seam for tests (slow or failing disks); production uses os.fdatasync.
        self._datasync = datasync
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._loop: PeriodicLoop | None = None
        self._mounts_warned = False
        self._created = time.time()
        self._dirs = [_Directory(d) for d in self.option("directory")]
        self._block = os.urandom(self.option("block-size"))  # incompressible, like fio

    def probe(self) -> None:
        # Directory problems are per-directory errors, not a reason to disable the collector.
        # The options were checked when the command line was parsed (check_options).
        for d in self._dirs:
            d.device, d.fstype = self._labels(d.path)

    def start(self) -> None:
        self._loop = PeriodicLoop("fsync", self.option("interval"), self._probe_all)
        self._loop.start()  # PeriodicLoop runs the first round immediately

    # -- scheduling --

    def _probe_all(self) -> None:
        for d in self._dirs:
            if self._closing.is_set():
                return
            self._probe_directory(d)

    def _probe_directory(self, d: _Directory) -> None:
        if d.worker is not None and d.worker.is_alive():
            with self._lock:
                d.skipped += 1  # the stuck probe keeps its slot until the kernel returns
            return
        timeout = self.option("timeout")
        run = _Run(deadline=time.monotonic() + timeout)
        d.worker = threading.Thread(target=self._work, args=(d, run), name="fsync-probe", daemon=True)
        d.worker.start()
        while not run.done.wait(0.1):
            if self._closing.is_set():
                return
            if time.monotonic() >= run.deadline:
                with self._lock:
                    if not run.done.is_set():
                        run.timed_out = True
                        self._fail(d, "timeout", f"probe still running after {timeout:g}s")
                return

    def _work(self, d: _Directory, run: _Run) -> None:
        try:
            device, fstype = self._labels(d.path)
            result = self._prepare(d)
            if result is None:
                try:
                    dir_fd = self._directory_fd(d)
                except OSError as e:
                    result = ProbeResult(error=e)
                else:
                    result = run_probe(
                        dir_fd,
                        self.option("writes"),
                        self._block,
                        self._datasync,
                        lambda: self._closing.is_set() or time.monotonic() >= run.deadline,
                    )
                    if result.inode is not None:
                        d.file_inode = result.inode
            with self._lock:
                d.device, d.fstype = device, fstype
                self._publish(d, run, result)
        except Exception as e:  # a bug must not kill the thread silently; keep the rest serving
            log_event(log, logging.ERROR, "fsync probe crashed", path=d.path, error=repr(e))
            with self._lock:
                if not run.timed_out:
                    self._fail(d, "other", repr(e))
        finally:
            if self._closing.is_set():
                self._remove_probe_file(d)
            run.done.set()

    def _prepare(self, d: _Directory) -> ProbeResult | None:
        """Create the directory until it has existed once. After that it is never re-created:
        it may be the mount point of the disk under test, and probing the disk below would
        mislead; its disappearance is reported as missing_directory instead."""
        if d.existed:
            return None
        try:
            os.makedirs(d.path, mode=0o700, exist_ok=True)
        except OSError as e:
            return ProbeResult(error=e)
        d.existed = True
        return None

    def _directory_fd(self, d: _Directory) -> int:
        """The directory's fd, opened once; checked again before every probe. If the path now
        names something else (a symlink, another directory), the old fd is dropped and the path
        opened and checked afresh, which refuses a symlink."""
        with d.fd_lock:
            if d.dir_fd is not None:
                try:
                    now = os.stat(d.path, follow_symlinks=False)
                except FileNotFoundError:
                    self._drop_directory_fd(d)
                    raise
                held = os.fstat(d.dir_fd)
                if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    check_directory(held, os.geteuid())  # its owner or mode may have changed
                    return d.dir_fd
                # moved away or replaced: clean up our file in it, through the fd, then let go
                log_event(log, logging.WARNING, "fsync probe directory was replaced", path=d.path)
                remove_probe_file(d.dir_fd, d.file_inode)
                self._drop_directory_fd(d)
            d.dir_fd = open_probe_directory(d.path)
            return d.dir_fd

    @staticmethod
    def _drop_directory_fd(d: _Directory) -> None:
        if d.dir_fd is not None:
            os.close(d.dir_fd)
            d.dir_fd, d.file_inode = None, None

    def _publish(self, d: _Directory, run: _Run, result: ProbeResult) -> None:
        # Completed syncs are real observations even when the probe failed or ran late.
        for duration in result.durations:
            d.histogram.observe(duration)
        d.bytes_written += result.bytes_written
        if run.timed_out:
            return  # already counted as a timeout by the scheduler
        if result.error is not None:
            e = result.error
            code = errno.errorcode.get(e.errno or 0, e.errno)
            self._fail(d, error_reason(e), f"{e.strerror or e} (errno {code})")
        elif result.stopped:
            if not self._closing.is_set():  # it stopped itself at the deadline, first
                run.timed_out = True
                self._fail(d, "timeout", f"probe still running after {self.option('timeout'):g}s")
        else:
            d.quantiles = nearest_rank_quantiles(result.durations, QUANTILES) if result.durations else None
            d.last_success = time.time()
            if d.state != "ok":
                log_event(
                    log,
                    logging.INFO,
                    "fsync probe ok",
                    path=d.path,
                    device=d.device,
                    fstype=d.fstype,
                    p99_seconds=(d.quantiles or {}).get(0.99, 0.0),
                )
            d.state = "ok"

    def _fail(self, d: _Directory, reason: str, detail: str) -> None:
        d.errors[reason] += 1
        if d.state != reason:
            log_event(log, logging.WARNING, "fsync probe failed", path=d.path, reason=reason, detail=detail)
        d.state = reason

    def _labels(self, path: str) -> tuple[str, str]:
        """(device, fstype) of the filesystem holding path. device is the kernel's block device
        name (as in node_disk_* metrics), else the mount source (tmpfs, overlay, server:/export)."""
        mountinfo = self.paths.proc("self", "mountinfo")
        try:
            mount = find_mount(parse_mountinfo(read_text(mountinfo), mountinfo), os.path.realpath(path))
        except (OSError, ParseError) as e:
            if not self._mounts_warned:  # labels stay empty; say so once, not every probe
                self._mounts_warned = True
                log_event(log, logging.WARNING, "fsync cannot read mounts", path=path, error=str(e))
            return "", ""
        if mount is None:
            return "", ""
        try:
            devname = parse_uevent_devname(
                read_text(self.paths.sys("dev", "block", f"{mount.major}:{mount.minor}", "uevent"))
            )
        except FileNotFoundError:
            devname = None  # not a block device: tmpfs, overlay, nfs
        except (OSError, ParseError) as e:
            devname = None
            if not self._mounts_warned:
                self._mounts_warned = True
                log_event(log, logging.WARNING, "fsync cannot read the device name", path=path, error=str(e))
        # The label must not depend on whether sysfs answered: /dev/vda and vda are one device.
        return devname or mount.source.removeprefix("/dev/"), mount.fstype

    # -- exposition --

    def collect(self) -> Iterable:
        labels = ["path", "device", "fstype"]
        hist = HistogramMetricFamily(
            "netstack_fsync_duration_seconds",
            "Duration of each fdatasync of the probe, cumulative over probes (etcd WAL buckets).",
            labels=labels,
        )
        quant = GaugeMetricFamily(
            "netstack_fsync_probe_quantile_seconds",
            "fdatasync duration quantiles (nearest rank) of the last completed probe; q is the "
            "quantile (0.5, 0.9, 0.99, 1 = max).",
            # not "quantile": that label is reserved for summaries (promtool rejects it here), and a
            # summary's _sum/_count would duplicate the histogram's over a different window
            labels=labels + ["q"],
        )
        success = GaugeMetricFamily(
            "netstack_fsync_probe_last_success_timestamp_seconds",
            "Unix time when the last probe completed without error; until one has, when the "
            "collector started (so that 'no probe succeeded since start' reads as stale too).",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "netstack_fsync_probe_errors",
            "Probes that failed, by reason: " + ", ".join(REASONS) + ".",
            labels=labels + ["reason"],
        )
        written = CounterMetricFamily(
            "netstack_fsync_written_bytes", "Bytes written by the probes.", labels=labels
        )
        skipped = CounterMetricFamily(
            "netstack_fsync_probes_skipped",
            "Probes not started because the previous probe of the directory had not returned.",
            labels=labels,
        )
        with self._lock:
            for d in self._dirs:
                lv = [d.path, d.device, d.fstype]
                hist.add_metric(lv, d.histogram.cumulative(), d.histogram.sum)
                if d.quantiles:
                    for q, v in d.quantiles.items():
                        quant.add_metric(lv + [f"{q:g}"], v)
                success.add_metric(lv, d.last_success or self._created)
                for reason, n in d.errors.items():
                    errors.add_metric(lv + [reason], n)
                written.add_metric(lv, d.bytes_written)
                skipped.add_metric(lv, d.skipped)
            failing = [f"{d.path}: {d.state}" for d in self._dirs if d.state not in (None, "ok")]
        families = [hist, quant, success, errors, written, skipped]
        if failing and len(failing) == len(self._dirs):
            # Nothing measured: the collector fails (its error counters are still served).
            raise Failed("every probe directory fails: " + ", ".join(failing), families)
        return families

    def close(self) -> None:
        # The exporter gives all collectors 0.5 s together to close, so nothing here waits on a
        # probe: the file is unlinked now (a running probe keeps its open fd and stops after its
        # current fdatasync), and a probe that opened the file after this unlink removes it itself.
        self._closing.set()
        for d in self._dirs:
            self._remove_probe_file(d)
        if self._loop is not None:
            self._loop.stop(timeout=0.2)

    def _remove_probe_file(self, d: _Directory) -> None:
        """Unlink our probe file, relative to the directory's fd (never through the path, which
        may have been swapped for a symlink meanwhile)."""
        with d.fd_lock:
            if d.dir_fd is None:
                return
            try:
                remove_probe_file(d.dir_fd, d.file_inode)
            except OSError as e:
                log_event(
                    log,
                    logging.WARNING,
                    "fsync cannot remove probe file",
                    path=d.path,
                    error=e.strerror or str(e),
                )


COLLECTOR = FsyncCollector
