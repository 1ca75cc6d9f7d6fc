"""Running collectors: worker threads, timeouts, coalescing and the once-per-collection encoding.

Each collector owns one daemon worker thread. That gives three properties cheaply:
- blocking reads never run on the event loop;
- a collector stuck in the kernel (NFS, a hung netlink peer) holds only its own thread, is marked
  failed after the timeout, and is not called again until it returns, so threads never pile up;
- shutdown never waits for a stuck call (daemon threads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client import exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics

from collectors.base import Collector, SourceUnavailable

from .logs import event

log = logging.getLogger("netstack.exporter")

# How often an unavailable collector's source is looked for again (kube-proxy loads ip_vs after
# we start; conntrack appears with the first nftables rule).
REPROBE_INTERVAL = 60.0


class Worker:
    """One daemon thread running submitted calls in order."""

    def __init__(self, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"worker-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # delivered to the awaiting coroutine
                future.set_exception(e)

    def stop(self) -> None:
        self._queue.put(None)


@dataclass
class Outcome:
    families: list[Metric]
    success: bool
    duration: float


class CollectorRunner:
    """One enabled collector: availability, its worker, its last result and error."""

    def __init__(self, collector: Collector):
        self.collector = collector
        self.name = collector.name
        self.worker = Worker(collector.name)
        self.available: bool | None = None  # None until probed
        self.reason = ""  # why unavailable
        self.last_error = ""
        self.last_duration: float | None = None
        self.last_success_time: float | None = None
        self._probed_at = -REPROBE_INTERVAL
        self._started = False
        self._busy = False

    async def _call(self, fn: Callable, timeout: float):
        """Run fn on the worker; raise TimeoutError after `timeout` (the call keeps its thread)."""
        self._busy = True
        future = self.worker.submit(fn)
        future.add_done_callback(lambda _: setattr(self, "_busy", False))
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def _probe_and_start(self) -> None:
        self.collector.probe()
        if not self._started:
            self._started = True
            self.collector.start()

    async def ensure_available(self, timeout: float) -> bool:
        if self.available or time.monotonic() - self._probed_at < REPROBE_INTERVAL:
            return bool(self.available)
        if self._busy:
            return False
        self._probed_at = time.monotonic()
        try:
            await self._call(self._probe_and_start, timeout)
        except SourceUnavailable as e:
            self._set_unavailable(str(e))
            return False
        except TimeoutError:
            self._set_unavailable(f"probe timed out after {timeout:g}s")
            return False
        except Exception as e:  # a bug or an unexpected OS error: still only this collector
            self._set_unavailable(f"probe failed: {type(e).__name__}: {e}", exc=e)
            return False
        if self.available is False:
            event(log, logging.INFO, "collector source is now available", collector=self.name)
        self.available, self.reason = True, ""
        return True

    def _set_unavailable(self, reason: str, exc: BaseException | None = None) -> None:
        if reason != self.reason or self.available is not False:
            event(log, logging.WARNING, "collector unavailable", collector=self.name, reason=reason)
            if exc is not None:
                log.debug("probe traceback", exc_info=exc)
        self.available, self.reason = False, reason

    def _collect_sync(self) -> tuple[list[Metric], float]:
        start = time.perf_counter()
        families = list(self.collector.collect())
        return families, time.perf_counter() - start

    async def collect(self, timeout: float) -> Outcome:
        start = time.perf_counter()
        if not await self.ensure_available(timeout):
            return Outcome([], False, time.perf_counter() - start)
        if self._busy:
            return self._failed("previous collection still running", start)
        try:
            families, duration = await self._call(self._collect_sync, timeout)
        except TimeoutError:
            return self._failed(f"timed out after {timeout:g}s", start)
        except SourceUnavailable as e:
            self._set_unavailable(str(e))
            self._probed_at = time.monotonic()
            return Outcome([], False, time.perf_counter() - start)
        except Exception as e:
            return self._failed(f"{type(e).__name__}: {e}", start, exc=e)
        if self.last_error:
            event(log, logging.INFO, "collector recovered", collector=self.name)
        self.last_error = ""
        self.last_duration = duration
        self.last_success_time = time.time()
        return Outcome(families, True, duration)

    def _failed(self, error: str, start: float, exc: BaseException | None = None) -> Outcome:
        if error != self.last_error:  # one line per distinct failure, not one per scrape
            event(log, logging.WARNING, "collector failed", collector=self.name, error=error)
            if exc is not None:
                log.debug("collector traceback", exc_info=exc)
        self.last_error = error
        self.last_duration = time.perf_counter() - start
        return Outcome([], False, self.last_duration)

    def close(self, timeout: float) -> None:
        """Close the collector on its own worker, waiting at most `timeout`."""
        if self._started:
            future = self.worker.submit(self.collector.close)
            try:
                future.result(timeout)
            except concurrent.futures.TimeoutError:
                event(log, logging.WARNING, "collector close timed out", collector=self.name)
            except Exception as e:
                event(log, logging.WARNING, "collector close failed", collector=self.name, error=str(e))
        self.worker.stop()


class _Families:
    """Adapter: prometheus_client's encoders want an object with collect()."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


