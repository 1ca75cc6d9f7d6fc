"""`netstack-exporter check`: the field guide's verdicts for this node, now, without Prometheus.

It runs the enabled collectors through the exporter's own scheduler (same flags, same --path.*),
waits --check.duration, runs them again for rates, and meanwhile runs one fsync probe in etcd's
WAL pattern (fio --rw=write --ioengine=sync --fdatasync=1 --size=22m --bs=2300) in
--check.fsync-dir. The verdicts come from exporter.field_guide; this module only gathers the
two readings and prints them. Exit status: 0 nothing failed, 1 something failed (with --strict,
a warning too), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from collectors import available_collectors

from . import __version__, field_guide, logs
from .cli import Flag, load_config, parse_size
from .contract import Context, Option, Paths
from .scheduling import CollectorRunner, Scheduler
from .snapshot import Snapshot

FIO_BLOCK = 2300  # bytes per write in fio's etcd check, and in etcd's WAL entries

CHECK_FLAGS: tuple[Flag, ...] = (
    (
        "--check.duration",
        Option(
            "duration",
            "Time between the two readings that rates come from",
            "10s",
            "duration",
            min=0.1,
            max=3600,
        ),
        None,
        None,
    ),
    (
        "--check.fsync-dir",
        Option(
            "fsync-dir",
            "Directory for the etcd-pattern fsync probe (default: the first --collector.fsync.directory)",
            None,
        ),
        None,
        "PATH",
    ),
    (
        "--check.fsync-size",
        Option(
            "fsync-size",
            "Bytes the fsync probe writes, in 2300-byte fdatasync'ed writes (fio's --size)",
            "22m",
            "int",
            min=FIO_BLOCK,
            max=256 << 20,
        ),
        parse_size,
        "SIZE",
    ),
    ("--output", Option("output", "Output format", "table", choices=("table", "json")), None, "FORMAT"),
    ("--strict", Option("strict", "Exit 1 on warnings too", False, "bool"), None, None),
)

COLOURS = {field_guide.OK: "32", field_guide.WARN: "33", field_guide.FAIL: "31", field_guide.SKIP: "90"}


def problems_of(runners: Iterable[CollectorRunner], snapshot: Snapshot) -> dict[str, str]:
    """Collector -> why its data is missing from the snapshot ("" when it succeeded)."""
    success = {o.collector: o.success for o in snapshot.outcomes}
    out = {}
    for r in runners:
        if r.available is False:
            out[r.name] = f"unavailable: {r.reason}"
        elif not success.get(r.name):
            out[r.name] = f"failing: {r.last_error or 'no data yet'}"
        else:
            out[r.name] = ""
    return out


def families_of(snapshot: Snapshot) -> list:
    return [f for o in snapshot.outcomes for f in o.families]


# The check's probe file lives in a subdirectory of its own: the running exporter's fsync
# collector probes the same directory (in the DaemonSet, `kubectl exec ... check` shares its
# mount) with its own fixed-name file, and neither may truncate or remove the other's.
CHECK_SUBDIR = ".netstack-check"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A probe that cannot run here is a skip (nothing to measure); a disk that refuses writes is a
# failure the collectors row reports (as the NetstackFsyncProbeFailing alert would).
UNAVAILABLE_REASONS = ("missing_directory", "permission_denied", "unsafe_directory", "unsafe_file")


def _probe_error(directory: str, err: OSError) -> str:
    from collectors import fsync

    reason = fsync.error_reason(err)
    state = "unavailable" if reason in UNAVAILABLE_REASONS else "failing"
    return f"{state}: {directory}: {reason} ({err.strerror})"


def fsync_probe(
    directory: str,
    size: int,
    deadline: float,
    datasync: Callable[[int], None] = os.fdatasync,
    stop: threading.Event | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """One probe in etcd's WAL pattern: (its p50/p99/max, "") or (None, why not). `datasync` is
    os.fdatasync but for tests (a slow disk by injected delay)."""
    from collectors import fsync  # the probe's safe file handling lives with the fsync collector

    try:
        parent = fsync.open_probe_directory(directory)
    except OSError as e:
        return None, _probe_error(directory, e)
    try:
        try:
            os.mkdir(CHECK_SUBDIR, 0o700, dir_fd=parent)
        except FileExistsError:
            pass  # left by a check that was killed: reused if it passes the same checks
        own = os.open(CHECK_SUBDIR, _DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        os.close(parent)
        return None, _probe_error(directory, e)
    try:
        fsync.check_directory(os.fstat(own), os.geteuid())
        fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(own)
        os.close(parent)
        return None, f"unavailable: {directory}: another check is probing it now"
    except OSError as e:
        os.close(own)
        os.close(parent)
        return None, _probe_error(directory, e)
    try:
        result = fsync.run_probe(
            own,
            max(1, size // FIO_BLOCK),
            os.urandom(FIO_BLOCK),
            datasync=datasync,
            should_stop=lambda: time.monotonic() > deadline or bool(stop and stop.is_set()),
        )
        fsync.remove_probe_file(own, result.inode)  # a one-off probe leaves nothing behind
    finally:
        os.close(own)
        try:
            os.rmdir(CHECK_SUBDIR, dir_fd=parent)
        except OSError:
            pass  # not empty (not ours to empty) or already gone
        os.close(parent)
    if result.error is not None:
        return None, _probe_error(directory, result.error)
    if not result.durations:
        return None, f"unavailable: {directory}: no fdatasync completed"
    q = fsync.nearest_rank_quantiles(result.durations, (0.5, 0.99, 1.0))
    return {
        "path": directory,
        "syncs": len(result.durations),
        "stopped_early": result.stopped,
        "p50": q[0.5],
        "p99": q[0.99],
        "max": q[1.0],
    }, ""


async def gather(
    scheduler: Scheduler,
    runners: list[CollectorRunner],
    duration: float,
    fsync_dir: str | None,
    fsync_size: int,
    between: Callable[[], None] | None = None,
    datasync: Callable[[int], None] = os.fdatasync,
) -> field_guide.Readings:
    """Two readings `duration` apart (and the fsync probe meanwhile). `between` runs right after
    the first reading: tests advance a fixture host tree there."""
    first = await scheduler.snapshot()
    started = time.monotonic()
    probe: dict[str, Any] = {}
    stop = threading.Event()
    prober = None
    if fsync_dir:
        # A slow disk may not finish 22 MiB in time: the probe stops with what it measured.
        def run() -> None:
            probe["result"], probe["error"] = fsync_probe(
                fsync_dir, fsync_size, started + duration + 2, datasync, stop
            )

        prober = threading.Thread(target=run, name="check-fsync", daemon=True)
        prober.start()
    try:
        if between is not None:
            await asyncio.to_thread(between)
        await asyncio.sleep(max(0.0, started + duration - time.monotonic()))
        second = await scheduler.snapshot()
        seconds = time.monotonic() - started
        if prober is not None:
            await asyncio.to_thread(prober.join, 5)
    finally:
        stop.set()  # interrupted (Ctrl-C): the probe stops at its next write and removes its file
        if prober is not None and prober.is_alive():
            prober.join(2)  # before the process exits and takes the daemon thread with it
    after = field_guide.flatten(families_of(second))
    problems = problems_of(runners, second)
    if not fsync_dir:
        problems["fsync"] = "unavailable: no --check.fsync-dir and no --collector.fsync.directory"
    elif probe.get("result"):
        r = probe["result"]
        after["netstack_check_fsync_p99_seconds"] = [({"path": r["path"]}, r["p99"])]
        problems["fsync"] = ""
    else:
        problems["fsync"] = probe.get("error") or f"failing: {fsync_dir}: probe did not finish"
    return field_guide.Readings(
        field_guide.flatten(families_of(first)), after, seconds, problems, fsync=probe.get("result")
    )


def report(readings: field_guide.Readings, enabled: Sequence[str]) -> list[field_guide.Verdict]:
    verdicts = field_guide.evaluate(readings)
    return verdicts + field_guide.collector_verdicts(readings.problems, enabled)


def exit_status(verdicts: Sequence[field_guide.Verdict], strict: bool) -> int:
    bad = {field_guide.FAIL, field_guide.WARN} if strict else {field_guide.FAIL}
    return 1 if any(v.status in bad for v in verdicts) else 0


def as_json(verdicts: Sequence[field_guide.Verdict], readings: field_guide.Readings, status: int) -> str:
    counts = {s: sum(v.status == s for v in verdicts) for s in field_guide.STATUSES}
    return json.dumps(
        {
            "schema": "netstack-exporter/check/v1",
            "version": __version__,
            "host": os.uname().nodename,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "interval_seconds": round(readings.seconds, 3),
            "exit_status": status,
            "summary": counts,
            "fsync_probe": readings.fsync,
            "checks": [v.as_dict() for v in verdicts],
        },
        indent=2,
    )


def as_table(verdicts: Sequence[field_guide.Verdict], colour: bool) -> str:
    width = max(len(v.title) for v in verdicts)
    lines = []
    for v in verdicts:
        status = v.status.upper().ljust(4)
        if colour:
            status = f"\033[{COLOURS[v.status]}m{status}\033[0m"
        threshold = f"  (threshold {v.threshold})" if v.threshold else ""
        lines.append(f"{status}  {v.title.ljust(width)}  {v.value}{threshold}")
        if v.status in (field_guide.WARN, field_guide.FAIL):
            lines.append(f"      why: {v.why}")
            lines.append(f"      do:  {v.action}")
            lines.extend(f"      - {d}" for d in v.details[:10])
    counts = ", ".join(f"{sum(v.status == s for v in verdicts)} {s}" for s in field_guide.STATUSES)
    lines.append(f"\n{counts}")
    return "\n".join(lines) + "\n"


def main(
    argv: Sequence[str],
    environ=os.environ,
    out: TextIO = sys.stdout,
    *,
    between: Callable[[], None] | None = None,
    datasync: Callable[[int], None] = os.fdatasync,
) -> int:
    """`between` and `datasync` are test seams (see gather and fsync_probe); production leaves
    them alone."""
    classes = available_collectors()
    config = load_config(argv, environ, classes, CHECK_FLAGS, prog="netstack-exporter check")
    logs.setup("error" if config.log_level == "info" else config.log_level, config.log_format)
    extra = config.extra
    paths = Paths(procfs=config.procfs, sysfs=config.sysfs)
    # The periodic fsync collector is replaced by the one etcd-pattern probe below.
    enabled = [c.name for c in classes if config.enabled[c.name]]
    runners = [
        CollectorRunner(cls(Context(paths=paths, options=config.collector_options[cls.name])))
        for cls in classes
        if config.enabled[cls.name] and cls.name != "fsync"
    ]
    fsync_dir = extra["--check.fsync-dir"]
    if fsync_dir is None and config.enabled.get("fsync"):
        fsync_dir = config.collector_options["fsync"]["directory"][0]
    elif fsync_dir and "fsync" not in enabled:
        enabled.append("fsync")  # asked for by --check.fsync-dir
    scheduler = Scheduler(runners, list, config.scrape_timeout)

    async def run() -> field_guide.Readings:
        try:
            return await gather(
                scheduler,
                runners,
                extra["--check.duration"],
                fsync_dir,
                extra["--check.fsync-size"],
                between,
                datasync,
            )
        finally:
            await asyncio.to_thread(scheduler.close, 0.5)

    try:
        readings = asyncio.run(run())
    except KeyboardInterrupt:  # Ctrl-C during the wait: the probe has removed its file
        print("netstack-exporter check: interrupted", file=sys.stderr)
        return 130
    verdicts = report(readings, enabled)
    status = exit_status(verdicts, extra["--strict"])
    text = (
        as_json(verdicts, readings, status) + "\n"
        if extra["--output"] == "json"
        else as_table(verdicts, colour=out.isatty() and "NO_COLOR" not in environ)
    )
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:  # `check | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


class VerdictHistory:
    """The running exporter's recent collections, reduced to what the checks read, so that the
    landing page shows verdicts with rates over about the last minute.

    Reducing a collection costs about as much as encoding it, and it is called on every one:
    collections are reduced only about every window/6 seconds (the starts of the rate windows),
    and the latest one only when the page asks for verdicts. What is kept of the latest is the
    families the checks read, never the snapshot: that would keep its encoded body (megabytes
    with a large IPVS table) alive until the next collection."""

    def __init__(self, runners: Sequence[CollectorRunner], window: float = 60.0):
        self.runners = runners
        self.window = window
        self.spacing = window / 6
        self._readings: deque[tuple[float, dict[str, field_guide.Series], dict[str, str]]] = deque()
        self._latest: tuple[float, list, dict[str, str]] | None = None
        self._latest_reduced: tuple[list, dict[str, field_guide.Series]] | None = None
        self._lock = threading.Lock()

    def add(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        problems = problems_of(self.runners, snapshot)
        families = [f for f in families_of(snapshot) if f.name in field_guide.FAMILIES]
        with self._lock:
            self._latest = (now, families, problems)
            if self._readings and now - self._readings[-1][0] < self.spacing:
                return
        reduced = field_guide.flatten(families)
        with self._lock:
            self._readings.append((now, reduced, problems))
            self._latest_reduced = (families, reduced)
            # Keep one reading older than the window, so the rate spans the whole window.
            while len(self._readings) > 2 and self._readings[1][0] <= now - self.window:
                self._readings.popleft()

    def verdicts(self) -> list[field_guide.Verdict]:
        with self._lock:
            if not self._readings or self._latest is None:
                return []
            then, before, _ = self._readings[0]
            now, families, problems = self._latest
            cached = self._latest_reduced
        if cached is not None and cached[0] is families:
            after = cached[1]
        else:
            after = field_guide.flatten(families)
            with self._lock:
                self._latest_reduced = (families, after)
        readings = field_guide.Readings(before, after, now - then, problems)
        return field_guide.evaluate(readings)
