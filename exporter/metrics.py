"""Metric families as collectors build them: the data model of prometheus_client's custom
collectors (Metric, Sample, GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily), with
the same names, arguments and samples, so a family built here reads the same everywhere.

The exporter does not import prometheus_client at run time: the package's import pulls in its
HTTP server, WSGI and urllib stacks, about 5 MB of resident memory on every node for classes of
a few lines. The tests still parse our output with prometheus_client's parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

TYPES = ("counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None
    exemplar: Any = None


class Metric:
    """One metric family: name, help, type, unit and its samples."""

    def __init__(self, name: str, documentation: str, typ: str, unit: str = ""):
        if unit and not name.endswith("_" + unit):
            name += "_" + unit
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name: {name!r}")
        if typ == "untyped":
            typ = "unknown"
        if typ not in TYPES:
            raise ValueError(f"invalid metric type: {typ!r}")
        self.name, self.documentation, self.type, self.unit = name, documentation, typ, unit
        self.samples: list[Sample] = []

    def add_sample(
        self, name: str, labels: dict[str, str], value: float, timestamp: float | None = None
    ) -> None:
        self.samples.append(Sample(name, labels, value, timestamp))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Metric)
            and (self.name, self.documentation, self.type, self.unit)
            == (other.name, other.documentation, other.type, other.unit)
            and self.samples == other.samples
        )

    def __repr__(self) -> str:
        return f"Metric({self.name}, {self.documentation}, {self.type}, {self.unit}, {self.samples})"


class _Family(Metric):
    """A family whose samples share label names, given once; a value alone makes one sample."""

    def __init__(
        self, name: str, documentation: str, typ: str, labels: Sequence[str] | None, unit: str, value: Any
    ):
        if labels is not None and value is not None:
            raise ValueError("give a value or label names, not both")
        super().__init__(name, documentation, typ, unit)
        self._labelnames = tuple(labels or ())

    def _labels(self, values: Sequence[str]) -> dict[str, str]:
        return dict(zip(self._labelnames, values))


class GaugeMetricFamily(_Family):
    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
        unit: str = "",
    ):
        super().__init__(name, documentation, "gauge", labels, unit, value)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float, timestamp: float | None = None) -> None:
        self.samples.append(Sample(self.name, self._labels(labels), value, timestamp))


class CounterMetricFamily(_Family):
    """Named without `_total` (a trailing one is dropped); its samples carry it."""

    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
        created: float | None = None,
        unit: str = "",
    ):
        super().__init__(name.removesuffix("_total"), documentation, "counter", labels, unit, value)
        if value is not None:
            self.add_metric([], value, created)

    def add_metric(
        self,
        labels: Sequence[str],
        value: float,
        created: float | None = None,
        timestamp: float | None = None,
    ) -> None:
        labelset = self._labels(labels)
        self.samples.append(Sample(self.name + "_total", labelset, value, timestamp))
        if created is not None:
            self.samples.append(Sample(self.name + "_created", labelset, created, timestamp))


class HistogramMetricFamily(_Family):
    """Buckets as (le, cumulative count) pairs, sorted, +Inf last; _count is the +Inf bucket."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[tuple[str, float]] | None = None,
        sum_value: float | None = None,
        labels: Sequence[str] | None = None,
        unit: str = "",
    ):
        if sum_value is not None and buckets is None:
            raise ValueError("a sum needs buckets")
        super().__init__(name, documentation, "histogram", labels, unit, buckets)
        if buckets is not None:
            self.add_metric([], buckets, sum_value)

    def add_metric(
        self,
        labels: Sequence[str],
        buckets: Sequence[tuple[str, float]],
        sum_value: float | None,
        timestamp: float | None = None,
    ) -> None:
        labelset = self._labels(labels)
        for le, count in buckets:
            self.samples.append(Sample(self.name + "_bucket", {**labelset, "le": le}, count, timestamp))
        if sum_value is not None and float(buckets[0][0]) >= 0:  # no sum with negative buckets
            self.samples.append(Sample(self.name + "_count", labelset, buckets[-1][1], timestamp))
            self.samples.append(Sample(self.name + "_sum", labelset, sum_value, timestamp))


def go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (Go's formatting): +Inf, -Inf, NaN, and exponent
    notation for large numbers where Python would still print digits ("1e+06", not "1000000.0")."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text
