"""exporter.metrics builds the same families as prometheus_client's custom-collector classes
(which the exporter no longer imports at run time): names, types, units and every sample."""

from __future__ import annotations

import math
import random

import prometheus_client.core as reference
import pytest
from prometheus_client.utils import floatToGoString

from exporter import metrics

BUCKETS = [("0.001", 1), ("1", 4), ("+Inf", 9)]


def families(module):
    gauge = module.GaugeMetricFamily("queue", "h", labels=["cpu", "mode"])
    gauge.add_metric(["0", "steal"], 5.5)
    gauge.add_metric(["1", "idle"], 7, timestamp=12.5)
    histogram = module.HistogramMetricFamily("wait_seconds", "h", labels=["vector"])
    histogram.add_metric(["NET_RX"], BUCKETS, 3.5)
    histogram.add_metric(["NET_TX"], BUCKETS, None)  # no sum: buckets only
    return [
        module.GaugeMetricFamily("plain", "help text", value=3),
        module.GaugeMetricFamily("duration", "h", value=1, unit="seconds"),
        gauge,
        module.CounterMetricFamily("drops_total", "h", value=3),  # _total dropped from the name
        module.CounterMetricFamily("resets", "h", value=3, created=5.0),
        module.HistogramMetricFamily("latency", "h", buckets=BUCKETS, sum_value=0.25),
        module.HistogramMetricFamily("negative", "h", buckets=[("-1", 1), ("+Inf", 2)], sum_value=1.0),
        histogram,
    ]


def shape(family) -> tuple:
    return (
        family.name,
        family.documentation,
        family.type,
        family.unit,
        [(s.name, s.labels, s.value, s.timestamp) for s in family.samples],
    )


def test_families_are_prometheus_clients():
    assert [shape(f) for f in families(metrics)] == [shape(f) for f in families(reference)]


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.GaugeMetricFamily("x", "h", value=1, labels=["a"]),
        lambda m: m.CounterMetricFamily("x", "h", value=1, labels=["a"]),
        lambda m: m.HistogramMetricFamily("x", "h", sum_value=1.0),
        lambda m: m.Metric("x", "h", "bogus"),
    ],
)
def test_the_same_misuse_is_refused(make):
    with pytest.raises(ValueError):
        make(reference)
    with pytest.raises(ValueError):
        make(metrics)


def test_names_outside_the_classic_syntax_are_refused():
    # (prometheus_client now admits UTF-8 names; the text format 0.0.4 that we also write does not)
    for name in ("1x", "a-b", "a b", ""):
        with pytest.raises(ValueError):
            metrics.Metric(name, "h", "gauge")


def test_bucket_bounds_are_written_as_go_writes_them():
    rng = random.Random(7)
    values = [0.0, 1e-9, 0.5, 1e6, 1e7, 1e21, 3.14159e10, 5e-324, math.inf, -math.inf, math.nan]
    values += [rng.random() * 10 ** rng.randint(-12, 25) for _ in range(5000)]
    assert [metrics.go_float(v) for v in values] == [floatToGoString(v) for v in values]
    assert metrics.go_float(1e6) == "1e+06"
