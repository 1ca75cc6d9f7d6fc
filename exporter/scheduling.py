"""Running collectors: worker threads, probes, timeouts and coalesced collections.

Each collector owns one daemon worker thread. That gives three properties cheaply:
- blocking reads never run on the event loop;
- a collector stuck in the kernel (NFS, a hung netlink peer) holds only its own thread, is marked
  failed after the timeout, and is not called again until it returns, so threads never pile up;
- shutdown never waits for a stuck call (daemon threads).

In a collection every collector has the whole budget on its own thread: a probe when one is due,
then collect(), in parallel with the others, so a slow one fails only itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence

from .contract import Collector, Failed, NotReady, SourceUnavailable
from .logs import log_event
from .metrics import Metric
from .snapshot import INLINE_ENCODE_SAMPLES, Outcome, Snapshot, release_freed_heap

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
                # The traceback keeps the failed call's frames, and the job keeps the exception
                # in a cycle only the GC breaks: clear their locals (a big read that failed its
                # limit) now. File and line numbers stay for the debug traceback.
                traceback.clear_frames(e.__traceback__)
                future.set_exception(e)

    def stop(self) -> None:
        self._queue.put(None)


class Job:
    """A call on a worker that several collections may wait for in turn: one that stops waiting
    leaves it to the next. A waiter's callback goes when it stops waiting, so a call stuck for
    days holds nothing per scrape."""

    def __init__(self, future: concurrent.futures.Future):
        self.future = future
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []
        future.add_done_callback(self._finished)

    def done(self) -> bool:
        return self.future.done()

    def result(self):
        return self.future.result()

    def notify(self, fn: Callable[[], None]) -> None:
        """Call fn once the call has returned (on the worker's thread), or now if it has."""
        with self._lock:
            if not self.future.done():
                self._waiters.append(fn)
                return
        fn()

    def forget(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._waiters:
                self._waiters.remove(fn)

    def _finished(self, _future) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for fn in waiters:
            fn()


class CollectorRunner:
    """One enabled collector: availability, its worker, its last result and error.

    Availability is what probe() (or a SourceUnavailable from collect()) said, whenever it says
    it: a probe that outlasts the scrape is a failure of that scrape, and its answer still counts
    when it comes. Only a source known to be absent makes the collector unavailable."""

    def __init__(self, collector: Collector, reprobe_interval: float = REPROBE_INTERVAL):
        self.collector = collector
        self.name = collector.name
        self.worker = Worker(collector.name)
        self.reprobe_interval = reprobe_interval
        self.available: bool | None = None  # None until a probe has answered
        self.reason = ""  # why unavailable
        self.last_error = ""
        self.last_duration: float | None = None
        self.last_success_time: float | None = None
        self._probed_at: float | None = None
        self._probing = False
        self._started = False
        self._encoding_failed = False
        self._job: Job | None = None  # the probe and collection in flight
        self._reports_unavailable = type(collector).unavailable_families is not Collector.unavailable_families

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done()

    def begin(self) -> Job | None:
        """Start this collector's part of a collection on its worker (a probe when due, then
        collect() or unavailable_families()). A call still running from an earlier collection
        that stopped waiting for it is joined instead: its result is as fresh as any, and a
        stuck collector holds one thread, never more. None when the source is absent and the
        collector has nothing to say about that."""
        if self.busy:
            return self._job
        probe = self._probe_due()
        if not probe and self.available is False and not self._reports_unavailable:
            return None
        self._job = Job(self.worker.submit(lambda: self._run(probe)))
        return self._job

    def _probe_due(self) -> bool:
        if self.available:
            return False
        return self._probed_at is None or time.monotonic() - self._probed_at >= self.reprobe_interval

    def _run(self, probe: bool) -> tuple[list[Metric], float, bool]:
        """On the worker: (families, seconds collect() took, whether they come from collect())."""
        if probe:
            self._probing = True
            try:
                self._probe()
            finally:
                self._probing = False
        start = time.perf_counter()
        if self.available:
            try:
                return list(self.collector.collect()), time.perf_counter() - start, True
            except SourceUnavailable as e:  # gone since the probe: say so in this very scrape
                self._probed_at = time.monotonic()
                self._set_unavailable(str(e))
        return self._unavailable_families(), time.perf_counter() - start, False

    def _probe(self) -> None:
        """Probe (and start, the first time); records availability and the reason."""
        self._probed_at = time.monotonic()
        try:
            self.collector.probe()
            if not self._started:
                self._started = True
                self.collector.start()
        except SourceUnavailable as e:
            self._set_unavailable(str(e))
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

    def _unavailable_families(self) -> list[Metric]:
        if not self._reports_unavailable:
            return []
        try:
            return list(self.collector.unavailable_families())
        except Exception as e:
            log.debug("unavailable_families failed", exc_info=e)
            return []

    def finish(self, job: Job | None, timeout: float, elapsed: float) -> Outcome:
        """The outcome of begin()'s job after the collection's wait ended."""
        if job is None:
            return self._outcome([], False, 0.0)
        if not job.done():
            what = "probe timed out" if self._probing else "timed out"
            return self._failed(f"{what} after {timeout:g}s", elapsed)
        try:
            families, duration, collected = job.result()
        except Failed as e:  # served, and a failure all the same
            self._failed(str(e), elapsed)
            return self._outcome(e.families, False, elapsed)
        except NotReady as e:
            if str(e) != self.last_error:
                log_event(log, logging.INFO, "collector not ready yet", collector=self.name, reason=str(e))
            self.last_error = str(e)
            return self._outcome([], False, elapsed)
        except Exception as e:
            return self._failed(f"{type(e).__name__}: {e}", elapsed, exc=e)
        if not collected:  # unavailable: what unavailable_families() said, a failed collection
            return self._outcome(families, False, elapsed)
        if not self._encoding_failed:  # else recovered only once its families encode again
            self._recovered()
        self.last_duration = duration
        self.last_success_time = time.time()
        return self._outcome(families, True, duration)

    def encoded(self, error: BaseException | None) -> None:
        """How encoding this collector's families went (the snapshot says, once per format): a
        family the encoder cannot write fails the collector, as an exception in collect() does."""
        if error is not None:
            self._encoding_failed = True
            self._failed(
                f"encoding failed: {type(error).__name__}: {error}", self.last_duration or 0.0, exc=error
            )
        elif self._encoding_failed:
            self._encoding_failed = False
            self._recovered()

    def _outcome(self, families: list[Metric], success: bool, duration: float) -> Outcome:
        return Outcome(self.name, families, success, duration, self.available is not False, self.encoded)

    def _recovered(self) -> None:
        if self.last_error:
            log_event(log, logging.INFO, "collector recovered", collector=self.name)
        self.last_error = ""

    def _failed(self, error: str, elapsed: float, exc: BaseException | None = None) -> Outcome:
        if error != self.last_error:  # one line per distinct failure, not one per scrape
            log_event(log, logging.WARNING, "collector failed", collector=self.name, error=error)
            if exc is not None:
                log.debug("collector traceback", exc_info=exc)
        self.last_error = error
        self.last_duration = elapsed
        return self._outcome([], False, elapsed)

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


async def _all_done(jobs: list[Job], timeout: float) -> None:
    """Wait until every job is done or `timeout` passed, whichever comes first.

    The workers wake the event loop once, when the last of them finishes, rather than once each:
    each wake-up is a write to the loop's self-pipe and a pass of the loop."""
    if not jobs:
        return
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    remaining = len(jobs)
    lock = threading.Lock()

    def finish() -> None:
        if not finished.done():
            finished.set_result(None)

    def one_done() -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            last = remaining == 0
        if last:
            loop.call_soon_threadsafe(finish)

    timer = loop.call_later(timeout, finish)
    for job in jobs:
        job.notify(one_done)
    try:
        await finished
    finally:
        timer.cancel()
        for job in jobs:
            job.forget(one_done)


class Scheduler:
    """Coalesces scrapes: while a collection runs, every scrape waits for that same collection."""

    def __init__(
        self, runners: list[CollectorRunner], own_families: Callable[[], Sequence[Metric]], timeout: float
    ):
        self.runners = runners
        self.own_families = own_families
        self.timeout = timeout
        self.encoder = Worker("encode")
        self.collections = 0
        self.collected_at = float("-inf")  # monotonic time of the last collection
        self.ready = False
        self._release_pending = False
        self._inflight: asyncio.Task | None = None
        self._inflight_budget = 0.0
        self._own_error = ""
        # Called with every new snapshot (the landing page's verdict history).
        self.listeners: list[Callable[[Snapshot], None]] = []

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
        start = time.perf_counter()
        calls = [(r, r.begin()) for r in self.runners]
        await _all_done([job for _, job in calls if job is not None], timeout)
        elapsed = time.perf_counter() - start
        outcomes = [r.finish(job, timeout, elapsed) for r, job in calls]
        snapshot = Snapshot(outcomes, self._own_families())
        self.collections += 1
        self.collected_at = time.monotonic()
        self.ready = True
        for listener in self.listeners:
            try:
                listener(snapshot)
            except Exception as e:  # the landing page's history must never fail a scrape
                log_event(log, logging.WARNING, "snapshot listener failed", error=f"{type(e).__name__}: {e}")
        if snapshot.samples >= INLINE_ENCODE_SAMPLES:
            self._release_memory_later()
        return snapshot

    def _own_families(self) -> list[Metric]:
        try:
            families = list(self.own_families())
        except Exception as e:  # our own /proc/self (out of descriptors?): not worth a failed scrape
            error = f"{type(e).__name__}: {e}"
            if error != self._own_error:
                log_event(log, logging.WARNING, "exporter self-metrics failed", error=error)
            self._own_error = error
            return []
        self._own_error = ""
        return families

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
