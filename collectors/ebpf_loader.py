"""The eBPF collectors' side of the backends: the bcc backend, the choice between backends,
and the life cycle both collectors share (TracepointCollector).

A collector names its BPF program ("softirq"), hands a Loader its settings, attaches tracepoints
and reads maps; it never touches a backend itself. Two backends implement Loader and Program
(collectors/ebpf_base.py): bcc (here: compiles bpf/<name>.c with clang at start-up, needs kernel
headers) and libbpf (collectors/ebpf_libbpf.py: loads the precompiled bpf/<name>.bpf.o, needs
neither). The two programs of a collector keep the same maps with the same layout, so the
metrics are the same. Imports go one way: this module -> ebpf_libbpf -> ebpf_base.

Also here: tracefs helpers shared by both collectors (finding the tracefs mount, reading and
parsing a tracepoint's format file) and the exact log2-slot -> Prometheus bucket conversion.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exporter.contract import Collector, NotReady, Option, ParseError, SourceUnavailable
from exporter.logs import log_event
from exporter.snapshot import release_freed_heap

from .common import read_text
from .ebpf_base import (
    BPF_DIR,
    Loader,
    Program,
    bpf_denied_reason,
    check_privileges,
)
from .ebpf_base import can_trace as can_trace  # re-exported: the collectors' tests import them here
from .ebpf_base import effective_capabilities as effective_capabilities
from .ebpf_base import eperm_cause as eperm_cause
from .ebpf_base import seccomp_mode as seccomp_mode
from .ebpf_libbpf import LibbpfLoader

log = logging.getLogger("netstack.ebpf")

# bcc resolves tracepoint formats in exactly these places (bcc/__init__.py TRACEFS), so the
# collectors look there too, not under --path.sysfs.
TRACEFS_CANDIDATES = ("/sys/kernel/debug/tracing", "/sys/kernel/tracing")

BACKENDS = ("auto", "libbpf", "bcc")


# --- tracefs ---------------------------------------------------------------------------------


def find_tracefs(candidates: Iterable[str] | None = None) -> str:
    """The first mounted tracefs (it has an events/ directory)."""
    candidates = TRACEFS_CANDIDATES if candidates is None else candidates
    for path in candidates:
        if os.path.isdir(os.path.join(path, "events")):
            return path
        if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
            # tracefs is mode 0700: without root it looks empty rather than absent.
            raise SourceUnavailable(
                f"permission denied on {path}: tracing needs root "
                "(or CAP_BPF + CAP_PERFMON and access to tracefs)"
            )
    raise SourceUnavailable(
        "tracefs is not mounted (looked in "
        + ", ".join(candidates)
        + "; mount -t tracefs nodev /sys/kernel/tracing)"
    )


@dataclass(frozen=True)
class Field:
    type: str
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class TracepointFormat:
    name: str
    fields: dict[str, Field]
    print_fmt: str


_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<off>\d{1,9});\s*size:(?P<size>\d{1,9});")
_DECL = re.compile(r"^(?P<type>.*?)\s*\b(?P<name>\w+)(?:\[[^\]]*\])?$")


def parse_format(text: str, source: str = "format") -> TracepointFormat:
    """Parse a tracefs events/<system>/<event>/format file."""
    name = None
    fields: dict[str, Field] = {}
    print_fmt = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("print fmt:"):
            print_fmt = line.split(":", 1)[1].strip()
        elif line.strip().startswith("field:"):
            m = _FIELD.match(line)
            decl = m and _DECL.match(m.group("decl").strip())
            if not m or not decl:
                raise ParseError(f"{source}:{lineno}: unexpected field line")
            fields[decl.group("name")] = Field(
                decl.group("type"), decl.group("name"), int(m.group("off")), int(m.group("size"))
            )
    if name is None or print_fmt is None:
        raise ParseError(f"{source}: not a tracepoint format file (no name: or print fmt: line)")
    return TracepointFormat(name, fields, print_fmt)


# A value is one token (a number, or an enum the kernel did not resolve); no part of the pattern
# can match the same characters two ways, so a hostile table costs linear time.
_SYMBOL = re.compile(r'\{\s*([^,{}\s]+)\s*,\s*"([^"]*)"\s*\}')


def print_symbolic(fmt: TracepointFormat, field: str, source: str = "format") -> dict[int, str]:
    """{value: name} from the __print_symbolic(REC-><field>, { v, "NAME" }, ...) table.

    The kernel rewrites enum names in this table to numbers at boot (TRACE_DEFINE_ENUM), so the
    numbers are the running kernel's own, whatever headers a program was compiled with.
    """
    start = fmt.print_fmt.find(f"__print_symbolic(REC->{field},")
    if start < 0:
        raise ParseError(f"{source}: no __print_symbolic table for field {field!r}")
    # The table ends at the parenthesis that closes __print_symbolic( (outside quoted names).
    depth, in_string, end = 0, False, len(fmt.print_fmt)
    for i in range(start + len("__print_symbolic"), len(fmt.print_fmt)):
        c = fmt.print_fmt[i]
        if c == '"':
            in_string = not in_string
        elif not in_string:
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                end = i
                break
    table: dict[int, str] = {}
    for value, symbol in _SYMBOL.findall(fmt.print_fmt[start:end]):
        try:
            table[int(value, 0)] = symbol
        except ValueError:
            raise ParseError(
                f"{source}: {field} value {value!r} is not a number (enum not resolved by the kernel)"
            ) from None
    if not table:
        raise ParseError(f"{source}: empty __print_symbolic table for field {field!r}")
    return table


def read_tracepoint_format(tracefs: str, system: str, event: str) -> TracepointFormat:
    path = os.path.join(tracefs, "events", system, event, "format")
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise SourceUnavailable(f"tracepoint {system}:{event} does not exist ({path})") from None
    except PermissionError:
        raise SourceUnavailable(f"permission denied reading {path}") from None
    return parse_format(text, path)


# --- log2 histograms -------------------------------------------------------------------------


def slot_of(ns: int) -> int:
    """Python twin of slot_of() in bpf/softirq.c: slot 0 holds 0, slot s holds [2^(s-1), 2^s)."""
    return ns.bit_length()


def slot_upper_bound_ns(slot: int) -> int:
    """Largest integer in a slot: values are whole nanoseconds, so le = 2^s - 1 is exact."""
    return (1 << slot) - 1


def log2_buckets(slots: dict[int, int], first_slot: int, last_slot: int) -> list[tuple[str, int]]:
    """Cumulative Prometheus buckets [(le_seconds, count), ..., ("+Inf", total)] from log2 slots.

    One bucket per slot first_slot..last_slot with le = (2^s - 1) ns, which is exact: every value
    <= 2^s - 1 lies in a slot <= s and no other. Slots below first_slot fold into the first bucket,
    slots above last_slot only into +Inf. The bucket set is fixed so series never appear mid-way.
    """
    buckets = []
    cumulative = sum(n for s, n in slots.items() if s < first_slot)
    for s in range(first_slot, last_slot + 1):
        cumulative += slots.get(s, 0)
        buckets.append((repr(slot_upper_bound_ns(s) / 1e9), cumulative))
    buckets.append(("+Inf", sum(slots.values())))
    return buckets


# --- kernel headers (bcc) ---------------------------------------------------------------


def find_kernel_headers(
    release: str,
    environ: dict,
    modules_root: str = "/lib/modules",
    kheaders: str = "/sys/kernel/kheaders.tar.xz",
) -> str:
    """The header tree bcc will use, or SourceUnavailable saying how to get one.

    Same order as bcc: BCC_KERNEL_SOURCE, then /lib/modules/<release>/{build,source}, then the
    kernel's own kheaders archive (CONFIG_IKHEADERS).
    """
    env = environ.get("BCC_KERNEL_SOURCE")
    if env:
        if os.path.isdir(os.path.join(env, "include")):
            return env
        raise SourceUnavailable(
            f"BCC_KERNEL_SOURCE={env} is not a kernel header tree (no include/ directory)"
        )
    for link in ("build", "source"):
        path = os.path.join(modules_root, release, link)
        if os.path.isdir(os.path.join(path, "include")):
            return path
    if os.path.exists(kheaders):
        return kheaders
    raise SourceUnavailable(
        f"no kernel headers for {release}: install linux-headers-{release}, or set "
        "BCC_KERNEL_SOURCE to a tree made by scripts/kernel-headers.sh"
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__


def _plain(v):
    """A bcc key or value (ctypes struct, c_uint, ...) as a hashable Python value."""
    fields = getattr(type(v), "_fields_", None)
    if fields:
        return tuple(_plain(getattr(v, name)) for name, *_ in fields)
    return getattr(v, "value", v)


# bcc's embedded clang/LLVM is not thread-safe: two collectors compiling at once corrupt the
# heap (seen here: "malloc(): unaligned tcache chunk detected"). One compile at a time.
_BCC_LOCK = threading.Lock()


class BccProgram(Program):
    def __init__(self, bpf):
        self._bpf = bpf

    def attach_tracepoint(self, system: str, event: str, function: str) -> None:
        # bcc already attached functions named tracepoint__<system>__<event> (TRACEPOINT_PROBE)
        # while loading; attaching again would count every event twice.
        if f"{system}:{event}".encode() in self._bpf.tracepoint_fds:
            return
        try:
            self._bpf.attach_tracepoint(tp=f"{system}:{event}".encode(), fn_name=function.encode())
        except Exception as e:  # bcc raises bare Exception
            raise SourceUnavailable(f"cannot attach {system}:{event}: {_one_line(e)}") from None

    def read_map(self, name: str, per_cpu: bool = False) -> dict:
        from bcc.utils import get_possible_cpus

        table = self._bpf[name.encode()]
        try:
            items = list(table.items_lookup_batch())  # a few syscalls instead of two per key
        except Exception:  # kernels before 5.6 have no batch lookup
            items = table.items()
        cpus = None
        out = {}
        for k, v in items:
            if isinstance(v, ctypes.Array):  # per-CPU map: one value per possible CPU
                values = list(v)
                if not any(values):
                    continue
                if per_cpu:
                    cpus = cpus or get_possible_cpus()
                    out[_plain(k)] = dict(zip(cpus, values))
                else:
                    out[_plain(k)] = sum(values)
            else:
                out[_plain(k)] = _plain(v)
        return out

    def close(self) -> None:
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            with _BCC_LOCK:  # also frees the LLVM module
                bpf.cleanup()


class BccLoader(Loader):
    """bcc from Debian's python3-bpfcc: compiles C with clang at runtime, needs kernel headers."""

    name = "bcc"

    def check_available(self, program: str) -> None:
        """bcc importable and kernel headers there (privileges are checked apart)."""
        try:
            import bcc  # noqa: F401
        except ImportError as e:
            raise SourceUnavailable(
                f"bcc is not importable ({_one_line(e)}): install Debian python3-bpfcc and link "
                "/usr/lib/python3/dist-packages/bcc into this Python's site-packages"
            ) from None
        except Exception as e:  # libbcc.so missing or broken raises OSError and friends
            raise SourceUnavailable(f"bcc failed to import: {_one_line(e)}") from None
        find_kernel_headers(os.uname().release, dict(os.environ))

    def check(self, program: str) -> None:
        self.check_available(program)
        check_privileges()
        reason = bpf_denied_reason()
        if reason:
            raise SourceUnavailable(reason)

    def load(self, program: str, defines: dict[str, int], map_sizes: dict[str, int]) -> Program:
        return self.load_source(bpf_source(f"{program}.c"), defines)

    def load_source(self, source: str, defines: dict[str, int]) -> Program:
        from bcc import BPF

        cflags = [f"-D{k}={v}" for k, v in defines.items()]  # bcc wants str here, bytes elsewhere
        try:
            with _BCC_LOCK:
                bpf = BPF(text=source.encode(), cflags=cflags)
        except Exception as e:
            # clang's diagnostics go to stderr; the exception itself is the one-line summary.
            raise SourceUnavailable(f"BPF compile/load failed: {_one_line(e)}") from None
        finally:
            release_freed_heap()  # clang frees tens of MB of heap after a compile (bench/README.md)
        return BccProgram(bpf)


