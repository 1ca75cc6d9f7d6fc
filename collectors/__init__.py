"""Collector registry. Adding a collector = a module exposing COLLECTOR + one line here."""

from __future__ import annotations

import importlib

from exporter.contract import Collector

# Order here is the order on the landing page and in --help.
MODULES = (
    "cpu",
    "softirq",
    "conntrack",
    "overlay",
    "netstat",
    "ipvs",
    "fsync",
    "bgp",
    "virtualization",
    "strict_arp",
    "ebpf_softirq",
    "ebpf_drops",
)


def available_collectors() -> list[type[Collector]]:
    return [importlib.import_module(f"{__name__}.{module}").COLLECTOR for module in MODULES]
