"""The libbpf backend: precompiled CO-RE objects (collectors/bpf/*.bpf.o) loaded with Debian's
libbpf1 through ctypes. No compiler, no kernel headers, no bcc at run time.

The objects are built with the package (scripts/build_bpf.py). Their programs are raw
tracepoints that read only tracepoint arguments, so they carry no CO-RE relocation and load as
they are on any kernel with raw tracepoints, BTF or not. An object that does carry relocations
is relocated against the kernel's BTF or the btf-path file (libbpf's btf_custom_path), and is
refused with "no BTF" when there is neither. The collectors' settings (bcc's -D defines) are
written into the object's .rodata before load, where the verifier sees them as constants, and
map sizes that depend on them are set the same way bcc's defines set them.

libbpf reports through a process-wide print callback; loads are serialised so that each load's
messages (and the verifier's log) can be told apart and turned into a one-line reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import sys
import threading
from dataclasses import dataclass, field
from typing import Literal

from exporter.contract import SourceUnavailable
from exporter.logs import log_event

from .common import read_text
from .ebpf_base import BPF_DIR, Loader, Program, bpf_denied_reason, check_privileges, eperm_cause

log = logging.getLogger("netstack.ebpf")

LIBBPF = "libbpf.so.1"
BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY = 5, 6
PER_CPU_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, 10, 21)  # + LRU, cgroup
BTF_KIND_DATASEC = 15
VERIFIER_LOG_SIZE = 1 << 20  # the failed program's verifier log (log level 1) fits easily
VERIFIER_TAIL_LINES = 8  # logged at debug when the verifier rejects a program
MAX_MESSAGES = 50  # libbpf messages kept for a failure's reason


OBJECTS_DIR = BPF_DIR  # where the package build put the objects
KERNEL_BTF = "/sys/kernel/btf/vmlinux"  # the running kernel's own BTF (CONFIG_DEBUG_INFO_BTF)


def object_path(name: str, objects_dir: str | None = None) -> str:
    return os.path.join(objects_dir or OBJECTS_DIR, f"{name}.bpf.o")


def possible_cpus(text: str) -> list[int]:
    """/sys/devices/system/cpu/possible ("0-3,8") -> [0, 1, 2, 3, 8]: per-CPU values come in
    this order, one per possible CPU."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def verifier_tail(log_text: str, lines: int = VERIFIER_TAIL_LINES) -> list[str]:
    """The verifier's last lines: where it gave up and why."""
    return [line for line in log_text.splitlines() if line.strip()][-lines:]


# Statistics the verifier appends after its verdict.
_VERIFIER_STATS = ("processed ", "verification time", "stack depth", "max_states_per_insn")


def verifier_verdict(tail: list[str]) -> str:
    """The line that says why: the last one before the verifier's statistics."""
    for line in reversed(tail):
        if not line.startswith(_VERIFIER_STATS):
            return line.strip()
    return tail[-1].strip() if tail else ""


