"""Collector registry. Adding a collector = a module exposing COLLECTOR + one line here."""

from __future__ import annotations

import importlib

from .base import Collector

# Order here is the order on the landing page and in --help.
MODULES = (
    "cpu",
    "softirq",
    "conntrack",
    "overlay",
    "ipvs",
    "fsync",
    "ebpf_softirq",
    "ebpf_drops",
)


def available_collectors() -> list[type[Collector]]:
    classes = []
    for module in MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{module}":
                continue  # not written yet
            raise
        classes.append(mod.COLLECTOR)
    return classes
