from exporter.server import negotiate_format, wants_gzip
from exporter.snapshot import OPENMETRICS, TEXT


def test_prometheus_accept_header_gets_openmetrics():
    prom = (
        "application/openmetrics-text;version=1.0.0;q=0.5,"
        "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    )
    assert negotiate_format(prom) == OPENMETRICS


def test_plain_clients_get_text():
    assert negotiate_format("") == TEXT
    assert negotiate_format("*/*") == TEXT
    assert negotiate_format("text/plain") == TEXT
    assert negotiate_format("application/openmetrics-text;q=0") == TEXT


def test_gzip_detection():
    assert wants_gzip("gzip, deflate")
    assert wants_gzip("deflate, gzip;q=0.5")
    assert not wants_gzip("deflate")
    assert not wants_gzip("")


def test_gzip_refused_with_q_0_is_not_sent():
    # Issue 11.16: q=0 means "not acceptable" (RFC 9110 12.4.2).
    assert not wants_gzip("gzip;q=0")
    assert not wants_gzip("deflate, gzip; q=0.000")
    assert not wants_gzip("gzip;q=0, *;q=0")
    assert not wants_gzip("*;q=1, gzip;q=0")  # the named coding wins over the wildcard
    assert wants_gzip("GZIP;Q=0.1")
    assert wants_gzip("identity, *;q=0.5")  # any coding, gzip included
    assert not wants_gzip("gzip;q=bogus")


def test_a_snapshot_is_encoded_once_per_format():
    import asyncio

    from exporter.metrics import GaugeMetricFamily
    from exporter.scheduling import Worker
    from exporter.snapshot import Outcome, Snapshot

    calls = []

    class Counting(Snapshot):
        def encode(self, fmt, compress):
            calls.append((fmt, compress))
            return super().encode(fmt, compress)

    async def scrape_many():
        snapshot = Counting([Outcome("x", [GaugeMetricFamily("x", "X.", value=1)], True, 0.001, True)])
        worker = Worker("test")
        try:
            bodies = await asyncio.gather(
                *(
                    snapshot.encoded(fmt, gz, worker)
                    for fmt in (TEXT, OPENMETRICS)
                    for gz in (False, True)
                    for _ in range(5)
                )
            )
        finally:
            worker.stop()
        return bodies

    bodies = asyncio.run(scrape_many())
    assert sorted(calls) == sorted({(f, g) for f in (TEXT, OPENMETRICS) for g in (False, True)})
    assert len(set(bodies)) == 4
