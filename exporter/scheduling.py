"""Running collectors: worker threads, probes, timeouts and coalesced collections.

Each collector owns one daemon worker thread. That gives three properties cheaply:
- blocking reads never run on the event loop;
- a collector stuck in the kernel (NFS, a hung netlink peer) holds only its own thread, is marked
  failed after the timeout, and is not called again until it returns, so threads never pile up;
- shutdown never waits for a stuck call (daemon threads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from prometheus_client.core import Metric

from .contract import Collector, NotReady, SourceUnavailable
from .exposition import CompactFamily, LabelSets
from .logs import log_event
from .snapshot import INLINE_ENCODE_SAMPLES, Snapshot, release_freed_heap

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
        self._collecting: concurrent.futures.Future | None = None  # the collect() call in flight
        self._joined: concurrent.futures.Future | None = None  # ... joined by a later collection

    def _submit(self, fn: Callable) -> concurrent.futures.Future:
        """Run fn on the worker; the collector counts as busy until fn returns, however long."""
        self._busy = True
        future = self.worker.submit(fn)
        future.add_done_callback(lambda _: setattr(self, "_busy", False))
        return future

    def _probe_and_start(self) -> None:
        self.collector.probe()
        if not self._started:
            self._started = True
            self.collector.start()

    async def probe(self, timeout: float) -> None:
        """Probe (and start, the first time) on the worker; records availability and the reason."""
        self._probed_at = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._submit(self._probe_and_start)), timeout)
        except SourceUnavailable as e:
            self._set_unavailable(str(e))
            return
        except TimeoutError:
            self._set_unavailable(f"probe timed out after {timeout:g}s")
            return
        except Exception as e:  # a bug or an unexpected OS error: still only this collector
            self._set_unavailable(f"probe failed: {type(e).__name__}: {e}", exc=e)
            return
        if self.available is False:
            log_event(log, logging.INFO, "collector source is now available", collector=self.name)
        self.available, self.reason = True, ""

    def _set_unavailable(self, reason: str, exc: BaseException | None = None) -> None:
        if reason != self.reason or self.available is not False:
            log_event(log, logging.WARNING, "collector unavailable", collector=self.name, reason=reason)
            if exc is not None:
                log.debug("probe traceback", exc_info=exc)
        self.available, self.reason = False, reason

    def _collect_sync(self) -> tuple[list[Metric], float]:
        start = time.perf_counter()
        families = list(self.collector.collect())
        return families, time.perf_counter() - start

    def needs_probe(self) -> bool:
        return not self.available and not self._busy and time.monotonic() - self._probed_at >= REPROBE_INTERVAL

    def begin(self) -> concurrent.futures.Future | None:
        """Start a collection on the worker; join the collect() call still running from an
        earlier collection that stopped waiting for it (its result is as fresh as any), or None
        when busy otherwise or unavailable with nothing to say about it."""
        if self._collecting is not None and not self._collecting.done():
            self._joined = self._collecting
            return self._collecting
        if self._busy:
            return None
        if self.available:
            self._collecting = self._submit(self._collect_sync)
            return self._collecting
        if type(self.collector).unavailable_families is Collector.unavailable_families:
            return None
        return self._submit(lambda: list(self.collector.unavailable_families()))

    def finish(self, future: concurrent.futures.Future | None, timeout: float, elapsed: float) -> Outcome:
        """The outcome of begin()'s future after the collection's wait ended."""
        if future is None:
            if not self.available:
                return Outcome([], False, 0.0)
            return self._failed("previous collection still running", elapsed)
        if not future.done():
            if future is self._joined:
                return self._failed("previous collection still running", elapsed)
            return self._failed(f"timed out after {timeout:g}s", elapsed)
        if not self.available:  # unavailable_families(): reported, still a failed collection
            try:
                return Outcome(future.result(), False, elapsed)
            except Exception as e:
                log.debug("unavailable_families failed", exc_info=e)
                return Outcome([], False, elapsed)
        try:
            families, duration = future.result()
        except SourceUnavailable as e:
            self._set_unavailable(str(e))
            self._probed_at = time.monotonic()
            return Outcome([], False, elapsed)
        except NotReady as e:
            if str(e) != self.last_error:
                log_event(log, logging.INFO, "collector not ready yet", collector=self.name, reason=str(e))
            self.last_error = str(e)
            return Outcome([], False, elapsed)
        except Exception as e:
            return self._failed(f"{type(e).__name__}: {e}", elapsed, exc=e)
        if self.last_error:
            log_event(log, logging.INFO, "collector recovered", collector=self.name)
        self.last_error = ""
        self.last_duration = duration
        self.last_success_time = time.time()
        return Outcome(families, True, duration)

    def _failed(self, error: str, elapsed: float, exc: BaseException | None = None) -> Outcome:
        if error != self.last_error:  # one line per distinct failure, not one per scrape
            log_event(log, logging.WARNING, "collector failed", collector=self.name, error=error)
            if exc is not None:
                log.debug("collector traceback", exc_info=exc)
        self.last_error = error
        self.last_duration = elapsed
        return Outcome([], False, elapsed)

    def close(self, timeout: float) -> None:
        """Close the collector on its own worker, waiting at most `timeout`."""
        if self._started:
            future = self.worker.submit(self.collector.close)
            try:
                future.result(timeout)
            except concurrent.futures.TimeoutError:
                log_event(log, logging.WARNING, "collector close timed out", collector=self.name)
            except Exception as e:
                log_event(log, logging.WARNING, "collector close failed", collector=self.name, error=str(e))
        self.worker.stop()


async def _all_done(futures: list[concurrent.futures.Future], timeout: float) -> None:
    """Wait until every future is done or `timeout` passed, whichever comes first.

    The workers wake the event loop once, when the last of them finishes, rather than once each:
    each wake-up is a write to the loop's self-pipe and a pass of the loop."""
    if not futures:
        return
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    remaining = len(futures)
    lock = threading.Lock()

    def finish() -> None:
        if not finished.done():
            finished.set_result(None)

    def one_done(_future) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            last = remaining == 0
        if last:
            loop.call_soon_threadsafe(finish)

    timer = loop.call_later(timeout, finish)
    for future in futures:
        future.add_done_callback(one_done)
    try:
        await finished
    finally:
        timer.cancel()


