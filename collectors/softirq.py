"""Softirq counts per CPU (/proc/softirqs) and softnet backlog statistics (/proc/net/softnet_stat).

A CPU whose NET_RX work does not fit in one budget (net.core.netdev_budget packets or
netdev_budget_usecs) is "squeezed"; a full per-CPU backlog (netdev_max_backlog) drops packets.
The sysctls are exported next to the counters they explain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exporter.contract import Collector, Option, ParseError
from exporter.exposition import CompactFamily, LabelSets
from exporter.metrics import CounterMetricFamily, GaugeMetricFamily, Metric

from .common import U32_MAX, WrappingCounters, parse_counter, read_int, read_text, require_file

NETWORK_VECTORS = ("NET_RX", "NET_TX")


def parse_softirqs(text: str, source: str = "/proc/softirqs") -> tuple[list[str], dict[str, list[int]]]:
    """(cpu numbers from the header, {vector: count per cpu in header order})."""
    lines = text.splitlines()
    if not lines:
        raise ParseError(f"{source}: empty")
    header = lines[0].split()
    if not header or not all(h.startswith("CPU") and h[3:].isdigit() for h in header):
        raise ParseError(f"{source}:1: expected a CPU header")
    cpus = [h[3:] for h in header]
    if len(set(cpus)) != len(cpus):
        raise ParseError(f"{source}:1: a CPU appears twice in the header")
    vectors: dict[str, list[int]] = {}
    for lineno, line in enumerate(lines[1:], 2):
        name, sep, rest = line.partition(":")
        if not sep:
            if line.strip():
                raise ParseError(f"{source}:{lineno}: expected 'VECTOR: counts'")
            continue
        values = rest.split()
        if len(values) != len(cpus):
            raise ParseError(f"{source}:{lineno}: {len(values)} values for {len(cpus)} CPUs")
        name = name.strip()
        if name in vectors:
            raise ParseError(f"{source}:{lineno}: a vector appears twice")
        try:
            vectors[name] = [parse_counter(v, 10, U32_MAX) for v in values]
        except ValueError:
            raise ParseError(f"{source}:{lineno}: a count is not a 32-bit counter") from None
    return cpus, vectors


@dataclass(frozen=True)
class SoftnetRow:
    cpu: str
    processed: int
    dropped: int
    time_squeeze: int
    received_rps: int | None  # column 10, kernels >= 2.6.35
    flow_limit_count: int | None  # column 11, kernels >= 3.11
    backlog: int | None  # column 12, kernels >= 5.10 (input + process queue lengths)


def parse_softnet_stat(text: str, source: str = "/proc/net/softnet_stat") -> list[SoftnetRow]:
    """Rows of hex columns. The layout grew over time (9, 10, 11, 13, 15 columns); offline CPUs
    are skipped, so from 13 columns on the CPU comes from column 13, before that the row
    number is the best that exists."""
    rows = []
    seen = set()
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            cols = [parse_counter(c, 16, U32_MAX) for c in line.split()]
        except ValueError:
            raise ParseError(f"{source}:{index + 1}: a column is not a 32-bit hex counter") from None
        n = len(cols)
        if n < 9:
            raise ParseError(f"{source}:{index + 1}: {n} columns, expected at least 9")
        cpu = str(cols[12]) if n >= 13 else str(index)
        if cpu in seen:
            raise ParseError(f"{source}:{index + 1}: cpu {cpu} appears twice")
        seen.add(cpu)
        rows.append(
            SoftnetRow(
                cpu=cpu,
                processed=cols[0],
                dropped=cols[1],
                time_squeeze=cols[2],
                received_rps=cols[9] if n >= 10 else None,
                flow_limit_count=cols[10] if n >= 11 else None,
                backlog=cols[11] if n >= 13 else None,
            )
        )
    if not rows:
        raise ParseError(f"{source}: no rows")
    return rows


# (sysctl file under /proc/sys/net/core, metric, help, scale to base unit)
BUDGET_SYSCTLS = (
    (
        "netdev_budget",
        "netstack_softnet_budget_packets",
        "net.core.netdev_budget: packets one NET_RX softirq run may process before it is squeezed.",
        1,
    ),
    (
        "netdev_budget_usecs",
        "netstack_softnet_budget_seconds",
        "net.core.netdev_budget_usecs: time one NET_RX softirq run may take before it is squeezed.",
        1e-6,
    ),
    (
        "netdev_max_backlog",
        "netstack_softnet_max_backlog_packets",
        "net.core.netdev_max_backlog: per-CPU input queue length; beyond it packets are dropped.",
        1,
    ),
)

SOFTNET_COUNTERS = (
    ("processed", "netstack_softnet_processed_total", "Packets processed by this CPU's NET_RX softirq."),
    (
        "dropped",
        "netstack_softnet_dropped_total",
        "Packets dropped because this CPU's input backlog was full (netdev_max_backlog).",
    ),
    (
        "time_squeeze",
        "netstack_softnet_times_squeezed_total",
        "NET_RX runs that stopped with work left (budget or time exhausted).",
    ),
    (
        "received_rps",
        "netstack_softnet_received_rps_total",
        "Times this CPU was woken by an inter-processor interrupt to process packets (RPS/RFS).",
    ),
    (
        "flow_limit_count",
        "netstack_softnet_flow_limit_count_total",
        "Packets dropped by the per-flow limit (net.core.flow_limit_cpu_bitmap).",
    ),
)


class SoftirqCollector(Collector):
    name = "softirq"
    help = "Softirq counts (/proc/softirqs), softnet backlog statistics and budget sysctls."
    options = (
        Option("all-vectors", "Export every softirq vector, not only NET_RX and NET_TX", False, "bool"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self._wrap = WrappingCounters(32)
        self._cpu_vector = LabelSets("cpu", "vector")
        self._cpu = LabelSets("cpu")

    def probe(self) -> None:
        require_file(self.paths.proc("softirqs"), "softirq")
        require_file(self.paths.proc("net", "softnet_stat"), "softirq")

    def collect(self) -> Iterable[Metric]:
        yield from self._softirqs()
        yield from self._softnet()
        yield from self._budget()
        rejected = CounterMetricFamily(
            "netstack_softirq_implausible_readings",
            "Softirq and softnet counter readings held back as implausible (a drop or a jump of "
            "over a quarter of the 32-bit range that the next reading did not confirm).",
        )
        rejected.add_metric([], self._wrap.rejected)
        yield rejected

    def _softirqs(self) -> Iterable[Metric]:
        path = self.paths.proc("softirqs")
        cpus, vectors = parse_softirqs(read_text(path), path)
        family = CompactFamily(
            "netstack_softirqs", "Softirqs raised per CPU and vector (/proc/softirqs).", "counter"
        )
        wanted = vectors if self.option("all-vectors") else NETWORK_VECTORS
        for vector in wanted:
            for cpu, count in zip(cpus, vectors.get(vector, ())):
                family.add(self._cpu_vector(cpu, vector), self._wrap(("softirq", cpu, vector), count))
        yield family

    def _softnet(self) -> Iterable[Metric]:
        path = self.paths.proc("net", "softnet_stat")
        rows = parse_softnet_stat(read_text(path), path)
        for field, name, help_text in SOFTNET_COUNTERS:
            family = CompactFamily(name.removesuffix("_total"), help_text, "counter")
            for row in rows:
                value = getattr(row, field)
                if value is not None:
                    family.add(self._cpu(row.cpu), self._wrap((field, row.cpu), value))
            if family.rows:
                yield family
        backlog = CompactFamily(
            "netstack_softnet_backlog_packets",
            "Packets waiting in this CPU's input and process queues.",
            "gauge",
        )
        for row in rows:
            if row.backlog is not None:
                backlog.add(self._cpu(row.cpu), row.backlog)
        if backlog.rows:
            yield backlog

    def _budget(self) -> Iterable[Metric]:
        for sysctl, name, help_text, scale in BUDGET_SYSCTLS:
            try:
                value = read_int(self.paths.proc("sys", "net", "core", sysctl))
            except FileNotFoundError:
                continue  # older kernel without this knob
            yield GaugeMetricFamily(name, help_text, value=value * scale)


COLLECTOR = SoftirqCollector