def core_relocations(elf: bytes) -> int:
    """Bytes of CO-RE relocation records in a BPF object (.BTF.ext's core_relo part): 0 means
    libbpf relocates nothing and needs no kernel BTF for the object."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:  # 64-bit ELF, as clang -target bpf writes
        raise ValueError("not a 64-bit ELF object")
    order = "<" if elf[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:  # (name offset, file offset, size)
        name, _, _, _, offset, size = struct.unpack_from(order + "IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if elf[names_at + name : names_at + name + 9] == b".BTF.ext\0" and size >= 8:
            (hdr_len,) = struct.unpack_from(order + "I", elf, offset + 4)
            if hdr_len < 32:  # a header from before CO-RE relocations existed
                return 0
            return struct.unpack_from(order + "I", elf, offset + 28)[0]
    return 0


def _strerror(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


# --- the C library ---------------------------------------------------------------------------


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _VarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts as of libbpf 1.0/1.1 (sz tells libbpf which fields exist)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_void_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SIGNATURES = {
    # name: (restype, argtypes)
    "bpf_object__open_file": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "bpf_object__load": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_object__close": (None, [ctypes.c_void_p]),
    "bpf_object__btf": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_object__next_map": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_object__find_map_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_object__find_program_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_map__name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_map__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__type": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__key_size": (ctypes.c_uint32, [ctypes.c_void_p]),
    "bpf_map__value_size": (ctypes.c_uint32, [ctypes.c_void_p]),
    "bpf_map__max_entries": (ctypes.c_uint32, [ctypes.c_void_p]),
    "bpf_map__set_max_entries": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint32]),
    "bpf_map__initial_value": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_program__attach_raw_tracepoint": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_link__destroy": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map_lookup_batch": (
        ctypes.c_int,
        [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.c_void_p,
        ],
    ),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "btf__parse": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
    "btf__free": (None, [ctypes.c_void_p]),
    "libbpf_strerror": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]),
    "btf__find_by_name_kind": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(_BtfType), [ctypes.c_void_p, ctypes.c_uint32]),
    "btf__name_by_offset": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_uint32]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "libbpf_set_print": (ctypes.c_void_p, [_PRINT_FN]),
}


class _Libbpf:
    """libbpf.so.1 with typed functions, and its messages collected per load."""

    def __init__(self, path: str = LIBBPF):
        self.lib = ctypes.CDLL(path, use_errno=True)
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        self._print_buf = ctypes.create_string_buffer(8192)
        self.messages: list[str] = []
        self.lock = threading.Lock()  # one load (and its messages) at a time
        self._callback = _PRINT_FN(self._print)  # kept referenced: libbpf holds the pointer
        self.capture()

    def capture(self) -> None:
        """Route libbpf's messages here. Again before every load: Debian's bcc links the same
        libbpf.so.1 and installs its own callback whenever it loads a program."""
        self.lib.libbpf_set_print(self._callback)

    def _print(self, level: int, fmt: bytes, args: int) -> int:
        # va_list is passed on as it came (a pointer on x86-64, by reference on arm64).
        n = self._libc.vsnprintf(self._print_buf, len(self._print_buf), fmt, args)
        text = self._print_buf.value.decode(errors="replace").rstrip("\n")
        if n >= 0 and text:
            self.messages.append(text)
            del self.messages[:-MAX_MESSAGES]
            if log.isEnabledFor(logging.DEBUG):
                log_event(
                    log,
                    logging.DEBUG,
                    "libbpf",
                    severity=("warn", "info", "debug")[min(level, 2)],
                    message=text,
                )
        return 0


_LIBBPF: _Libbpf | None = None
_LIBBPF_ERROR: str | None = None
_INIT_LOCK = threading.Lock()


def libbpf() -> _Libbpf:
    """The library, loaded once; SourceUnavailable saying how to get it when it is missing."""
    global _LIBBPF, _LIBBPF_ERROR
    with _INIT_LOCK:
        if _LIBBPF is None and _LIBBPF_ERROR is None:
            try:
                _LIBBPF = _Libbpf()
            except (OSError, AttributeError) as e:
                _LIBBPF_ERROR = (
                    f"{LIBBPF} cannot be loaded ({' '.join(str(e).split())[:120]}): "
                    "install Debian libbpf1 (libbpf >= 1.0)"
                )
        if _LIBBPF is None:
            raise SourceUnavailable(_LIBBPF_ERROR)
        return _LIBBPF


# --- a loaded object -------------------------------------------------------------------------


@dataclass
class _MapInfo:
    fd: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    batch: bool = True  # cleared when the kernel has no batch lookup (before 5.6)
    per_cpu: bool = field(init=False)

    def __post_init__(self) -> None:
        self.per_cpu = self.type in PER_CPU_TYPES


_INT_FORMATS: dict[int, Literal["I", "Q"]] = {4: "I", 8: "Q"}


class LibbpfProgram(Program):
    def __init__(self, lib: _Libbpf, obj: int, name: str, cpus: list[int]):
        self._lib = lib
        self._obj: int | None = obj
        self._name = name
        self._cpus = cpus
        self._links: list[int] = []
        self._maps: dict[str, _MapInfo] = {}

    def attach_tracepoint(self, system: str, event: str, function: str) -> None:
        """Attach program `function` to the raw tracepoint `event` (the system is only part of
        the tracefs name; raw tracepoints are named by event alone)."""
        lib = self._lib.lib
        prog = lib.bpf_object__find_program_by_name(self._obj, function.encode())
        if not prog:
            raise SourceUnavailable(f"{self._name}.bpf.o has no program {function}")
        ctypes.set_errno(0)
        link = lib.bpf_program__attach_raw_tracepoint(prog, event.encode())
        if not link:
            code = ctypes.get_errno()
            hint = {
                errno.ENOENT: ": the kernel has no such tracepoint",
                errno.EINVAL: ": the program reads arguments the tracepoint does not have "
                "(an older kernel's tracepoint)",
                errno.EPERM: f": {_eperm_cause()}",
            }.get(code, "")
            raise SourceUnavailable(
                f"cannot attach {function} to raw tracepoint {event} "
                f"({system}:{event}): {_strerror(code)}{hint}"
            )
        self._links.append(link)

    def _map(self, name: str) -> _MapInfo:
        info = self._maps.get(name)
        if info is None:
            lib = self._lib.lib
            m = lib.bpf_object__find_map_by_name(self._obj, name.encode())
            if not m:
                raise KeyError(f"{self._name}.bpf.o has no map {name}")
            info = _MapInfo(
                lib.bpf_map__fd(m),
                lib.bpf_map__type(m),
                lib.bpf_map__key_size(m),
                lib.bpf_map__value_size(m),
                lib.bpf_map__max_entries(m),
            )
            if info.key_size not in _INT_FORMATS:
                raise TypeError(f"map {name}: only integer keys are read (key size {info.key_size})")
            self._maps[name] = info
        return info

    def read_map(self, name: str, per_cpu: bool = False) -> dict:
        if self._obj is None:
            raise SourceUnavailable("closed: BPF program detached")
        info = self._map(name)
        slots = len(self._cpus) if info.per_cpu else 1
        stride = ((info.value_size + 7) & ~7) if info.per_cpu else info.value_size
        if info.value_size not in _INT_FORMATS:
            raise TypeError(f"map {name}: only integer values are read")
        keys, values, n = self._lookup_all(info, slots * stride)
        key_fmt, value_fmt = _INT_FORMATS[info.key_size], _INT_FORMATS[info.value_size]
        key_list = memoryview(keys).cast("B")[: n * info.key_size].cast(key_fmt)
        out: dict = {}
        if not info.per_cpu:
            value_list = memoryview(values).cast("B")[: n * stride].cast(value_fmt)
            return dict(zip(key_list, value_list))
        flat = memoryview(values).cast("B")[: n * slots * stride].cast("Q")
        words = stride // 8
        for i, key in enumerate(key_list):
            row = flat[i * slots * words : (i + 1) * slots * words : words]
            if not any(row):
                continue  # zero on every CPU (an array has every key from the start)
            out[key] = dict(zip(self._cpus, row)) if per_cpu else sum(row)
        return out

    def _lookup_all(self, info: _MapInfo, value_bytes: int):
        """(keys buffer, values buffer, entries read): batch lookups, else key by key."""
        lib = self._lib.lib
        cap = info.max_entries
        keys = ctypes.create_string_buffer(cap * info.key_size)
        values = ctypes.create_string_buffer(cap * value_bytes)
        if info.batch:
            token_in, token_out = None, ctypes.create_string_buffer(8)
            done = 0
            while done < cap:
                count = ctypes.c_uint32(cap - done)
                ret = lib.bpf_map_lookup_batch(
                    info.fd,
                    token_in,
                    token_out,
                    ctypes.byref(keys, done * info.key_size),
                    ctypes.byref(values, done * value_bytes),
                    ctypes.byref(count),
                    None,
                )
                if ret < 0 and -ret not in (errno.ENOENT,):
                    if done == 0 and -ret in (errno.EINVAL, errno.ENOTSUP, 524):  # ENOTSUPP
                        info.batch = False
                        break
                    raise OSError(-ret, f"batch lookup: {os.strerror(-ret)}")
                done += count.value
                if ret < 0:  # ENOENT: no more entries
                    return keys, values, done
                token_in = ctypes.create_string_buffer(token_out.raw, 8)
            else:
                return keys, values, done
        # Key by key (kernels before 5.6): two syscalls per entry.
        done = 0
        prev = None
        key = ctypes.create_string_buffer(info.key_size)
        while done < cap and lib.bpf_map_get_next_key(info.fd, prev, key) == 0:
            ctypes.memmove(ctypes.addressof(keys) + done * info.key_size, key, info.key_size)
            if lib.bpf_map_lookup_elem(info.fd, key, ctypes.byref(values, done * value_bytes)) == 0:
                done += 1
            prev = ctypes.create_string_buffer(key.raw, info.key_size)
        return keys, values, done

    def close(self) -> None:
        obj, self._obj = self._obj, None
        if obj is None:
            return
        for link in self._links:
            self._lib.lib.bpf_link__destroy(link)
        self._links.clear()
        self._lib.lib.bpf_object__close(obj)


# --- the loader ------------------------------------------------------------------------------


class LibbpfLoader(Loader):
    """Loads collectors/bpf/<name>.bpf.o with libbpf (Debian libbpf1)."""

    name = "libbpf"

    def __init__(self, objects_dir: str | None = None, btf_path: str = ""):
        self.objects_dir = objects_dir
        self.btf_path = btf_path  # --collector.<name>.btf-path: BTF for CO-RE, else the kernel's
        self._btf_checked: tuple | None = None  # (size, mtime) of the file last parsed fine

    def check_available(self, program: str) -> None:
        libbpf()
        path = object_path(program, self.objects_dir)
        if not os.path.exists(path):
            raise SourceUnavailable(
                f"no BPF object {path}: this installation was built without clang; build it with "
                "`python3 scripts/build_bpf.py` (clang, bpftool, libbpf-dev) or use the bcc backend"
            )

    def check(self, program: str) -> None:
        self.check_available(program)
        self.check_btf(program)
        check_privileges()
        reason = bpf_denied_reason()
        if reason:
            raise SourceUnavailable(reason)

    def check_btf(self, program: str) -> None:
        """A given BTF file must parse; without one, an object that needs relocating needs the
        kernel's BTF. Objects without CO-RE relocations (ours today) need none."""
        if self.btf_path:
            try:
                st = os.stat(self.btf_path)
            except OSError as e:
                raise SourceUnavailable(f"BTF file {self.btf_path} (btf-path): {e.strerror}") from None
            if self._btf_checked == (st.st_size, st.st_mtime_ns):
                return  # parsed at an earlier probe (re-probes come every minute)
            lib = libbpf()
            with lib.lock:
                lib.capture()
                lib.messages = []
                ctypes.set_errno(0)
                btf = lib.lib.btf__parse(self.btf_path.encode(), None)
                code = ctypes.get_errno()
                if not btf:
                    text = ctypes.create_string_buffer(128)  # libbpf's own codes (4001: bad format)
                    lib.lib.libbpf_strerror(code or errno.EINVAL, text, len(text))
                    raise SourceUnavailable(
                        f"BTF file {self.btf_path} (btf-path) cannot be used: "
                        f"{text.value.decode(errors='replace')}{_last_message(lib.messages)}; give "
                        "the running kernel's BTF (a BTFHub .btf file, or a vmlinux with .BTF)"
                    )
                lib.lib.btf__free(btf)
            self._btf_checked = (st.st_size, st.st_mtime_ns)
            return
        path = object_path(program, self.objects_dir)
        try:
            with open(path, "rb") as f:
                relocations = core_relocations(f.read())
        except (OSError, ValueError, struct.error) as e:
            raise SourceUnavailable(f"cannot read {path}: {e}") from None
        if relocations and not os.path.exists(KERNEL_BTF):
            raise SourceUnavailable(
                f"no BTF: {program}.bpf.o has CO-RE relocations and this kernel has no "
                f"{KERNEL_BTF} (built without CONFIG_DEBUG_INFO_BTF); give its BTF with the "
                "collector's btf-path option (e.g. a BTFHub file for this kernel release)"
            )

    def load(self, program: str, defines: dict[str, int], map_sizes: dict[str, int]) -> Program:
        lib = libbpf()
        path = object_path(program, self.objects_dir)
        verifier_log = ctypes.create_string_buffer(VERIFIER_LOG_SIZE)
        opts = _OpenOpts(
            sz=ctypes.sizeof(_OpenOpts),
            kernel_log_buf=ctypes.cast(verifier_log, ctypes.c_void_p),
            kernel_log_size=VERIFIER_LOG_SIZE,
            kernel_log_level=0,
            # libbpf relocates against this file instead of the kernel's BTF (BTFHub files).
            btf_custom_path=self.btf_path.encode() if self.btf_path else None,
        )
        with lib.lock:
            lib.capture()
            lib.messages = []
            ctypes.set_errno(0)
            obj = lib.lib.bpf_object__open_file(path.encode(), ctypes.byref(opts))
            if not obj:
                raise SourceUnavailable(
                    f"cannot open {path}: {_strerror(ctypes.get_errno())}" + _last_message(lib.messages)
                )
            try:
                self._configure(lib, obj, program, defines, map_sizes)
                ret = lib.lib.bpf_object__load(obj)
                if ret < 0:
                    raise SourceUnavailable(
                        self._load_failure(-ret, program, lib.messages, verifier_log.value)
                    )
            except BaseException:
                lib.lib.bpf_object__close(obj)
                raise
        cpus = possible_cpus(read_text("/sys/devices/system/cpu/possible"))
        return LibbpfProgram(lib, obj, program, cpus)

    @staticmethod
    def _configure(
        lib: _Libbpf, obj: int, program: str, defines: dict[str, int], map_sizes: dict[str, int]
    ) -> None:
        """Settings into .rodata (by variable name, from the object's BTF), then map sizes."""
        for name, entries in map_sizes.items():
            m = lib.lib.bpf_object__find_map_by_name(obj, name.encode())
            if not m or lib.lib.bpf_map__set_max_entries(m, entries) < 0:
                raise SourceUnavailable(f"{program}.bpf.o: cannot size map {name}")
        if not defines:
            return
        rodata = _find_rodata(lib, obj)
        size = ctypes.c_size_t()
        data = lib.lib.bpf_map__initial_value(rodata, ctypes.byref(size)) if rodata else None
        btf = lib.lib.bpf_object__btf(obj)
        sec_id = lib.lib.btf__find_by_name_kind(btf, b".rodata", BTF_KIND_DATASEC) if btf else -1
        if not data or sec_id < 0:
            raise SourceUnavailable(f"{program}.bpf.o has no .rodata settings")
        sec = lib.lib.btf__type_by_id(btf, sec_id)
        secinfo = ctypes.cast(
            ctypes.addressof(sec.contents) + ctypes.sizeof(_BtfType), ctypes.POINTER(_VarSecinfo)
        )
        offsets = {}
        for i in range(sec.contents.info & 0xFFFF):
            var = lib.lib.btf__type_by_id(btf, secinfo[i].type).contents
            offsets[lib.lib.btf__name_by_offset(btf, var.name_off).decode()] = (
                secinfo[i].offset,
                secinfo[i].size,
            )
        for name, value in defines.items():
            if name not in offsets:
                raise SourceUnavailable(f"{program}.bpf.o has no setting {name}")
            offset, width = offsets[name]
            if offset + width > size.value:
                raise SourceUnavailable(f"{program}.bpf.o: setting {name} outside .rodata")
            ctypes.memmove(data + offset, value.to_bytes(width, sys.byteorder), width)

    @staticmethod
    def _load_failure(code: int, program: str, messages: list[str], log_bytes: bytes) -> str:
        failed = _failed_program(messages)
        if log_bytes.strip():  # the verifier refused a program
            tail = verifier_tail(log_bytes.decode(errors="replace"))
            for line in tail:
                log_event(log, logging.DEBUG, "verifier", object=program, program=failed, line=line)
            return (
                f"the kernel's verifier rejected {program}.bpf.o program {failed or '?'} "
                f"({_strerror(code)}): {verifier_verdict(tail)[:160]} "
                "(its last lines at debug log level)"
            )
        if code == errno.EPERM:
            return f"loading {program}.bpf.o: bpf() denied (EPERM): {_eperm_cause()}"
        return f"loading {program}.bpf.o failed: {_strerror(code)}{_last_message(messages)}"


def _find_rodata(lib: _Libbpf, obj: int) -> int | None:
    m = lib.lib.bpf_object__next_map(obj, None)
    while m:
        if (lib.lib.bpf_map__name(m) or b"").endswith(b".rodata"):
            return m
        m = lib.lib.bpf_object__next_map(obj, m)
    return None


def _failed_program(messages: list[str]) -> str:
    """libbpf names the program it could not load: "prog 'NAME': BPF program load failed"."""
    for text in reversed(messages):
        if text.startswith("libbpf: prog '") and "'" in text[14:]:
            return text[14 : text.index("'", 14)]
    return ""


def _eperm_cause() -> str:
    try:
        return eperm_cause(read_text("/proc/self/status"))
    except OSError:
        return "missing CAP_BPF + CAP_PERFMON, or a seccomp profile denying bpf()"


def _last_message(messages: list[str]) -> str:
    return f" (libbpf: {messages[-1].removeprefix('libbpf: ')[:160]})" if messages else ""
