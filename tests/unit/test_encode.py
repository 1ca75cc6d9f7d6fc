import math

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.exposition import encode_openmetrics, encode_text


def families():
    c = CounterMetricFamily("x_things", 'Help with "quotes", a \\ and\na newline.', labels=["dev"])
    c.add_metric(['we"ird\\na\nme'], 12345678901234)
    c.add_metric(["eth0"], 1.5)
    g = GaugeMetricFamily("x_level", "A gauge.", labels=["a", "b"])
    g.add_metric(["1", "2"], float("inf"))
    g.add_metric(["3", "4"], -0.25)
    g.add_metric(["5", "6"], float("nan"))
    h = HistogramMetricFamily("x_latency_seconds", "A histogram.", labels=["path"])
    h.add_metric(["/"], buckets=[("0.001", 1), ("0.01", 3), ("+Inf", 4)], sum_value=0.02)
    return [c, g, h]


def _as_dict(parsed):
    out = {}
    for fam in parsed:
        for s in fam.samples:
            out[(fam.name, fam.type, s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _expected():
    out = {}
    for fam in families():
        for s in fam.samples:
            out[(fam.name, fam.type, s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], k


def test_text_round_trips_through_the_reference_parser():
    _same(_as_dict(parse_text(encode_text(families()).decode())), _expected())


def test_openmetrics_round_trips_through_the_reference_parser():
    body = encode_openmetrics(families()).decode()
    assert body.endswith("# EOF\n")
    _same(_as_dict(parse_om(body)), _expected())


def test_large_integers_are_exact():
    assert b'x_things_total{dev="eth0"} 1.5' in encode_text(families())
    assert b"12345678901234\n" in encode_text(families())


def test_compact_family_rows_encode_like_samples():
    from prometheus_client.core import GaugeMetricFamily

    from exporter.exposition import CompactFamily

    shared = {"protocol": "TCP", "address": "10.0.0.1", "port": "80", "scheduler": "rr"}
    compact = CompactFamily("x_backends", "Backends.", "gauge")
    compact.add(shared, 3)
    compact.add({"fwmark": "7", "scheduler": 'w"rr'}, 0.5)
    counter = CompactFamily("x_packets", "Packets.", "counter")
    counter.add(shared, 12)
    plain = GaugeMetricFamily("x_backends", "Backends.", labels=["protocol", "address", "port", "scheduler"])
    plain.add_metric(["TCP", "10.0.0.1", "80", "rr"], 3)
    plain.samples.append(compact.samples[1])

    assert encode_text([compact]) == encode_text([plain])
    assert encode_openmetrics([compact]) == encode_openmetrics([plain])
    parsed = _as_dict(parse_om(encode_openmetrics([compact, counter]).decode()))
    assert parsed[("x_packets", "counter", "x_packets_total", tuple(sorted(shared.items())))] == 12
    assert [s.name for s in counter.samples] == ["x_packets_total"]


def test_whole_numbers_print_as_integers():
    g = GaugeMetricFamily("x_loaded", "A 0/1 gauge.", labels=["module"])
    for module, value in (
        ("ip_vs", 0.0),
        ("nf_conntrack", 1.0),
        ("neg", -3.0),
        ("half", 0.5),
        ("big", 2.0**60),
        ("tiny", 1e-7),
    ):
        g.add_metric([module], value)
    for encode in (encode_text, encode_openmetrics):
        lines = encode([g]).decode().splitlines()
        assert 'x_loaded{module="ip_vs"} 0' in lines
        assert 'x_loaded{module="nf_conntrack"} 1' in lines
        assert 'x_loaded{module="neg"} -3' in lines
        assert 'x_loaded{module="half"} 0.5' in lines
        assert 'x_loaded{module="big"} 1.152921504606847e+18' in lines  # beyond 2**53: as float
        assert 'x_loaded{module="tiny"} 1e-07' in lines


def test_templated_column_families_encode_like_rows_and_follow_their_labels():
    """A RowTemplate writes a ColumnFamily of integers by one % of a template kept across
    encodings; the bytes are those of the same rows without it, a '%' in a label included,
    and a new label list (a service added) makes a new template."""
    from exporter.exposition import ColumnFamily, LabelSet, RowTemplate

    def families(labels, template):
        return [
            ColumnFamily("x_backends", "Backends.", "gauge", labels, [3, 0, 2**70][: len(labels)], template),
            ColumnFamily("x_packets", "Packets.", "counter", labels, [1, 2, 3][: len(labels)], template),
            ColumnFamily(
                "x_ratio", "A float column.", "gauge", labels, [0.5, 1.0, 2.0][: len(labels)], template
            ),
        ]

    class Counted(RowTemplate):
        uses = 0

        def template(self, labels):
            self.uses += 1
            return super().template(labels)

    labels = [LabelSet(address="10.0.0.1", port="80"), LabelSet(name='50%d "odd"\n')]
    template = Counted()
    for encode in (encode_text, encode_openmetrics):
        assert encode(families(labels, template)) == encode(families(labels, None))
    assert template.uses == 4  # the two integer families, in both formats; not the float one
    kept = template.template(labels)
    assert template.template(list(labels)) is kept  # an equal list: the same template
    more = [*labels, LabelSet(address="10.0.0.2", port="80")]
    assert encode_text(families(more, template)) == encode_text(families(more, None))
    assert template.template(more) is not kept
    assert b'x_packets_total{name="50%d \\"odd\\"\\n"} 2\n' in encode_text(families(more, template))
