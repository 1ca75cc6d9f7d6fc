"""ebpf_softirq without the kernel: vector selection from the format table, map contents ->
histogram families, and probe() on a fixture tracefs tree."""

from __future__ import annotations

import shutil

import pytest

from collectors.common import parse_cpu_list
from collectors.ebpf_loader import parse_format, print_symbolic
from collectors.ebpf_softirq import (
    FIRST_SLOT,
    KIND_SERVICE,
    KIND_WAIT,
    LAST_SLOT,
    NR_SLOTS,
    EbpfSoftirq,
    decode,
    histograms,
    vector_selection,
)
from exporter.contract import Context, ParseError, SourceUnavailable
from tests.helpers import FIXTURES

FIX = FIXTURES / "ebpf_softirq"
NAMES = print_symbolic(parse_format((FIX / "softirq_raise_format_6.18").read_text()), "vec")


def test_vector_selection():
    assert vector_selection(NAMES, all_vectors=False) == {2: "NET_TX", 3: "NET_RX"}
    assert vector_selection(NAMES, all_vectors=True) == NAMES
    with pytest.raises(ParseError, match="no vector named NET_RX"):
        vector_selection({2: "NET_TX"}, all_vectors=False)


def _by_labels(family):
    out = {}
    for s in family.samples:
        out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _idx(kind, vec, slot, nr_vecs=10):
    """Array index of a histogram count, as bpf/softirq.c computes it."""
    return (kind * nr_vecs + vec) * NR_SLOTS + slot


def test_decode_array_layout():
    hist = {_idx(KIND_WAIT, 3, 0): 3, _idx(KIND_SERVICE, 9, 64): 1, _idx(KIND_WAIT, 0, 1): 2}
    sums = {1 * 10 + 9: 123, 0 * 10 + 3: 0}
    slots, totals = decode(hist, sums, 10)
    assert slots == {
        (KIND_WAIT, 3, None): {0: 3},
        (KIND_SERVICE, 9, None): {64: 1},
        (KIND_WAIT, 0, None): {1: 2},
    }
    assert totals == {(KIND_SERVICE, 9, None): 123, (KIND_WAIT, 3, None): 0}
    per_cpu, per_cpu_totals = decode({_idx(KIND_WAIT, 3, 9): {0: 1, 1: 4}}, {3: {0: 300, 1: 1200}}, 10)
    assert per_cpu == {(KIND_WAIT, 3, 0): {9: 1}, (KIND_WAIT, 3, 1): {9: 4}}
    assert per_cpu_totals == {(KIND_WAIT, 3, 0): 300, (KIND_WAIT, 3, 1): 1200}


def test_histograms_from_maps():
    vectors = {2: "NET_TX", 3: "NET_RX"}
    # NET_RX waits: 3 x 0 ns (slot 0), 2 x 300 ns (slot 9), 1 x 10 s (slot 34: above the last
    # bucket, only in +Inf). NET_RX service: 4 x 5 us (slot 13).
    hist = {
        _idx(KIND_WAIT, 3, 0): 3,
        _idx(KIND_WAIT, 3, 9): 2,
        _idx(KIND_WAIT, 3, 34): 1,
        _idx(KIND_SERVICE, 3, 13): 4,
    }
    sums = {KIND_WAIT * 10 + 3: 600 + 10_000_000_000, KIND_SERVICE * 10 + 3: 20_000}
    wait, service = histograms(*decode(hist, sums, 10), vectors, None)
    assert wait.name == "netstack_softirq_wait_seconds" and wait.type == "histogram"
    w = _by_labels(wait)
    rx = (("vector", "NET_RX"),)
    assert w[("netstack_softirq_wait_seconds_bucket", (("le", "2.55e-07"), *rx))] == 3
    assert w[("netstack_softirq_wait_seconds_bucket", (("le", "5.11e-07"), *rx))] == 5
    assert w[("netstack_softirq_wait_seconds_bucket", (("le", "4.294967295"), *rx))] == 5
    assert w[("netstack_softirq_wait_seconds_bucket", (("le", "+Inf"), *rx))] == 6
    assert w[("netstack_softirq_wait_seconds_count", rx)] == 6
    assert w[("netstack_softirq_wait_seconds_sum", rx)] == pytest.approx(10.0000006)
    # NET_TX has no samples yet but its series exist (no series appearing mid-way)
    tx = (("vector", "NET_TX"),)
    assert w[("netstack_softirq_wait_seconds_count", tx)] == 0
    buckets = [k for k in w if k[0].endswith("_bucket") and ("vector", "NET_TX") in k[1]]
    assert len(buckets) == LAST_SLOT - FIRST_SLOT + 2
    s = _by_labels(service)
    assert s[("netstack_softirq_service_seconds_count", rx)] == 4
    assert s[("netstack_softirq_service_seconds_bucket", (("le", "8.191e-06"), *rx))] == 4
    assert s[("netstack_softirq_service_seconds_bucket", (("le", "4.095e-06"), *rx))] == 0


