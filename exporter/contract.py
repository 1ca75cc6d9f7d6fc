"""The collector contract: what a collector implements and what the exporter gives it.

A collector is a plain object. The exporter calls, in this order:

    probe()    in a worker thread; raises SourceUnavailable(reason) when the source is not there
    start()    once, after the first successful probe (periodic collectors start their loop here)
    collect()  in a worker thread, once per collection; yields metric families (exporter.metrics)
               (or exposition.CompactFamily for thousands of series)
    unavailable_families()  instead of collect() while unavailable; usually nothing
    close()    once, on shutdown

collect() may raise anything: the exporter marks the collector failed for that collection, logs
one line and keeps serving the others. NotReady means "started, nothing to report yet"; Failed
carries families to serve from a reading that is itself a failure. Parsing
lives in pure module-level functions of the collector's module, so it is tested on fixture text
without the kernel; they raise ParseError on input that is not in the kernel's format.

Options are declared on the class, parsed and validated once by the command line (exporter/cli.py)
before anything starts, and read with self.option(name). A collector never re-validates them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .metrics import Metric


class SourceUnavailable(Exception):
    """The collector's source is absent here (module not loaded, file missing, no privilege)."""


class NotReady(Exception):
    """The collector started but has nothing to report yet (a BPF program still loading).
    Reported as success=0 and logged at info level, not as a failure."""


class Failed(Exception):
    """collect() read its source, and what it read is a failure (every fsync probe errors): the
    families are still served (error counters and all), and the collector reports success 0
    with the message as its error."""

    def __init__(self, message: str, families: Iterable[Metric]):
        super().__init__(message)
        self.families = list(families)


class ParseError(ValueError):
    """A source did not have the format the kernel writes. The message names file and line."""


OPTION_KINDS = ("bool", "int", "float", "str", "duration", "regex", "list")


@dataclass(frozen=True)
class Option:
    """A collector option, exposed as --collector.<collector>.<name> and NETSTACK_COLLECTOR_<..>.

    kind: bool | int | float | str | duration (seconds) | regex | list (repeatable flag of str;
    comma-separated in the environment). choices, min and max bound the parsed value (each element
    of a list); validate(value) raises ValueError for anything else a value must satisfy.
    group: the option is also --collector.<group>.<name>, which sets it for every collector that
    declares it (both eBPF collectors' backend) unless a collector's own flag or variable is given.
    """

    name: str
    help: str
    default: Any = None
    kind: str = "str"
    choices: Sequence[str] | None = None
    min: float | None = None
    max: float | None = None
    validate: Callable[[Any], None] | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in OPTION_KINDS:
            raise TypeError(f"option {self.name}: unknown kind {self.kind!r}")

    def check(self, value: Any) -> None:
        """Raise ValueError (completing '<flag>: ...') when a parsed value is out of bounds."""
        if value is None:
            return
        for item in value if self.kind == "list" else (value,):
            self._check_one(item)
        if self.validate is not None:
            self.validate(value)

    def _check_one(self, value: Any) -> None:
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"invalid value {value!r} (one of {', '.join(self.choices)})")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{value!r} is not a finite number")
            unit = "s" if self.kind == "duration" else ""
            if self.min is not None and value < self.min:
                raise ValueError(f"{_number(value)}{unit} is below the minimum {_number(self.min)}{unit}")
            if self.max is not None and value > self.max:
                raise ValueError(f"{_number(value)}{unit} is above the maximum {_number(self.max)}{unit}")


def _number(value: float) -> str:
    """A bound or value as the user writes it: 268435456, not 2.68435e+08; 0.01, not 1e-02."""
    if float(value).is_integer() and abs(value) < 1e18:
        return str(int(value))
    return f"{value:g}"


def option_values(declared: Sequence[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared option's value: the given (already parsed) one, else the default."""
    names = {o.name for o in declared}
    unknown = set(given) - names
    if unknown:
        raise KeyError(f"unknown option(s) {', '.join(sorted(unknown))}")
    return {o.name: given[o.name] if given.get(o.name) is not None else _default(o) for o in declared}


def _default(option: Option) -> Any:
    if option.kind == "regex" and isinstance(option.default, str):
        return re.compile(option.default)
    return list(option.default) if isinstance(option.default, (list, tuple)) else option.default


@dataclass
class Paths:
    """Where the host's pseudo filesystems are mounted (the DaemonSet reads /host/proc)."""

    procfs: str = "/proc"
    sysfs: str = "/sys"

    def proc(self, *parts: str) -> str:
        return os.path.join(self.procfs, *parts)

    def sys(self, *parts: str) -> str:
        return os.path.join(self.sysfs, *parts)


@dataclass
class Context:
    """What the exporter hands a collector: the host paths and the collector's option values."""

    paths: Paths = field(default_factory=Paths)
    options: dict[str, Any] = field(default_factory=dict)


class Collector:
    name: ClassVar[str]
    default_enabled: ClassVar[bool] = True
    help: ClassVar[str] = ""
    options: ClassVar[Sequence[Option]] = ()

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.paths = ctx.paths
        self._option_values = option_values(self.options, ctx.options)

    @classmethod
    def check_options(cls, values: Mapping[str, Any]) -> None:
        """Checks that involve several options; raise ValueError naming the flags."""

    def option(self, name: str) -> Any:
        return self._option_values[name]

    def probe(self) -> None:
        """Raise SourceUnavailable(reason) when this collector cannot work on this host."""

    def start(self) -> None:
        """Start background work (periodic probes). Called once, after a successful probe."""

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError

    def unavailable_families(self) -> Iterable[Metric]:
        """What to report while the source is unavailable (say, which kernel module is missing).
        Called on the worker instead of collect(); the collector still counts as unavailable."""
        return ()

    def close(self) -> None:
        """Stop background work and release resources (sockets, BPF programs, probe files)."""
