"""ebpf_softirq: how long softirqs wait between being raised and being run, and how long they run.

/proc/softirqs only counts softirqs. The wait from raise (irq:softirq_raise) to run
(irq:softirq_entry) is the direct symptom of a starved CPU: steal, a noisy neighbour, a CPU
busy in another softirq. Service time (entry -> irq:softirq_exit) shows budget exhaustion.
The BPF program (bpf/softirq.bpf.c for libbpf, bpf/softirq.c for bcc: same maps, same layout)
keeps log2 histograms in nanoseconds; they become Prometheus histograms with exact bucket
boundaries (see ebpf_loader.log2_buckets).

With sample-every=N > 1 the programs time one run in N per CPU and vector (the others cost no
clock read); the histograms are scaled by N, so rates and increases estimate every run and
quantiles are those of the sample, and netstack_softirq_sample_every says N.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from exporter.contract import Option, ParseError, SourceUnavailable
from exporter.metrics import GaugeMetricFamily, HistogramMetricFamily, Metric

from .common import parse_cpu_list, read_text
from .ebpf_loader import (
    BACKEND_OPTION,
    BTF_PATH_OPTION,
    TracepointCollector,
    find_tracefs,
    log2_buckets,
    print_symbolic,
    read_tracepoint_format,
)

EVENTS = ("softirq_raise", "softirq_entry", "softirq_exit")
DEFAULT_VECTORS = ("NET_RX", "NET_TX")
KIND_WAIT, KIND_SERVICE = 0, 1  # as in bpf/softirq.c
NR_KINDS = 2
NR_SLOTS = 65  # NR_SLOTS in bpf/softirq{,.bpf}.c: slots 0..64 of a u64
MAX_VECS = 32  # MAX_VECS in bpf/softirq{,.bpf}.c

# Published buckets: slot 8 (le = 255 ns) .. slot 32 (le = 4.29 s), 25 buckets + +Inf.
# Shorter values fold into the first bucket, longer ones only into +Inf (and _sum).
FIRST_SLOT, LAST_SLOT = 8, 32
MAX_SAMPLE_EVERY = 1024


def vector_selection(names: dict[int, str], all_vectors: bool) -> dict[int, str]:
    """{vector number: name} to trace, numbers taken from the running kernel's table."""
    if all_vectors:
        return {v: n for v, n in names.items() if v < MAX_VECS}
    chosen = {v: n for v, n in names.items() if n in DEFAULT_VECTORS}
    missing = set(DEFAULT_VECTORS) - set(chosen.values())
    if missing:
        raise ParseError(f"softirq_raise format has no vector named {', '.join(sorted(missing))}")
    return chosen


def decode(
    hist: dict[int, Any], sums: dict[int, Any], nr_vecs: int
) -> tuple[dict[tuple, dict[int, int]], dict[tuple, int]]:
    """Per-CPU array contents -> ({(kind, vec, cpu): {slot: count}}, {(kind, vec, cpu): ns}).

    Array indexes are laid out as in bpf/softirq.c. A value is an int (summed over CPUs; cpu is
    None in the result) or {cpu: int} (per-cpu read).
    """
    slots: dict[tuple, dict[int, int]] = {}
    totals: dict[tuple, int] = {}
    for idx, value in hist.items():
        kind, rest = divmod(idx, nr_vecs * NR_SLOTS)
        vec, slot = divmod(rest, NR_SLOTS)
        for cpu, count in value.items() if isinstance(value, dict) else [(None, value)]:
            slots.setdefault((kind, vec, cpu), {})[slot] = count
    for idx, value in sums.items():
        kind, vec = divmod(idx, nr_vecs)
        for cpu, ns in value.items() if isinstance(value, dict) else [(None, value)]:
            totals[(kind, vec, cpu)] = ns
    return slots, totals


