"""CPU time per CPU and mode from /proc/stat; steal is the headline.

rate(netstack_cpu_seconds_total{mode="steal"}[5m]) is the fraction of each CPU's time the
hypervisor gave to someone else while this guest had work to run.

/proc/stat is parsed here rather than through psutil: psutil's per-CPU list is positional and
drops the CPU number, so on a host with an offline CPU every later CPU would get the wrong label.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from exporter.contract import Collector, ParseError
from exporter.exposition import CompactFamily, LabelSets
from exporter.metrics import CounterMetricFamily, Metric

from .common import MonotonicCounters, parse_counter, parse_cpu_list, read_text, require_file

# Column order of the per-CPU lines of /proc/stat (guest and guest_nice are already counted in
# user and nice, so they are not exported).
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str, source: str = "/proc/stat") -> list[tuple[str, dict[str, int]]]:
    """[(cpu number as text, {mode: ticks})] for each 'cpuN' line; the aggregate 'cpu' is skipped.
    Each line must have as many columns as the aggregate line: a file cut inside a line is an
    error, not a CPU with fewer modes."""
    cpus = []
    seen = set()
    columns = 5  # at least user, nice, system, idle
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("cpu "):
            columns = max(columns, min(len(line.split()), 1 + len(MODES)))
            continue
        if not line.startswith("cpu"):
            continue
        fields = line.split()
        cpu = fields[0][3:]
        if not cpu.isdigit() or len(cpu) > 6 or len(fields) < columns:
            raise ParseError(f"{source}:{lineno}: malformed or truncated cpu line")
        if cpu in seen:
            raise ParseError(f"{source}:{lineno}: cpu{cpu} appears twice")
        seen.add(cpu)
        try:
            values = [parse_counter(v) for v in fields[1 : 1 + len(MODES)]]
        except ValueError:
            raise ParseError(f"{source}:{lineno}: a value of cpu{cpu} is not a counter") from None
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
        self._cpus: set[str] = set()  # the CPUs of the last good reading
        self._read_at: float | None = None

    def probe(self) -> None:
        require_file(self.paths.proc("stat"), "cpu")

    def collect(self) -> Iterable[Metric]:
        path = self.paths.proc("stat")
        cpus = parse_proc_stat(read_text(path), path)
        self._check_cpu_set({cpu for cpu, _ in cpus}, path)
        now = time.monotonic()
        # A CPU cannot spend more than the elapsed time in one mode; the slack covers tick
        # rounding and a late previous reading.
        max_ticks = (
            None if self._read_at is None else (now - self._read_at) * self._user_hz * 1.5 + 2 * self._user_hz
        )
        self._read_at = now
        seconds = CompactFamily(
            "netstack_cpu_seconds",
            "Seconds each CPU spent in each mode (USER_HZ ticks / USER_HZ). "
            'rate() of mode="steal" is the fraction of time the hypervisor took.',
            "counter",
        )
        for cpu, modes in cpus:
            for mode, ticks in modes.items():
                seconds.add(
                    self._labels(cpu, mode), self._monotonic((cpu, mode), ticks, max_ticks) / self._user_hz
                )
        regressions = CounterMetricFamily(
            "netstack_cpu_backwards_jumps_total",
            "Times a /proc/stat CPU counter went backwards (a hypervisor or kernel bug) and the "
            "previous value was exported instead.",
        )
        regressions.add_metric([], self._monotonic.clamped)
        rejected = CounterMetricFamily(
            "netstack_cpu_implausible_readings",
            "/proc/stat CPU counter readings that rose faster than time passes and were not "
            "exported unless the next reading confirmed them.",
        )
        rejected.add_metric([], self._monotonic.rejected)
        return [seconds, regressions, rejected]

    def _check_cpu_set(self, cpus: set[str], path: str) -> None:
        """A reading whose CPUs differ from the last one is believed only when they are the
        kernel's online CPUs (hotplug); otherwise the file was cut or garbled."""
        if cpus == self._cpus:
            return
        online_path = self.paths.sys("devices", "system", "cpu", "online")
        try:
            online = {str(c) for c in parse_cpu_list(read_text(online_path, 4096), online_path)}
        except OSError:
            online = None  # no sysfs (a fixture tree, an old container): trust the file
        if online is not None and cpus != online:
            raise ParseError(
                f"{path}: its {len(cpus)} CPUs are not the {len(online)} online ones {online_path} lists"
            )
        self._cpus = cpus


COLLECTOR = CpuCollector
