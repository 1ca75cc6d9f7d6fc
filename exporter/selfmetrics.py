"""The exporter's own metrics: build info and the process metrics of this process.

The process collector always reads /proc/self of the exporter, never --path.procfs: in the
DaemonSet the host's /proc is mounted elsewhere and its 'self' is not us.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

from . import __version__


class SelfMetrics:
    def __init__(self) -> None:
        self._runtime = CollectorRegistry()  # private: process_* and python_gc_*, read per collection
        ProcessCollector(registry=self._runtime, proc="/proc")
        GCCollector(registry=self._runtime)
        platform_info = CollectorRegistry()
        PlatformCollector(registry=platform_info)
        self._static = list(platform_info.collect())  # python_info never changes
        self._build = GaugeMetricFamily(
            "netstack_build_info", "Version of netstack-exporter and of the Python running it; value 1.",
            labels=["version", "python_version", "python_implementation"])
        self._build.add_metric([__version__, platform.python_version(), platform.python_implementation()], 1)

    def families(self) -> list[Metric]:
        # /proc/self reads never block, so they run inline.
        return [self._build, *self._static, *self._runtime.collect()]
