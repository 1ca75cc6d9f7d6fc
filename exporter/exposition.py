"""Exposition: label sets, compact families and the Prometheus text (0.0.4) and OpenMetrics
(1.0.0) encoders.

Collectors build metric families (exporter.metrics); for thousands of series they use
CompactFamily rows, and label sets they keep across collections are LabelSets, formatted once.
The encoders produce the same exposition as prometheus_client's with less work per sample: values
are escaped only when they need it, integers are written exactly, and label sets shared by rows
or kept across collections are formatted once. Timestamps are written; exemplars are not used.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterable, Sequence

from .metrics import Metric, Sample


def _escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def format_labels(labels: dict[str, str]) -> str:
    """The exposition form of a label set: {k="v",...} with values escaped; "" when empty."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in labels.items()) + "}"


class LabelSet(dict):
    """A labels dict that keeps its exposition text. For label sets a collector reuses across
    collections (IPVS services cached by their /proc line): formatted once, not every scrape.
    Do not modify it after first use."""

    __slots__ = ("_text",)
    _text: str

    @property
    def text(self) -> str:
        try:
            return self._text
        except AttributeError:
            self._text = format_labels(self)
            return self._text


class LabelSets:
    """LabelSets("cpu", "mode")("0", "steal") -> the same LabelSet every time, so a collector's
    stable series (per CPU, per mode) are formatted once for the process's life. Only for label
    values from a bounded set: entries are never dropped."""

    def __init__(self, *names: str):
        self._names = names
        self._sets: dict[tuple[str, ...], LabelSet] = {}

    def __call__(self, *values: str) -> LabelSet:
        labels = self._sets.get(values)
        if labels is None:
            labels = self._sets[values] = LabelSet(zip(self._names, values))
        return labels


class CompactFamily(Metric):
    """A metric family for thousands of series (one per IPVS service): rows of (labels, value)
    instead of one Sample each. The exporter's encoder writes the rows directly,
    which saves building a Sample per series; .samples builds
    Samples for anything else that asks (tests, prometheus_client's own encoders).

    Rows may share one labels dict (all of a service's series do); the encoder formats a shared
    dict once."""

    def __init__(self, name: str, documentation: str, typ: str):
        # Not Metric.__init__, which would make .samples a plain list.
        self.name, self.documentation, self.type, self.unit = name, documentation, typ, ""
        self.sample_name = name + "_total" if typ == "counter" else name
        self.rows: list[tuple[dict[str, str], float]] = []

    def add(self, labels: dict[str, str], value: float) -> None:
        self.rows.append((labels, value))

    @property
    def samples(self) -> list[Sample]:  # type: ignore[override]
        return [Sample(self.sample_name, labels, value) for labels, value in self.rows]


class ColumnRows(Sequence):
    """The rows of a ColumnFamily, (labels, value) pairs made only when asked for."""

    __slots__ = ("labels", "values")

    def __init__(self, labels: Sequence[dict[str, str]], values: Sequence[float]):
        self.labels, self.values = labels, values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(zip(self.labels[i], self.values[i]))
        return self.labels[i], self.values[i]

    def __iter__(self):
        return zip(self.labels, self.values)


class RowTemplate:
    """The lines of a list of label sets as one bytes template, b"%s{labels} %d\n" a row. A
    collector keeps it across collections and it is remade only when the list changes: the
    ColumnFamilies of integers that carry it are then written by one % each (IPVS: eight
    families of 5,000 services), with no string made per series."""

    def __init__(self):
        # (label list, its template), replaced as one: two snapshots of the collector may be
        # encoded at once (a small one inline on the event loop, a large one on the encoder)
        self._made: tuple[list[dict[str, str]], bytes] | None = None

    def template(self, labels: Sequence[dict[str, str]]) -> bytes:
        made = self._made
        if made is not None and labels == made[0]:  # the same LabelSets: compared by identity
            return made[1]
        rows = ((x.text if type(x) is LabelSet else format_labels(x)).replace("%", "%%") for x in labels)
        template = "".join(f"%s{text} %d\n" for text in rows).encode()
        self._made = (list(labels), template)
        return template


class ColumnFamily(CompactFamily):
    """A CompactFamily whose rows are two columns: label sets and values. Several families of one
    table (the IPVS collector's eight per-service families) share one list of LabelSets; the
    encoder formats that list once per encoding and writes each family's lines in one join, with
    no (labels, value) tuple per series; with a RowTemplate for that list, in one % of it."""

    def __init__(
        self,
        name: str,
        documentation: str,
        typ: str,
        labels: Sequence[dict[str, str]],
        values: Sequence[float],
        template: RowTemplate | None = None,
    ):
        super().__init__(name, documentation, typ)
        if len(labels) != len(values):
            raise ValueError(f"{name}: {len(labels)} label sets for {len(values)} values")
        self.rows = ColumnRows(labels, values)  # type: ignore[assignment]
        self.template = template


_TEXT_TYPES = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "unknown": "untyped",
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
}


# prometheus_client keeps every value as a float: whole numbers are written without ".0" (a 0/1
# gauge reads 0, not 0.0), up to 2**53, past which a float no longer holds every integer exactly.
_EXACT_INTEGERS = float(2**53)


