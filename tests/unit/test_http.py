from exporter.collection import OPENMETRICS, TEXT
from exporter.server import negotiate_format, wants_gzip


def test_prometheus_accept_header_gets_openmetrics():
    prom = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
            "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
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