OPENMETRICS = "openmetrics"
TEXT = "text"
CONTENT_TYPES = {
    TEXT: "text/plain; version=0.0.4; charset=utf-8",
    OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
}


class Snapshot:
    """The metric families of one collection, encoded at most once per format and encoding."""

    def __init__(self, families: list[Metric]):
        self.families = families
        self._encoded: dict[tuple[str, bool], asyncio.Future] = {}

    def _encode(self, fmt: str, compress: bool) -> bytes:
        source = _Families(self.families)
        body = openmetrics.generate_latest(source) if fmt == OPENMETRICS else exposition.generate_latest(source)
        return gzip.compress(body, compresslevel=1, mtime=0) if compress else body

    async def encoded(self, fmt: str, compress: bool, worker: Worker) -> bytes:
        key = (fmt, compress)
        future = self._encoded.get(key)
        if future is None:
            future = asyncio.wrap_future(worker.submit(lambda: self._encode(fmt, compress)))
            self._encoded[key] = future
        return await asyncio.shield(future)


class Scheduler:
    """Coalesces scrapes: while a collection runs, every scrape waits for that same collection."""

    def __init__(self, runners: list[CollectorRunner], static_families: Callable[[], list[Metric]],
                 timeout: float):
        self.runners = runners
        self.static_families = static_families
        self.timeout = timeout
        self.encoder = Worker("encode")
        self.collections = 0
        self.ready = False
        self.last: Snapshot | None = None
        self._inflight: asyncio.Task | None = None

    async def snapshot(self, timeout: float | None = None) -> Snapshot:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._collect(min(timeout or self.timeout, self.timeout)))
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, _task) -> None:
        self._inflight = None

    async def _collect(self, timeout: float) -> Snapshot:
        outcomes = await asyncio.gather(*(r.collect(timeout) for r in self.runners))
        success = GaugeMetricFamily("netstack_scrape_collector_success",
                                    "1 if the collector's last collection succeeded, 0 if it failed or its "
                                    "source is unavailable.", labels=["collector"])
        duration = GaugeMetricFamily("netstack_scrape_collector_duration_seconds",
                                     "Time the collector's last collection took.", labels=["collector"])
        available = GaugeMetricFamily("netstack_collector_available",
                                      "1 if the collector's source exists on this host (see / for the "
                                      "reason when 0).", labels=["collector"])
        families: list[Metric] = []
        for runner, outcome in zip(self.runners, outcomes):
            families.extend(outcome.families)
            success.add_metric([runner.name], 1.0 if outcome.success else 0.0)
            duration.add_metric([runner.name], outcome.duration)
            available.add_metric([runner.name], 1.0 if runner.available else 0.0)
        families.extend((success, duration, available))
        families.extend(self.static_families())
        snapshot = Snapshot(families)
        self.collections += 1
        self.last = snapshot
        self.ready = True
        return snapshot

    def close(self, timeout: float = 0.5) -> None:
        """Close all collectors in parallel, bounded by `timeout` in total."""
        threads = [threading.Thread(target=r.close, args=(timeout,), daemon=True) for r in self.runners]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.encoder.stop()