def _value(v) -> str:
    if type(v) is int:
        return str(v)
    v = float(v)
    if v.is_integer() and -_EXACT_INTEGERS < v < _EXACT_INTEGERS:
        return str(int(v))
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _label_text(labels: dict[str, str], label_strings: dict) -> str:
    """Formatted labels of a CompactFamily row: a LabelSet knows its own; a plain dict shared by
    several rows (one IPVS backend's three series) is formatted once per encoding, keyed by
    identity (the dict is kept alive in the cache, so its id cannot be reused meanwhile)."""
    if type(labels) is LabelSet:
        return labels.text
    cached = label_strings.get(id(labels))
    if cached is None or cached[0] is not labels:
        cached = label_strings[id(labels)] = (labels, format_labels(labels))
    return cached[1]


def _samples(family: Metric, out: list[str], openmetrics: bool) -> None:
    for s in family.samples:
        if not openmetrics and s.name.endswith("_created"):
            continue  # the 0.0.4 format has no _created samples
        labels = s.labels.text if type(s.labels) is LabelSet else format_labels(s.labels)
        line = f"{s.name}{labels} {_value(s.value)}"
        if s.timestamp is not None:
            ts = float(s.timestamp)
            line += f" {ts}" if openmetrics else f" {int(ts * 1000)}"
        out.append(line)


def _rows(family, out: list[str], label_strings: dict) -> None:
    """CompactFamily: (labels, value) rows, written without building Samples."""
    name = family.sample_name
    for labels, v in family.rows:
        out.append(f"{name}{_label_text(labels, label_strings)} {v if type(v) is int else _value(v)}")


def _columns(family: ColumnFamily, out: list[str], label_strings: dict) -> None:
    """A ColumnFamily's lines as one string, with no Python code per series: "name" + the
    row's labels and a space (made once per encoding for the label list, kept in label_strings
    so its id cannot be reused meanwhile, and shared by the families after it) + the value,
    joined by a line break and the name."""
    rows: ColumnRows = family.rows  # type: ignore[assignment]
    cached = label_strings.get(id(rows.labels))
    if cached is None or cached[0] is not rows.labels:
        texts = [(x.text if type(x) is LabelSet else format_labels(x)) + " " for x in rows.labels]
        cached = label_strings[id(rows.labels)] = (rows.labels, texts)
    values = rows.values
    as_text = map(str, values) if set(map(type, values)) == {int} else map(_value, values)
    name = family.sample_name
    out.append(name + ("\n" + name).join(map(operator.add, cached[1], as_text)))


def _templated(family: ColumnFamily) -> bytes | None:
    """A ColumnFamily's lines from its RowTemplate; None without one, or for values that are not
    all integers (%d would cut floats)."""
    values = family.rows.values  # type: ignore[attr-defined]
    if family.template is None or set(map(type, values)) != {int}:
        return None
    template = family.template.template(family.rows.labels)  # type: ignore[attr-defined]
    name = family.sample_name.encode()
    return template % tuple(itertools.chain.from_iterable(zip(itertools.repeat(name), values)))


def _family_samples(family: Metric, out: list[str], openmetrics: bool, label_strings: dict) -> None:
    if type(family) is ColumnFamily:
        if len(family.rows):
            _columns(family, out, label_strings)
    elif hasattr(family, "rows"):
        _rows(family, out, label_strings)
    else:
        _samples(family, out, openmetrics)


_FLUSH_LINES = 2000  # lines kept as strings before they are encoded to bytes


def _flush(out: list[str], pieces: list[bytes]) -> None:
    """Move the lines so far to pieces as bytes: a large collection's text is never held whole
    as lines, as one string and as bytes at the same time."""
    out.append("")
    pieces.append("\n".join(out).encode())
    out.clear()


def _write_templated(family: Metric, out: list[str], pieces: list[bytes]) -> bool:
    """A templated ColumnFamily's lines, after the lines so far, as pieces; False for any other."""
    if type(family) is not ColumnFamily or not len(family.rows):
        return False
    body = _templated(family)
    if body is None:
        return False
    _flush(out, pieces)
    pieces.append(body)
    return True


def encode_text(families: Iterable[Metric]) -> bytes:
    return b"".join(text_pieces(families))


def encode_openmetrics(families: Iterable[Metric]) -> bytes:
    return b"".join(openmetrics_pieces(families))


def text_pieces(families: Iterable[Metric]) -> list[bytes]:
    """The text exposition in pieces (a large family's lines are one), never joined here: the
    exporter writes them to the client one after another."""
    out: list[str] = []
    pieces: list[bytes] = []
    label_strings: dict = {}
    for family in families:
        name = family.name
        if family.type == "counter":
            name += "_total"
        elif family.type == "info":
            name += "_info"
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {_TEXT_TYPES.get(family.type, 'untyped')}")
        if _write_templated(family, out, pieces):
            continue
        _family_samples(family, out, False, label_strings)
        if len(out) > _FLUSH_LINES or type(family) is ColumnFamily:
            _flush(out, pieces)
    _flush(out, pieces)
    return pieces


def openmetrics_pieces(families: Iterable[Metric], eof: bool = True) -> list[bytes]:
    """The OpenMetrics exposition in pieces; without its "# EOF" line when eof is False (a part
    of an exposition that goes on)."""
    out: list[str] = []
    pieces: list[bytes] = []
    label_strings: dict = {}
    for family in families:
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        out.append(f"# HELP {family.name} {help_text}")
        out.append(f"# TYPE {family.name} {family.type}")
        if family.unit:
            out.append(f"# UNIT {family.name} {family.unit}")
        if _write_templated(family, out, pieces):
            continue
        _family_samples(family, out, True, label_strings)
        if len(out) > _FLUSH_LINES or type(family) is ColumnFamily:
            _flush(out, pieces)
    if eof:
        out.append("# EOF")
    _flush(out, pieces)
    return pieces
