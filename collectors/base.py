"""The collector contract every module in this package implements.

A collector is a plain object. The exporter calls, in this order:

    probe()    in a worker thread; raises SourceUnavailable(reason) when the source is not there
    start()    once, after the first successful probe (periodic collectors start their loop here)
    collect()  in a worker thread, once per collection; yields prometheus_client metric families
    unavailable_families()  instead of collect() while unavailable; usually nothing
    close()    once, on shutdown

collect() may raise anything: the exporter marks the collector failed for that collection, logs
one line and keeps serving the others. Parsing lives in pure module-level functions so it is
tested on fixture text without the kernel.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

from prometheus_client.core import Metric
from prometheus_client.samples import Sample


class SourceUnavailable(Exception):
    """The collector's source is absent here (module not loaded, file missing, no privilege)."""


class NotReady(Exception):
    """The collector started but has nothing to report yet (a BPF program still compiling).
    Reported as success=0 and logged at info level, not as a failure."""


class ParseError(ValueError):
    """A source file did not have the format the kernel writes. The message names file and line."""


@dataclass(frozen=True)
class Option:
    """A collector option, exposed as --collector.<collector>.<name> and NETSTACK_COLLECTOR_<..>.

    kind: bool | int | float | str | duration | regex | list (repeatable flag; comma-separated env)
    """

    name: str
    help: str
    default: Any = None
    kind: str = "str"


@dataclass
class Paths:
    """Where the host's pseudo filesystems are mounted (the DaemonSet reads /host/proc)."""

    procfs: str = "/proc"
    sysfs: str = "/sys"

    def proc(self, *parts: str) -> str:
        return os.path.join(self.procfs, *parts)

    def sys(self, *parts: str) -> str:
        return os.path.join(self.sysfs, *parts)


@dataclass
class Context:
    paths: Paths = field(default_factory=Paths)
    options: dict[str, Any] = field(default_factory=dict)


class Collector:
    name: ClassVar[str]
    default_enabled: ClassVar[bool] = True
    help: ClassVar[str] = ""
    options: ClassVar[Sequence[Option]] = ()

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.paths = ctx.paths

    def option(self, name: str) -> Any:
        return self.ctx.options[name]

    def probe(self) -> None:
        """Raise SourceUnavailable(reason) when this collector cannot work on this host."""

    def start(self) -> None:
        """Start background work (periodic probes). Called once, after a successful probe."""

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError

    def unavailable_families(self) -> Iterable[Metric]:
        """What to report while the source is unavailable (say, which kernel module is missing).
        Called on the worker instead of collect(); the collector still counts as unavailable."""
        return ()

    def close(self) -> None:
        """Stop background work and release resources (sockets, BPF programs, probe files)."""


def _escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return value


