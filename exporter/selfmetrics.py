"""The exporter's own metrics: build info and the usual process_* metrics of this process.

They are read from this process's own /proc/self, never from --path.procfs: in the DaemonSet the
host's /proc is mounted elsewhere and its 'self' is not us. The process metrics are our own
lean version of prometheus_client's ProcessCollector (same names and meanings): one read of
/proc/self/stat per collection, the descriptor limit from getrlimit rather than /proc/self/limits.
"""

from __future__ import annotations

import os
import platform
import resource

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = resource.getpagesize()


def _boot_time(proc: str) -> float:
    with open(os.path.join(proc, "stat"), "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


def _stat_fields(proc: str) -> list[bytes]:
    """Fields of <proc>/self/stat after the command name (which may contain spaces and ')')."""
    with open(os.path.join(proc, "self", "stat"), "rb") as f:
        return f.read().rpartition(b")")[2].split()


class SelfMetrics:
    """proc is this process's own /proc (a fixture tree in tests), never --path.procfs."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        build = GaugeMetricFamily(
            "netstack_build_info",
            "Version of netstack-exporter and of the Python running it; value 1.",
            labels=["version", "python_version", "python_implementation"],
        )
        build.add_metric([__version__, platform.python_version(), platform.python_implementation()], 1)
        platform_info = CollectorRegistry()
        PlatformCollector(registry=platform_info)
        self._static = [build, *platform_info.collect()]  # never change
        self._gc = CollectorRegistry()
        GCCollector(registry=self._gc)
        fields = _stat_fields(proc)
        self._start_time = _boot_time(proc) + int(fields[19]) / _TICKS

    def families(self) -> list[Metric]:
        fields = _stat_fields(self._proc)
        cpu = CounterMetricFamily(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            value=(int(fields[11]) + int(fields[12])) / _TICKS,
        )
        return [
            *self._static,
            cpu,
            GaugeMetricFamily(
                "process_virtual_memory_bytes", "Virtual memory size in bytes.", value=int(fields[20])
            ),
            GaugeMetricFamily(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                value=int(fields[21]) * _PAGE,
            ),
            GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                value=self._start_time,
            ),
            GaugeMetricFamily(
                "process_open_fds",
                "Number of open file descriptors.",
                value=len(os.listdir(os.path.join(self._proc, "self", "fd"))),
            ),
            GaugeMetricFamily(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                value=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            ),
            *self._gc.collect(),
        ]
