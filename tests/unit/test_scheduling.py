"""The scheduler and the collector runner with fake collectors: timeouts, a collector still busy,
probes and reprobes, NotReady, unavailable sources, recovery, and encoding failures that must
cost only their own collector. Collections are rendered with the exporter's own encoder."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref

import pytest

from exporter.contract import Collector, Context, Failed, NotReady, ParseError, SourceUnavailable
from exporter.exposition import CompactFamily
from exporter.metrics import GaugeMetricFamily
from exporter.scheduling import CollectorRunner, Scheduler
from exporter.snapshot import OPENMETRICS, TEXT
from tests.helpers import parse_metrics, value


class Fake(Collector):
    """A collector whose probe and collection take as long as a test says, and whose source is
    present or not. A sleep ends early when the test sets `release` (so no thread outlives it)."""

    def __init__(
        self, name: str, *, present: bool = True, probe_seconds: float = 0.0, collect_seconds: float = 0.0
    ):
        super().__init__(Context())
        self.name = name
        self.present = present
        self.probe_seconds = probe_seconds
        self.collect_seconds = collect_seconds
        self.error: BaseException | None = None
        self.value: float = 1
        self.probes = 0
        self.collections = 0
        self.release = threading.Event()

    def probe(self) -> None:
        self.probes += 1
        self.release.wait(self.probe_seconds)
        if not self.present:
            raise SourceUnavailable(f"{self.name} source is not there")

    def collect(self):
        self.collections += 1
        self.release.wait(self.collect_seconds)
        if not self.present:
            raise SourceUnavailable(f"{self.name} source went away")
        if self.error is not None:
            raise self.error
        return [GaugeMetricFamily(f"{self.name}_value", "A value.", value=self.value)]


class FakeModule(Fake):
    """Says which kernel module is missing while unavailable, like IPVS does."""

    def collect(self):
        families = list(super().collect())
        return [*families, GaugeMetricFamily(f"{self.name}_module_loaded", "Loaded.", value=1)]

    def unavailable_families(self):
        return [GaugeMetricFamily(f"{self.name}_module_loaded", "Loaded.", value=0)]


class Harness:
    """A scheduler over the given fakes, scraped on one event loop."""

    def __init__(self, *fakes: Fake, timeout: float = 1.0, **runner_kw):
        self.fakes = fakes
        self.runners = [CollectorRunner(f, **runner_kw) for f in fakes]
        self.scheduler = Scheduler(self.runners, list, timeout)
        self.loop = asyncio.new_event_loop()

    def snapshot(self, timeout: float | None = None):
        return self.loop.run_until_complete(self.scheduler.snapshot(timeout))

    def scrape(self, timeout: float | None = None, fmt: str = TEXT) -> dict:
        body = b"".join(self.snapshot(timeout).encode(fmt, False)).decode()
        if fmt == OPENMETRICS:
            assert body.endswith("# EOF\n")
            body = body[: -len("# EOF\n")]
        return parse_metrics(body)

    def runner(self, name: str) -> CollectorRunner:
        return next(r for r in self.runners if r.name == name)

    def wait_idle(self, name: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.runner(name).busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.runner(name).busy

    def close(self) -> None:
        for fake in self.fakes:
            fake.release.set()
        self.scheduler.close(1.0)
        self.loop.close()


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(*fakes: Fake, **kw) -> Harness:
        made.append(Harness(*fakes, **kw))
        return made[-1]

    yield make
    for h in made:
        h.close()


def events(caplog, msg: str, collector: str | None = None) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == msg and (collector is None or getattr(r, "kv", {}).get("collector") == collector)
    ]


def status(m: dict, name: str) -> tuple[float, float]:
    return (
        value(m, "netstack_scrape_collector_success", collector=name),
        value(m, "netstack_collector_available", collector=name),
    )


def test_a_collection_serves_every_collectors_families_and_their_status(harness):
    h = harness(Fake("a"), Fake("b"))
    for fmt in (TEXT, OPENMETRICS):
        m = h.scrape(fmt=fmt)
        assert value(m, "a_value") == 1 and value(m, "b_value") == 1
        assert status(m, "a") == status(m, "b") == (1, 1)
        assert value(m, "netstack_scrape_collector_duration_seconds", collector="a") >= 0
    assert [f.probes for f in h.fakes] == [1, 1]  # probed once, not once per scrape
    assert [f.collections for f in h.fakes] == [2, 2]


def test_a_slow_collection_fails_at_the_timeout_and_only_that_collector(harness, caplog):
    h = harness(Fake("slow", collect_seconds=30), Fake("fast"), timeout=0.3)
    start = time.monotonic()
    m = h.scrape()
    assert time.monotonic() - start < 1.0
    assert status(m, "slow") == (0, 1)
    assert status(m, "fast") == (1, 1) and value(m, "fast_value") == 1
    assert h.runner("slow").last_error == "timed out after 0.3s"
    assert len(events(caplog, "collector failed", "slow")) == 1


def test_a_collector_still_running_is_not_called_again_and_recovers(harness, caplog):
    caplog.set_level(logging.INFO)
    slow = Fake("slow", collect_seconds=30)
    h = harness(slow, timeout=0.2)
    assert status(h.scrape(), "slow") == (0, 1)
    m = h.scrape()  # waits for the call still running instead of queueing another behind it
    assert status(m, "slow") == (0, 1)
    assert h.runner("slow").last_error == "timed out after 0.2s"
    assert slow.collections == 1  # no second call piled on the stuck one
    assert len(events(caplog, "collector failed", "slow")) == 1
    slow.collect_seconds = 0
    slow.release.set()
    h.wait_idle("slow")
    m = h.scrape()
    assert status(m, "slow") == (1, 1) and value(m, "slow_value") == 1
    assert h.runner("slow").last_error == ""
    assert len(events(caplog, "collector recovered", "slow")) == 1


def test_a_later_scrape_gets_the_result_of_the_call_still_running(harness):
    # A short scrape (a low timeout header) gave up on a 0.5 s collection; the next scrape, with
    # time to wait, gets that same call's result rather than a failure.
    slow = Fake("slow", collect_seconds=0.5)
    h = harness(slow, timeout=2.0)
    assert status(h.scrape(timeout=0.1), "slow") == (0, 1)
    start = time.monotonic()
    m = h.scrape()
    assert time.monotonic() - start < 1.0
    assert status(m, "slow") == (1, 1) and value(m, "slow_value") == 1
    assert slow.collections == 1


def test_a_stuck_call_holds_nothing_per_scrape(harness):
    stuck = Fake("stuck", collect_seconds=30)
    h = harness(stuck, timeout=0.01)
    for _ in range(50):
        h.scrape()
    job = h.runner("stuck")._job
    assert stuck.collections == 1 and job is not None and not job.done()
    assert job._waiters == []  # every scrape's callback removed when it stopped waiting


def test_concurrent_scrapes_share_one_collection(harness):
    fake = Fake("a", collect_seconds=0.2)
    h = harness(fake)

    async def burst():
        return await asyncio.gather(*(h.scheduler.snapshot() for _ in range(10)))

    snapshots = h.loop.run_until_complete(burst())
    assert len({id(s) for s in snapshots}) == 1
    assert fake.collections == 1 and h.scheduler.collections == 1


def test_a_probe_timeout_is_a_failure_not_an_absence(harness, caplog):
    # Issue 11.1: the source exists, its probe is only slow; available must not drop to 0 (the
    # alert `success == 0 and available == 1` has to see it), and it must not wait 60 s.
    slow = Fake("slow", probe_seconds=30)
    h = harness(slow, Fake("other"), timeout=0.2)
    m = h.scrape()
    assert status(m, "slow") == (0, 1)
    assert h.runner("slow").available is not False
    assert "probe timed out after 0.2s" in h.runner("slow").last_error
    assert not events(caplog, "collector unavailable", "slow")
    assert len(events(caplog, "collector failed", "slow")) == 1
    slow.probe_seconds = 0
    slow.release.set()  # the probe returns: the source is there
    h.wait_idle("slow")
    m = h.scrape()
    assert status(m, "slow") == (1, 1) and value(m, "slow_value") == 1
    assert slow.probes == 1  # the late probe's result counted; no second probe needed


def test_a_slow_probe_does_not_take_the_budget_of_the_other_collectors(harness):
    # Issue 11.2: each collector has the scrape's whole budget on its own thread. Here one
    # collector's probe takes 0.6 s of a 1 s budget while another collection takes 0.5 s.
    h = harness(Fake("probing", probe_seconds=0.6), Fake("collecting", collect_seconds=0.5), timeout=1.0)
    start = time.monotonic()
    m = h.scrape()
    assert time.monotonic() - start < 1.5
    assert status(m, "probing") == (1, 1)
    assert status(m, "collecting") == (1, 1)


def test_the_scrape_in_which_a_source_disappears_serves_its_unavailable_families(harness, caplog):
    # Issue 11.3: no one-scrape gap in <name>_module_loaded when the module is unloaded.
    ipvs = FakeModule("ipvs")
    h = harness(ipvs)
    m = h.scrape()
    assert value(m, "ipvs_module_loaded") == 1 and status(m, "ipvs") == (1, 1)
    ipvs.present = False
    m = h.scrape()
    assert value(m, "ipvs_module_loaded") == 0
    assert status(m, "ipvs") == (0, 0)
    assert h.runner("ipvs").reason == "ipvs source went away"
    m = h.scrape()  # and the scrapes after it, without probing again before the interval
    assert value(m, "ipvs_module_loaded") == 0 and ipvs.probes == 1
    assert len(events(caplog, "collector unavailable", "ipvs")) == 1


def test_an_unavailable_source_is_reported_once_and_not_collected(harness, caplog):
    gone = FakeModule("gone", present=False)
    plain = Fake("plain", present=False)
    h = harness(gone, plain)
    for _ in range(3):
        m = h.scrape()
        assert status(m, "gone") == (0, 0) and status(m, "plain") == (0, 0)
        assert value(m, "gone_module_loaded") == 0
        assert not [k for k in m if k[0] == "plain_value"]
    assert gone.collections == plain.collections == 0
    assert gone.probes == plain.probes == 1  # not again before the reprobe interval
    assert h.runner("plain").reason == "plain source is not there"
    assert len(events(caplog, "collector unavailable", "plain")) == 1


def test_an_unavailable_source_is_probed_again_after_the_interval(harness, caplog):
    caplog.set_level(logging.INFO)
    later = Fake("later", present=False)
    h = harness(later, reprobe_interval=0.3)
    assert status(h.scrape(), "later") == (0, 0)
    assert status(h.scrape(), "later") == (0, 0) and later.probes == 1
    later.present = True
    time.sleep(0.35)
    m = h.scrape()  # probed again, and collected in the same scrape
    assert later.probes == 2
    assert status(m, "later") == (1, 1) and value(m, "later_value") == 1
    assert len(events(caplog, "collector source is now available", "later")) == 1


def test_not_ready_is_success_0_logged_once_at_info(harness, caplog):
    caplog.set_level(logging.INFO)
    loading = Fake("loading")
    loading.error = NotReady("BPF program still loading")
    h = harness(loading)
    for _ in range(3):
        assert status(h.scrape(), "loading") == (0, 1)
    lines = events(caplog, "collector not ready yet", "loading")
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert not events(caplog, "collector failed", "loading")
    loading.error = None
    assert status(h.scrape(), "loading") == (1, 1)


def test_a_failure_is_logged_once_per_distinct_error_then_recovers(harness, caplog):
    caplog.set_level(logging.DEBUG)
    flaky = Fake("flaky")
    h = harness(flaky)
    flaky.error = ValueError("bad line 3")
    for _ in range(3):
        assert status(h.scrape(), "flaky") == (0, 1)
    flaky.error = ValueError("bad line 4")
    h.scrape()
    failed = events(caplog, "collector failed", "flaky")
    assert [r.kv["error"] for r in failed] == ["ValueError: bad line 3", "ValueError: bad line 4"]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in failed)
    assert len(events(caplog, "collector traceback")) == 2  # the trace, at debug only
    flaky.error = None
    assert status(h.scrape(), "flaky") == (1, 1)
    assert len(events(caplog, "collector recovered", "flaky")) == 1


class Unprintable(Fake):
    """Yields a value the encoder cannot print (a 5,000-digit integer: str() refuses it)."""

    def collect(self):
        families = list(super().collect())
        huge = CompactFamily(f"{self.name}_huge", "Too many digits.", "counter")
        huge.add({"cpu": "0"}, 10**5000)
        return [*families, huge]


class BrokenFamily(Fake):
    def collect(self):
        class Broken(GaugeMetricFamily):
            @property
            def samples(self):
                raise RuntimeError("broken family")

            @samples.setter
            def samples(self, _):
                pass

        return [*super().collect(), Broken(f"{self.name}_broken", "Broken.")]


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
@pytest.mark.parametrize("bad_class", [Unprintable, BrokenFamily])
def test_a_family_that_cannot_be_encoded_fails_only_its_collector(harness, caplog, fmt, bad_class):
    # Issue 11.7: the whole /metrics must not fail because of one collector's value.
    h = harness(bad_class("bad"), Fake("good"))
    m = h.scrape(fmt=fmt)
    assert value(m, "good_value") == 1 and status(m, "good") == (1, 1)
    assert status(m, "bad") == (0, 1)
    assert not [k for k in m if k[0].startswith("bad_")]  # none of its series, not half of them
    assert "encod" in h.runner("bad").last_error
    assert len(events(caplog, "collector failed", "bad")) == 1
    h.scrape(fmt=fmt)
    assert len(events(caplog, "collector failed", "bad")) == 1  # once, not once per scrape


class FailingReading(Fake):
    """A source that answers, and what it says is a failure (the fsync probe errors)."""

    def collect(self):
        families = list(super().collect())
        raise Failed("every probe fails: permission_denied", families)


def test_a_failed_reading_serves_its_families_with_success_0(harness, caplog):
    h = harness(FailingReading("probe"), Fake("fast"))
    m = h.scrape()
    assert status(m, "probe") == (0, 1)  # failing, not absent
    assert value(m, "probe_value") == 1  # its families (error counters) are still served
    assert status(m, "fast") == (1, 1)
    assert h.runner("probe").last_error == "every probe fails: permission_denied"
    h.scrape()
    assert len(events(caplog, "collector failed", "probe")) == 1


class BigReadThenError(Fake):
    """Holds a large buffer in a local when its parse fails, as a collector reading a big file
    does (ipvs.read_table_text's chunks when the table passes its limit)."""

    def collect(self):
        self.collections += 1
        buffer = Buffer()
        self.buffers.append(weakref.ref(buffer))
        raise ParseError("table larger than the limit")


class Buffer:
    pass


def test_a_failed_collections_locals_are_freed_at_once_not_at_the_next_gc(harness):
    # Issue 11.10: the exception kept the failed call's frames (and a 64 MiB read in them) alive
    # in a reference cycle with the job, freed only by the cyclic GC: RSS rose by the size of
    # the read on every failing scrape (to ~800 MB with a 70 MiB /proc/net/ip_vs).
    big = BigReadThenError("big")
    big.buffers = []
    h = harness(big)
    gc.disable()
    try:
        for _ in range(3):
            assert status(h.scrape(), "big") == (0, 1)
        assert [ref() for ref in big.buffers] == [None, None, None]
    finally:
        gc.enable()