def format_labels(labels: dict[str, str]) -> str:
    """The exposition form of a label set: {k="v",...} with values escaped; "" when empty."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in labels.items()) + "}"


class LabelSet(dict):
    """A labels dict that keeps its exposition text. For label sets a collector reuses across
    collections (IPVS services cached by their /proc line): formatted once, not every scrape.
    Do not modify it after first use."""

    __slots__ = ("_text",)

    @property
    def text(self) -> str:
        try:
            return self._text
        except AttributeError:
            self._text = format_labels(self)
            return self._text


class LabelSets:
    """LabelSets("cpu", "mode")("0", "steal") -> the same LabelSet every time, so a collector's
    stable series (per CPU, per mode) are formatted once for the process's life. Only for label
    values from a bounded set: entries are never dropped."""

    def __init__(self, *names: str):
        self._names = names
        self._sets: dict[tuple[str, ...], LabelSet] = {}

    def __call__(self, *values: str) -> LabelSet:
        labels = self._sets.get(values)
        if labels is None:
            labels = self._sets[values] = LabelSet(zip(self._names, values))
        return labels


class CompactFamily(Metric):
    """A metric family for thousands of series (one per IPVS service): rows of (labels, value)
    instead of one prometheus_client Sample each. The exporter's encoder writes the rows directly,
    which at 15,000 series saves a third of the collection's time and memory; .samples builds
    Samples for anything else that asks (tests, prometheus_client's own encoders).

    Rows may share one labels dict (all of a service's series do); the encoder formats a shared
    dict once."""

    def __init__(self, name: str, documentation: str, typ: str):
        # Not Metric.__init__, which would make .samples a plain list.
        self.name, self.documentation, self.type, self.unit = name, documentation, typ, ""
        self.sample_name = name + "_total" if typ == "counter" else name
        self.rows: list[tuple[dict[str, str], float]] = []

    def add(self, labels: dict[str, str], value: float) -> None:
        self.rows.append((labels, value))

    @property
    def samples(self) -> list[Sample]:  # type: ignore[override]
        return [Sample(self.sample_name, labels, value) for labels, value in self.rows]


# --- small helpers shared by collectors -------------------------------------------------------


def read_text(path: str) -> str:
    # Binary read and one decode: cheaper than a text-mode file object for small proc files.
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


def read_int(path: str) -> int:
    text = read_text(path).strip()
    try:
        return int(text)
    except ValueError:
        raise ParseError(f"{path}: expected an integer, got {text[:40]!r}") from None


def require_file(path: str, what: str) -> None:
    """Probe helper: SourceUnavailable with a readable reason when path cannot be read."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise SourceUnavailable(f"{what}: {path} does not exist") from None
    except PermissionError:
        raise SourceUnavailable(f"{what}: permission denied reading {path}") from None
    except OSError as e:
        raise SourceUnavailable(f"{what}: cannot read {path}: {e.strerror}") from None


class MonotonicCounters:
    """Never let a counter go backwards.

    Some sources (steal time on buggy hypervisors, per-CPU counters across hotplug) move back a
    little; Prometheus would read that as a reset and rate() would spike. Values are clamped to the
    highest value seen for the same key. `clamped` counts how often that happened.
    """

    def __init__(self) -> None:
        self._high: dict[Any, float] = {}
        self._lock = threading.Lock()
        self.clamped = 0

    def __call__(self, key: Any, value: float) -> float:
        with self._lock:
            high = self._high.get(key)
            if high is not None and value < high:
                self.clamped += 1
                return high
            self._high[key] = value
            return value


class PeriodicLoop:
    """Run `work` every `interval` seconds in a daemon thread until stop() is called.

    For collectors whose measurement is too expensive or too slow to run at scrape time (fsync
    probes, eBPF map reads): they publish their last result and collect() returns it.
    """

    def __init__(self, name: str, interval: float, work: Callable[[], None]):
        self._interval = interval
        self._work = work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._work()
            self._stop.wait(self._interval)

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


class WrappingCounters:
    """Extend fixed-width kernel counters (u32 in /proc/softirqs, softnet_stat and the conntrack
    statistics) to counters that keep growing across the wrap, per key.

    A busy CPU wraps a u32 packet counter in about an hour; Prometheus would take each wrap for a
    reset and lose up to one scrape interval of increase, and a sum over CPUs would drop by 2**32.
    A value lower than the last one is a wrap when the last one was in the upper half of the
    range (exact as long as the counter wraps less than once between two collections); otherwise
    the kernel really restarted the counter (module reloaded) and the new value counts from zero.
    Either way the result never goes backwards.
    """

    def __init__(self, bits: int = 32) -> None:
        self._modulus = 1 << bits
        self._last: dict[Any, int] = {}
        self._total: dict[Any, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Any, raw: int) -> int:
        with self._lock:
            last = self._last.get(key)
            if last is None:
                total = raw
            elif raw >= last:
                total = self._total[key] + raw - last
            elif last >= self._modulus >> 1:
                total = self._total[key] + raw + self._modulus - last
            else:
                total = self._total[key] + raw
            self._last[key], self._total[key] = raw, total
            return total


def log_event(logger: logging.Logger, level: int, msg: str, **kv: Any) -> None:
    """Log one line with structured key=value fields (rendered as logfmt or JSON)."""
    logger.log(level, msg, extra={"kv": kv})


def release_freed_heap() -> None:
    """Give memory that was freed back to the system: glibc keeps freed heap mapped, so one large
    collection (a big IPVS table, a clang compile) would otherwise set the RSS for good."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass
