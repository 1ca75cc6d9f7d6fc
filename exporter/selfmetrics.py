"""The exporter's own metrics: build info and the usual process_* metrics of this process.

They are read from this process's own /proc/self, never from --path.procfs: in the DaemonSet the
host's /proc is mounted elsewhere and its 'self' is not us. The process metrics are our own
lean version of prometheus_client's ProcessCollector (same names and meanings): one read of
/proc/self/stat per collection, the descriptor limit from getrlimit rather than /proc/self/limits.
"""

from __future__ import annotations

import gc
import os
import platform
import resource

from . import __version__
from .exposition import CompactFamily, LabelSet, LabelSets

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = resource.getpagesize()
_NO_LABELS = LabelSet()
_GENERATION = LabelSets("generation")
# (family, help, key of gc.get_stats()): the names and meanings of prometheus_client's GCCollector
_GC_FAMILIES = (
    ("python_gc_objects_collected", "Objects collected during gc", "collected"),
    ("python_gc_objects_uncollectable", "Uncollectable objects found during GC", "uncollectable"),
    ("python_gc_collections", "Number of times this generation was collected", "collections"),
)


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


def _gauge(name: str, help_text: str, value: float, labels: LabelSet = _NO_LABELS) -> CompactFamily:
    family = CompactFamily(name, help_text, "gauge")
    family.add(labels, value)
    return family


class SelfMetrics:
    """proc is this process's own /proc (a fixture tree in tests), never --path.procfs.

    Built as CompactFamily rows with label sets made once: these families are in every scrape,
    and prometheus_client's collectors (a Sample object per value) cost as much as a collector."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        python = platform.python_version_tuple()
        self._static = [  # never change
            _gauge(
                "netstack_build_info",
                "Version of netstack-exporter and of the Python running it; value 1.",
                1,
                LabelSet(
                    version=__version__,
                    python_version=platform.python_version(),
                    python_implementation=platform.python_implementation(),
                ),
            ),
            _gauge(
                "python_info",
                "Python platform information",
                1,
                LabelSet(
                    version=platform.python_version(),
                    implementation=platform.python_implementation(),
                    major=python[0],
                    minor=python[1],
                    patchlevel=python[2],
                ),
            ),
        ]
        fields = _stat_fields(proc)
        self._start_time = _boot_time(proc) + int(fields[19]) / _TICKS

    def families(self) -> list[CompactFamily]:
        fields = _stat_fields(self._proc)
        cpu = CompactFamily(
            "process_cpu_seconds", "Total user and system CPU time spent in seconds.", "counter"
        )
        cpu.add(_NO_LABELS, (int(fields[11]) + int(fields[12])) / _TICKS)
        gc_families = [CompactFamily(name, help_text, "counter") for name, help_text, _ in _GC_FAMILIES]
        for generation, stats in enumerate(gc.get_stats()):
            labels = _GENERATION(str(generation))
            for family, (_, _, key) in zip(gc_families, _GC_FAMILIES):
                family.add(labels, stats[key])
        return [
            *self._static,
            cpu,
            _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", int(fields[20])),
            _gauge(
                "process_resident_memory_bytes", "Resident memory size in bytes.", int(fields[21]) * _PAGE
            ),
            _gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self._start_time,
            ),
            _gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                len(os.listdir(os.path.join(self._proc, "self", "fd"))),
            ),
            _gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            ),
            *gc_families,
        ]