def choose_loader(backend: str, program: str, btf_path: str = "") -> Loader:
    """The backend for `backend` (auto|libbpf|bcc), or SourceUnavailable with the reason.

    auto: libbpf when libbpf1 and the precompiled objects are there (the programs need no
    kernel BTF, see bpf/*.bpf.c), else bcc when it and kernel headers are there. Privileges and a
    bpf() denied by seccomp concern both and are checked by Loader.check(). `btf_path` is the
    libbpf backend's BTF file (--collector.<name>.btf-path); bcc does not use BTF.
    """
    if backend == "libbpf":
        return LibbpfLoader(btf_path=btf_path)
    if backend == "bcc":
        return BccLoader()
    reasons = []
    for loader in (LibbpfLoader(btf_path=btf_path), BccLoader()):
        try:
            loader.check_available(program)
            return loader
        except SourceUnavailable as e:
            reasons.append(f"{loader.name}: {e}")
    raise SourceUnavailable("no eBPF backend can run here; " + "; ".join(reasons))


def bpf_source(filename: str) -> str:
    return read_text(os.path.join(BPF_DIR, filename))


# --- compile and attach off the scrape path --------------------------------------------------


class StillLoading(NotReady):
    """collect() before the worker thread finished compiling and attaching."""


class BackgroundLoad:
    """Run `setup` (load + attach; with bcc, a clang compile first) once in a worker thread.

    Readiness and the other collectors never wait for it. Until it is done, program() raises
    StillLoading, so the collector reports success=0 with reason "still loading"; if setup
    failed, program() raises SourceUnavailable with its one-line reason on every collection.
    """

    def __init__(self, collector: str, setup: Callable[[], Program], backend: str = ""):
        self._collector = collector
        self._backend = backend
        self._setup = setup
        self._lock = threading.Lock()
        self._program: Program | None = None
        self._error: str | None = None
        self._closed = False
        self.seconds: float | None = None  # how long load (bcc: compile) + attach took
        self._thread = threading.Thread(target=self._run, name=f"{collector}-bpf-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        program, error = None, None
        try:
            program = self._setup()
        except SourceUnavailable as e:
            error = str(e)
        except Exception as e:  # anything else is a bug, but must not kill the exporter
            error = f"BPF setup failed: {_one_line(e)}"
        with self._lock:
            self.seconds = time.monotonic() - t0
            if self._closed and program is not None:
                program.close()  # close() came while we were compiling
                return
            self._program, self._error = program, error
        # A failure is logged by the exporter as "collector unavailable" with this reason.
        if not error:
            log_event(
                log,
                logging.INFO,
                "bpf program attached",
                collector=self._collector,
                backend=self._backend,
                seconds=round(self.seconds, 3),
            )

    def wait(self, timeout: float) -> bool:
        """For tests and benchmarks: block until setup finished; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def raise_if_failed(self) -> None:
        """For probe(): a failed compile keeps the collector unavailable with its reason."""
        with self._lock:
            if self._error is not None:
                raise SourceUnavailable(self._error)

    def program(self) -> Program:
        with self._lock:
            if self._closed:
                raise SourceUnavailable("closed: BPF program detached")
            if self._program is not None:
                return self._program
            if self._error is not None:
                raise SourceUnavailable(self._error)
        raise StillLoading("still loading and attaching the BPF program")

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            program, self._program = self._program, None
        if program is not None:
            program.close()
        if self._thread.is_alive():
            self._thread.join(timeout)


BACKEND_OPTION = Option(
    "backend",
    "BPF backend: libbpf loads the precompiled CO-RE object (no compiler or headers), "
    "bcc compiles at start-up (needs kernel headers); auto takes libbpf when its library and "
    "objects are there, else bcc",
    "auto",
    choices=BACKENDS,
    group="ebpf",
)


def _btf_file(path: str) -> None:
    if path and not os.path.isfile(path):
        raise ValueError(f"no such file {path!r} (a BTF file: a vmlinux with .BTF or a BTFHub .btf file)")


BTF_PATH_OPTION = Option(
    "btf-path",
    "libbpf backend: kernel BTF file for CO-RE relocations, for kernels without "
    "/sys/kernel/btf/vmlinux (a BTFHub-style .btf file of the running kernel); empty: the "
    "kernel's own. Checked before loading: a file that is not BTF makes the collector unavailable",
    "",
    validate=_btf_file,
    group="ebpf",
)


class TracepointCollector(Collector):
    """The life cycle the eBPF collectors share: choose and probe the backend, load and attach in
    the background (BackgroundLoad), read maps from the attached program, detach on close.

    A subclass names its BPF program and says what to define, how to size maps and which
    tracepoints to attach (`category`, `event`, BPF function name: the same in both programs)."""

    default_enabled = False
    program_name: str

    def __init__(self, ctx, loader: Loader | None = None):
        super().__init__(ctx)
        self._given_loader = loader  # tests hand in a loader; else the backend option decides
        self.loader: Loader | None = loader
        self.load: BackgroundLoad | None = None

    def defines(self) -> dict:
        return {}

    def map_sizes(self) -> dict:
        return {}

    def tracepoints(self) -> list[tuple[str, str, str]]:
        raise NotImplementedError

    def check_loader(self) -> None:
        """End of probe(): a backend can work here, and a failed load stays unavailable."""
        if self.load is None:  # the backend is chosen once; a started program keeps its own
            self.loader = self._given_loader or choose_loader(
                self.option("backend"), self.program_name, self.option("btf-path")
            )
        assert self.loader is not None
        self.loader.check(self.program_name)
        if self.load is not None:
            self.load.raise_if_failed()

    def _setup(self) -> Program:
        assert self.loader is not None
        program = self.loader.load(self.program_name, self.defines(), self.map_sizes())
        try:
            for category, event, function in self.tracepoints():
                program.attach_tracepoint(category, event, function)
        except BaseException:
            program.close()
            raise
        return program

    def start(self) -> None:
        self.load = BackgroundLoad(self.name, self._setup, self.loader.name if self.loader else "")
        self.load.start()

    def program(self) -> Program:
        """The attached program; NotReady while loading, SourceUnavailable if that failed."""
        if self.load is None:
            raise SourceUnavailable("not started")
        return self.load.program()

    def close(self) -> None:
        if self.load is not None:
            self.load.close()