class Scheduler:
    """Coalesces scrapes: while a collection runs, every scrape waits for that same collection."""

    def __init__(self, runners: list[CollectorRunner], own_families: Callable[[], list[Metric]],
                 timeout: float):
        self.runners = runners
        self.own_families = own_families
        self.timeout = timeout
        self.encoder = Worker("encode")
        self.collections = 0
        self.ready = False
        self._release_pending = False
        self._collector_labels = LabelSets("collector")
        self._inflight: asyncio.Task | None = None
        self._inflight_budget = 0.0

    async def snapshot(self, timeout: float | None = None) -> Snapshot:
        """The result of a collection with a budget of `timeout` (at most the configured one).

        A scrape joins the collection in flight when that one's budget is at least its own;
        a scrape with a longer budget never waits on a shorter collection (one client's short
        timeout header must not fail another's scrape): it starts its own, which joins every
        collect() call still running."""
        budget = self.timeout if timeout is None else min(timeout, self.timeout)
        if self._inflight is None or self._inflight_budget < budget:
            task = asyncio.ensure_future(self._collect(budget))
            self._inflight, self._inflight_budget = task, budget
            task.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, task) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _collect(self, timeout: float) -> Snapshot:
        # One budget for probes and collections together, so a scrape never outlasts `timeout`.
        start = time.perf_counter()
        probing = [r.probe(timeout) for r in self.runners if r.needs_probe()]
        if probing:
            await asyncio.gather(*probing)
        remaining = max(0.05, timeout - (time.perf_counter() - start))
        start = time.perf_counter()
        calls = [(r, r.begin()) for r in self.runners]
        await _all_done([f for _, f in calls if f is not None], remaining)
        elapsed = time.perf_counter() - start
        outcomes = [r.finish(f, remaining, elapsed) for r, f in calls]
        success = CompactFamily("netstack_scrape_collector_success",
                                "1 if the collector's last collection succeeded, 0 if it failed or its "
                                "source is unavailable.", "gauge")
        duration = CompactFamily("netstack_scrape_collector_duration_seconds",
                                 "Time the collector's last collection took.", "gauge")
        available = CompactFamily("netstack_collector_available",
                                  "1 if the collector's source exists on this host (see / for the "
                                  "reason when 0).", "gauge")
        families: list[Metric] = []
        for runner, outcome in zip(self.runners, outcomes):
            families.extend(outcome.families)
            labels = self._collector_labels(runner.name)
            success.add(labels, 1 if outcome.success else 0)
            duration.add(labels, outcome.duration)
            available.add(labels, 1 if runner.available else 0)
        families.extend((success, duration, available))
        families.extend(self.own_families())
        snapshot = Snapshot(families)
        self.collections += 1
        self.ready = True
        if snapshot.samples >= INLINE_ENCODE_SAMPLES:
            self._release_memory_later()
        return snapshot

    def _release_memory_later(self) -> None:
        """After a large collection: once its responses are written and the snapshot is garbage
        (a second later), hand the freed heap back to the system on the encoder thread."""
        if self._release_pending:
            return
        self._release_pending = True

        def release() -> None:
            self._release_pending = False
            self.encoder.submit(release_freed_heap)

        asyncio.get_running_loop().call_later(1.0, release)

    def close(self, timeout: float = 0.5) -> None:
        """Close all collectors in parallel, bounded by `timeout` in total."""
        threads = [threading.Thread(target=r.close, args=(timeout,), daemon=True) for r in self.runners]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.encoder.stop()
