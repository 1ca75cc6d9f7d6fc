"""Helpers shared by collectors: bounded file reads, counter bookkeeping, periodic work."""

from __future__ import annotations

import threading
from typing import Any, Callable

from exporter.contract import ParseError, SourceUnavailable


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
