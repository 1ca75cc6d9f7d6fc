"""CPU time per CPU and mode from /proc/stat; steal is the headline.

rate(netstack_cpu_seconds_total{mode="steal"}[5m]) is the fraction of each CPU's time the
hypervisor gave to someone else while this guest had work to run.

/proc/stat is parsed here rather than through psutil: psutil's per-CPU list is positional and
drops the CPU number, so on a host with an offline CPU every later CPU would get the wrong label.
"""

from __future__ import annotations

import os
from typing import Iterable

from prometheus_client.core import CounterMetricFamily, Metric

from exporter.contract import Collector, ParseError
from exporter.exposition import CompactFamily, LabelSets
from .common import MonotonicCounters, read_text, require_file

# Column order of the per-CPU lines of /proc/stat (guest and guest_nice are already counted in
# user and nice, so they are not exported).
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str, source: str = "/proc/stat") -> list[tuple[str, dict[str, int]]]:
    """[(cpu number as text, {mode: ticks})] for each 'cpuN' line; the aggregate 'cpu' is skipped."""
    cpus = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        fields = line.split()
        cpu = fields[0][3:]
        if not cpu.isdigit() or len(fields) < 5:
            raise ParseError(f"{source}:{lineno}: malformed cpu line {line[:60]!r}")
        try:
            values = [int(v) for v in fields[1:1 + len(MODES)]]
        except ValueError:
            raise ParseError(f"{source}:{lineno}: non-numeric value in {line[:60]!r}") from None
        cpus.append((cpu, dict(zip(MODES, values))))
    if not cpus:
        raise ParseError(f"{source}: no per-CPU lines")
    return cpus


class CpuCollector(Collector):
    name = "cpu"
    help = "CPU seconds per CPU and mode from /proc/stat (steal = time taken by the hypervisor)."

    def __init__(self, ctx):
        super().__init__(ctx)
        self._user_hz = os.sysconf("SC_CLK_TCK")
        self._monotonic = MonotonicCounters()
        self._labels = LabelSets("cpu", "mode")

    def probe(self) -> None:
        require_file(self.paths.proc("stat"), "cpu")

    def collect(self) -> Iterable[Metric]:
        path = self.paths.proc("stat")
        cpus = parse_proc_stat(read_text(path), path)
        seconds = CompactFamily(
            "netstack_cpu_seconds",
            "Seconds each CPU spent in each mode (USER_HZ ticks / USER_HZ). "
            "rate() of mode=\"steal\" is the fraction of time the hypervisor took.", "counter")
        for cpu, modes in cpus:
            for mode, ticks in modes.items():
                seconds.add(self._labels(cpu, mode), self._monotonic((cpu, mode), ticks) / self._user_hz)
        regressions = CounterMetricFamily(
            "netstack_cpu_backwards_jumps_total",
            "Times a /proc/stat CPU counter went backwards (a hypervisor or kernel bug) and the "
            "previous value was exported instead.")
        regressions.add_metric([], self._monotonic.clamped)
        return [seconds, regressions]


COLLECTOR = CpuCollector
