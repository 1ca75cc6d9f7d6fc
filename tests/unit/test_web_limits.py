"""The scrape timeout header (floor, garbage) and coalescing across clients with different
timeouts; the connection cap; the rate-limited event-loop error log."""

from __future__ import annotations

import asyncio
import logging

from exporter.listener import RESERVED_FDS, LoopErrorLog, connection_cap
from exporter.server import TIMEOUT_FLOOR, TIMEOUT_MARGIN, scrape_timeout
from exporter.snapshot import TEXT
from tests.helpers import parse_metrics
from tests.unit.test_scheduling import Fake, status
from tests.unit.test_scheduling import harness as harness  # the fixture


def test_scrape_timeout_header_parsing():
    assert scrape_timeout("10") == 10 - TIMEOUT_MARGIN
    assert scrape_timeout("0.7") == TIMEOUT_FLOOR  # 0.2 s would leave collectors nothing
    assert scrape_timeout("0.001") == TIMEOUT_FLOOR
    for bad in (None, "", "0", "-1", "-0", "NaN", "nan", "inf", "-inf", "Infinity", "garbage", "1s", "0x10"):
        assert scrape_timeout(bad) is None, bad


def test_a_short_timeout_scrape_never_shortens_a_longer_ones_collection(harness):
    """Client A asks for the floor while a 0.8 s collector runs; client B, arriving during A's
    collection with no header, must not share A's short collection: it gets the slow value."""
    slow = Fake("slow", collect_seconds=0.8)
    h = harness(slow, Fake("fast"), timeout=5.0)

    async def two_clients():
        a = asyncio.ensure_future(h.scheduler.snapshot(scrape_timeout("0.001")))
        await asyncio.sleep(0.1)
        b = asyncio.ensure_future(h.scheduler.snapshot(scrape_timeout(None)))
        return await a, await b

    snap_a, snap_b = h.loop.run_until_complete(two_clients())
    m_a = parse_metrics(b"".join(snap_a.encode(TEXT, False)).decode())
    m_b = parse_metrics(b"".join(snap_b.encode(TEXT, False)).decode())
    assert status(m_a, "slow")[0] == 0  # A asked for 0.5 s and got what fit in it
    assert status(m_b, "slow")[0] == 1 and status(m_b, "fast")[0] == 1
    assert slow.collections == 1  # B joined the call A had started, no second thread
    # and the next normal scrape is not failed by A's timed-out collection either
    assert status(h.scrape(), "slow")[0] == 1


def test_same_budget_scrapes_share_one_collection(harness):
    fake = Fake("a", collect_seconds=0.2)
    h = harness(fake, timeout=5.0)

    async def pair():
        first = asyncio.ensure_future(h.scheduler.snapshot(4.5))
        await asyncio.sleep(0.05)
        return await asyncio.gather(first, h.scheduler.snapshot(4.5), h.scheduler.snapshot(1.0))

    snapshots = h.loop.run_until_complete(pair())
    assert len({id(s) for s in snapshots}) == 1 and fake.collections == 1


def test_connection_cap_stays_below_the_open_file_limit():
    assert connection_cap(0, 1024) == 1024 - RESERVED_FDS
    assert connection_cap(100, 1024) == 100
    assert connection_cap(5000, 1024) == 1024 - RESERVED_FDS  # never above what the fds allow
    assert connection_cap(0, 100) == 16


def test_loop_errors_are_logged_once_a_second_with_a_count(caplog):
    async def flood():
        loop = asyncio.get_running_loop()
        handler = LoopErrorLog(loop)
        for _ in range(500):
            handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                },
            )
        await asyncio.sleep(1.2)
        handler(loop, {"message": "another error"})

    with caplog.at_level(logging.ERROR, logger="netstack.web"):
        asyncio.run(flood())
    lines = [(r.getMessage(), r.kv["count"]) for r in caplog.records]
    assert lines == [
        ("socket.accept() out of system resource", 1),
        ("socket.accept() out of system resource", 499),
        ("another error", 1),
    ]
    assert caplog.records[0].kv["error"] == "Too many open files"