def histograms(
    slots: dict[tuple, dict[int, int]],
    sums: dict[tuple, int],
    vectors: dict[int, str],
    cpus: list[int] | None,
    sample_every: int = 1,
) -> tuple[HistogramMetricFamily, HistogramMetricFamily]:
    """Decoded map contents -> the two histogram families.

    cpus=None: one series per vector (keys have cpu None); else one per vector and CPU.
    Every selected vector (and CPU) gets a series, zero until it has samples. Counts and sums
    are multiplied by sample_every (one run timed in sample_every stands for sample_every runs).
    """
    labels = ["vector"] if cpus is None else ["vector", "cpu"]
    families = {
        KIND_WAIT: HistogramMetricFamily(
            "netstack_softirq_wait_seconds",
            "Time from a softirq being raised to its handler starting (eBPF, irq:softirq_raise "
            "-> irq:softirq_entry).",
            labels=labels,
        ),
        KIND_SERVICE: HistogramMetricFamily(
            "netstack_softirq_service_seconds",
            "Time a softirq handler ran (eBPF, irq:softirq_entry -> irq:softirq_exit).",
            labels=labels,
        ),
    }
    # CPUs with samples but not online at probe time (hotplug) still get their series.
    all_cpus = None if cpus is None else sorted(set(cpus) | {k[2] for k in slots})
    for kind, family in families.items():
        for vec, name in sorted(vectors.items()):
            for cpu in all_cpus if all_cpus is not None else [None]:
                key = (kind, vec, cpu)
                label_values = [name] if cpu is None else [name, str(cpu)]
                counts = {slot: n * sample_every for slot, n in slots.get(key, {}).items()}
                family.add_metric(
                    label_values,
                    log2_buckets(counts, FIRST_SLOT, LAST_SLOT),
                    sums.get(key, 0) * sample_every / 1e9,
                )
    return families[KIND_WAIT], families[KIND_SERVICE]


class EbpfSoftirq(TracepointCollector):
    name = "ebpf_softirq"
    program_name = "softirq"
    help = (
        "NET_RX/NET_TX softirq wait (raise -> run) and service time histograms from "
        "tracepoints, via eBPF (libbpf or bcc; needs CAP_BPF + CAP_PERFMON)"
    )
    options = (
        BACKEND_OPTION,
        BTF_PATH_OPTION,
        Option("all-vectors", "trace every softirq vector, not only NET_RX and NET_TX", False, "bool"),
        Option("per-cpu", "add a cpu label (series x number of CPUs)", False, "bool"),
        Option(
            "sample-every",
            "time one softirq run in N per CPU and vector (1 = every run); counts are scaled by N",
            1,
            "int",
            min=1,
            max=MAX_SAMPLE_EVERY,
        ),
    )

    def __init__(self, ctx, loader=None):
        super().__init__(ctx, loader)
        self.vectors: dict[int, str] = {}
        self.nr_vecs = 0
        self.cpus: list[int] | None = None

    def probe(self) -> None:
        tracefs = find_tracefs()
        formats = {event: read_tracepoint_format(tracefs, "irq", event) for event in EVENTS}
        for event, fmt in formats.items():
            if "vec" not in fmt.fields:
                raise SourceUnavailable(f"irq:{event} has no vec argument")
        try:
            names = print_symbolic(formats["softirq_raise"], "vec", "irq:softirq_raise format")
            self.vectors = vector_selection(names, self.option("all-vectors"))
        except ParseError as e:
            raise SourceUnavailable(str(e)) from None
        self.nr_vecs = min(max(names) + 1, MAX_VECS)
        self.cpus = self._online_cpus() if self.option("per-cpu") else None
        self.check_loader()

    def _online_cpus(self) -> list[int]:
        try:
            return parse_cpu_list(read_text(self.paths.sys("devices", "system", "cpu", "online")))
        except (OSError, ParseError):
            return list(range(os.cpu_count() or 1))

    def defines(self) -> dict:
        return {
            "VEC_MASK": sum(1 << v for v in self.vectors),
            "NR_VECS": self.nr_vecs,
            "SAMPLE_EVERY": self.option("sample-every"),
        }

    def map_sizes(self) -> dict:
        # as bpf/softirq.c sizes them from NR_VECS
        return {"hist": NR_KINDS * self.nr_vecs * NR_SLOTS, "sums": NR_KINDS * self.nr_vecs}

    def tracepoints(self) -> list[tuple[str, str, str]]:
        return [("irq", event, f"tracepoint__irq__{event}") for event in EVENTS]

    def collect(self) -> Iterable[Metric]:
        program = self.program()
        per_cpu = self.cpus is not None
        slots, sums = decode(
            program.read_map("hist", per_cpu), program.read_map("sums", per_cpu), self.nr_vecs
        )
        sample_every = self.option("sample-every")
        yield from histograms(slots, sums, self.vectors, self.cpus, sample_every)
        if sample_every > 1:  # only then: the default output stays as it was
            yield GaugeMetricFamily(
                "netstack_softirq_sample_every",
                "One softirq run in this many is timed (ebpf_softirq sample-every); the "
                "netstack_softirq_*_seconds counts and sums are the sampled ones times this.",
                value=sample_every,
            )


COLLECTOR = EbpfSoftirq
