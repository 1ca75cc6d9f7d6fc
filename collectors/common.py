"""Helpers shared by collectors: bounded file reads, counter bookkeeping, periodic work."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from exporter.contract import ParseError, SourceUnavailable

# The most a collector reads from one pseudo file. procfs files of a healthy host are far smaller
# (/proc/stat of 1,024 CPUs is ~150 KiB); a larger one is a broken or hostile source, and reading
# it whole would set the process's RSS for good. Collectors of big tables pass their own limit.
MAX_READ_BYTES = 1 << 20

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


def read_text(path: str, limit: int = MAX_READ_BYTES) -> str:
    """The file's text; ParseError when it holds more than `limit` bytes."""
    # Binary read and one decode: cheaper than a text-mode file object for small proc files.
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ParseError(f"{path}: larger than the {limit >> 10} KiB this exporter reads from it")
    return data.decode("ascii", "replace")


def read_int(path: str) -> int:
    text = read_text(path, 64).strip()
    if len(text) <= 20:  # a u64 has at most 20 digits; int() of thousands of digits is slow
        try:
            return int(text)
        except ValueError:
            pass
    raise ParseError(f"{path}: expected an integer")


def parse_counter(text: str, base: int = 10, maximum: int = U64_MAX) -> int:
    """A kernel counter column: ValueError unless it is a number from 0 to `maximum` (the
    counter's width), so that a corrupt value never reaches the counters or the encoder."""
    if len(text) > 22:
        raise ValueError("counter too long")
    value = int(text, base)
    if not 0 <= value <= maximum:
        raise ValueError("counter out of range")
    return value


def parse_cpu_list(text: str, source: str = "cpu list", limit: int = 65536) -> list[int]:
    """The CPUs of a sysfs CPU list ("0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11]), sorted; a list
    naming more than `limit` CPUs is an error, so that "0-100000000" costs nothing."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or len(first) > 6 or len(last) > 6:
            raise ParseError(f"{source}: not a CPU list")
        low, high = int(first), int(last or first)
        if high < low or high - low + len(cpus) >= limit:
            raise ParseError(f"{source}: not a CPU list (or more than {limit} CPUs)")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


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
    """Never let a counter go backwards, and never adopt an impossible jump from one reading.

    Some sources (steal time on buggy hypervisors, per-CPU counters across hotplug) move back a
    little; Prometheus would read that as a reset and rate() would spike. Values are clamped to the
    highest value seen for the same key; `clamped` counts how often that happened.

    A reading that rises by more than `max_increase` (the most the counter can grow between two
    readings, e.g. elapsed time x USER_HZ for CPU ticks) is held back, the previous value is
    exported and `rejected` counts it. Only when the next reading confirms it (is at least as
    high) is the counter moved there, so a single corrupt reading cannot freeze it.
    """

    def __init__(self) -> None:
        self._high: dict[Any, int] = {}
        self._held: dict[Any, int] = {}
        self._lock = threading.Lock()
        self.clamped = 0
        self.rejected = 0

    def __call__(self, key: Any, value: int, max_increase: float | None = None) -> int:
        with self._lock:
            high = self._high.get(key)
            if high is not None and value < high:
                self.clamped += 1
                self._held.pop(key, None)
                return high
            if high is not None and max_increase is not None and value - high > max_increase:
                held = self._held.get(key)
                if held is None or value < held:
                    self._held[key] = value
                    self.rejected += 1
                    return high
            self._held.pop(key, None)
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

    Implausible readings are rejected, not adopted; the previous total is exported and `rejected`
    counts them:
    - a value outside the counter's width is never used;
    - a drop, or a rise by more than a quarter of the range, is held back one reading. When the
      next reading goes back to the old value, it was a glitch (a torn read, a single 0, a spike)
      and is ignored. When the next reading confirms it, a drop is a wrap if the old value was
      in the upper half of the range (exact while the counter wraps less than once between two
      collections), else the kernel restarted the counter (module reloaded) and it counts from
      zero; a large rise is adopted.
    Either way the result never goes backwards.
    """

    def __init__(self, bits: int = 32) -> None:
        self._modulus = 1 << bits
        self._last: dict[Any, int] = {}
        self._total: dict[Any, int] = {}
        self._held: dict[Any, int] = {}
        self._lock = threading.Lock()
        self.rejected = 0

    def __call__(self, key: Any, raw: int) -> int:
        with self._lock:
            last = self._last.get(key)
            if not 0 <= raw < self._modulus:
                self.rejected += 1
                return self._total.get(key, 0)
            if last is None:
                self._last[key] = self._total[key] = raw
                return raw
            total, quarter = self._total[key], self._modulus >> 2
            held = self._held.pop(key, None)
            if last <= raw <= last + quarter:
                total += raw - last  # the usual case; a held reading was a glitch
            elif held is None or not held <= raw <= held + quarter:
                self._held[key] = raw  # suspicious, and not (yet) confirmed by the next reading
                self.rejected += 1
                return total
            elif raw > last:
                total += raw - last  # a large rise, confirmed
            elif last >= self._modulus >> 1:
                total += raw + self._modulus - last  # a wrap, confirmed
            else:
                total += raw  # a restart, confirmed: counts from zero
            self._last[key], self._total[key] = raw, total
            return total