def test_histograms_per_cpu():
    slots, sums = decode({_idx(KIND_WAIT, 3, 10): {1: 7, 5: 1}}, {3: {1: 7000, 5: 900}}, 10)
    wait, _ = histograms(slots, sums, {3: "NET_RX"}, [0, 1])
    w = _by_labels(wait)
    assert w[("netstack_softirq_wait_seconds_count", (("cpu", "1"), ("vector", "NET_RX")))] == 7
    assert w[("netstack_softirq_wait_seconds_count", (("cpu", "0"), ("vector", "NET_RX")))] == 0
    # CPU 5 was not online at probe time (hotplug) but has samples: it gets its series
    assert w[("netstack_softirq_wait_seconds_count", (("cpu", "5"), ("vector", "NET_RX")))] == 1


def test_parse_cpu_list():
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list("0\n") == [0]
    with pytest.raises(ParseError):
        parse_cpu_list("0-x")


def _fixture_tracefs(tmp_path, drop_event=None):
    for event in ("softirq_raise", "softirq_entry", "softirq_exit"):
        if event == drop_event:
            continue
        d = tmp_path / "events" / "irq" / event
        d.mkdir(parents=True)
        shutil.copy(FIX / f"{event}_format_6.18", d / "format")
    return tmp_path


def _collector(all_vectors=False, per_cpu=False):
    return EbpfSoftirq(Context(options={"all-vectors": all_vectors, "per-cpu": per_cpu}))


def test_probe_reports_missing_tracepoint(tmp_path, monkeypatch):
    root = _fixture_tracefs(tmp_path, drop_event="softirq_exit")
    monkeypatch.setattr("collectors.ebpf_loader.TRACEFS_CANDIDATES", (str(root),))
    with pytest.raises(SourceUnavailable, match="tracepoint irq:softirq_exit does not exist"):
        _collector().probe()


def test_probe_reports_missing_tracefs(tmp_path, monkeypatch):
    monkeypatch.setattr("collectors.ebpf_loader.TRACEFS_CANDIDATES", (str(tmp_path / "none"),))
    with pytest.raises(SourceUnavailable, match="tracefs is not mounted"):
        _collector().probe()


def test_options_declared():
    assert {o.name: (o.kind, o.default) for o in EbpfSoftirq.options} == {
        "backend": ("str", "auto"),
        "btf-path": ("str", ""),
        "all-vectors": ("bool", False),
        "per-cpu": ("bool", False),
        "sample-every": ("int", 1),
    }
    assert EbpfSoftirq.default_enabled is False
    [sample_every] = [o for o in EbpfSoftirq.options if o.name == "sample-every"]
    for bad in (0, 1025, 100_000):
        with pytest.raises(ValueError):
            sample_every.check(bad)
    sample_every.check(1)
    sample_every.check(1024)


def test_sampled_histograms_are_scaled():
    """sample_every=N: every count and the sum are N times the sampled ones, so rates of _count
    and bucket increases estimate all runs, and quantiles (bucket ratios) are unchanged."""
    hist = {_idx(KIND_WAIT, 3, 0): 3, _idx(KIND_WAIT, 3, 9): 2}
    sums = {KIND_WAIT * 10 + 3: 600}
    plain, _ = histograms(*decode(hist, sums, 10), {3: "NET_RX"}, None)
    scaled, _ = histograms(*decode(hist, sums, 10), {3: "NET_RX"}, None, sample_every=16)
    p, s = _by_labels(plain), _by_labels(scaled)
    assert p.keys() == s.keys()
    for key, v in p.items():
        assert s[key] == pytest.approx(16 * v), key
    rx = (("vector", "NET_RX"),)
    assert s[("netstack_softirq_wait_seconds_count", rx)] == 80
    assert s[("netstack_softirq_wait_seconds_bucket", (("le", "2.55e-07"), *rx))] == 48


def test_sample_every_reaches_the_program_and_the_output(monkeypatch):
    """The setting is one of the program's defines (bcc -D / libbpf .rodata), and the
    collector says N in a gauge only when sampling (the default output stays as it was)."""

    class FakeProgram:
        def read_map(self, name, per_cpu=False):
            return {_idx(KIND_WAIT, 3, 9, nr_vecs=4): 5} if name == "hist" else {KIND_WAIT * 4 + 3: 1500}

    for n, gauge in ((1, []), (8, [8.0])):
        collector = EbpfSoftirq(Context(options={"sample-every": n}))
        collector.vectors, collector.nr_vecs = {3: "NET_RX"}, 4
        assert collector.defines() == {"VEC_MASK": 1 << 3, "NR_VECS": 4, "SAMPLE_EVERY": n}
        monkeypatch.setattr(collector, "program", FakeProgram)
        families = {f.name: f for f in collector.collect()}
        found = families.get("netstack_softirq_sample_every")
        assert ([s.value for s in found.samples] if found else []) == gauge
        wait = _by_labels(families["netstack_softirq_wait_seconds"])
        assert wait[("netstack_softirq_wait_seconds_count", (("vector", "NET_RX"),))] == 5 * n


def test_map_sizes_follow_the_vector_table():
    """libbpf sizes the CO-RE program's arrays as softirq.c's defines size bcc's."""
    collector = _collector()
    collector.nr_vecs = 10
    assert collector.map_sizes() == {"hist": 2 * 10 * NR_SLOTS, "sums": 2 * 10}
