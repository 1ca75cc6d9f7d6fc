"""What both eBPF backends share: the Loader/Program interface the collectors use, where the
BPF programs live, and the checks made before anything is loaded (capabilities, bpf() denied by
seccomp or a security module). ebpf_loader (bcc, backend choice) and ebpf_libbpf both build on
this module; neither imports the other's internals back.
"""

from __future__ import annotations

import ctypes
import errno
import os

from exporter.contract import ParseError, SourceUnavailable

from .common import read_text

BPF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf")

# Capability bits (include/uapi/linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


# --- privileges ------------------------------------------------------------------


def effective_capabilities(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            value = line[len("CapEff:") :].strip()
            if 0 < len(value) <= 16 and all(c in "0123456789abcdefABCDEF" for c in value):
                return int(value, 16)
            raise ParseError("/proc/self/status: CapEff is not a 64-bit hex mask")
    raise ParseError("/proc/self/status: no CapEff line")


def can_trace(cap_eff: int) -> bool:
    """Loading tracing programs needs CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON (kernel >= 5.8)."""
    has = lambda cap: bool(cap_eff >> cap & 1)  # noqa: E731
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def check_privileges() -> None:
    try:
        caps = effective_capabilities(read_text("/proc/self/status"))
    except (OSError, ParseError) as e:
        raise SourceUnavailable(f"cannot read own capabilities: {e}") from None
    if not can_trace(caps):
        raise SourceUnavailable(
            "needs root, or CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN), to load tracing BPF programs"
        )


def seccomp_mode(status_text: str) -> int:
    """/proc/self/status "Seccomp:" (0 none, 1 strict, 2 filter); 0 when the kernel has none."""
    for line in status_text.splitlines():
        if line.startswith("Seccomp:"):
            return int(line.split()[1])
    return 0


def eperm_cause(status_text: str) -> str:
    """Why bpf() said EPERM, from what the kernel says about this process."""
    try:
        caps = effective_capabilities(status_text)
    except ParseError:
        caps = 0
    if not can_trace(caps):
        return "missing CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN)"
    if seccomp_mode(status_text) == 2:
        return (
            "CAP_BPF and CAP_PERFMON are held but a seccomp filter denies bpf() (a container "
            "runtime's default profile does): run with a profile that allows bpf()"
        )
    return (
        "CAP_BPF and CAP_PERFMON are held and no seccomp filter is active: a security module "
        "(SELinux, AppArmor, lockdown) denies bpf()"
    )


# bpf(2) syscall numbers (no libc wrapper); the probe is skipped on other architectures.
SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}
BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2


def bpf_denied_reason() -> str | None:
    """Create (and close) a one-entry array map: a reason when bpf() itself is refused (EPERM),
    else None. Run before loading, so the reason names the cause instead of a backend's
    "Failed to compile BPF module" or "failed to load object"."""
    nr = SYS_BPF.get(os.uname().machine)
    if nr is None:
        return None
    attr = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 8, 1)  # type, key, value size, entries
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(
        ctypes.c_long(nr), ctypes.c_long(BPF_MAP_CREATE), attr, ctypes.c_uint(ctypes.sizeof(attr))
    )
    if fd >= 0:
        os.close(fd)
        return None
    code = ctypes.get_errno()
    if code == errno.EPERM:
        try:
            status = read_text("/proc/self/status")
        except OSError:
            status = ""
        return f"bpf() denied (EPERM): {eperm_cause(status)}"
    if code == errno.ENOSYS:
        return "the kernel has no bpf() system call (CONFIG_BPF_SYSCALL)"
    return None  # anything else (say, memlock limits before 5.11) shows up when loading


# --- the backend interface -------------------------------------------------------------------


class Program:
    """A loaded BPF object: attach its functions to tracepoints, read its maps, close it."""

    def attach_tracepoint(self, system: str, event: str, function: str) -> None:
        raise NotImplementedError

    def read_map(self, name: str, per_cpu: bool = False) -> dict:
        """{key: value}. Struct keys become tuples of their fields in order, ints stay ints.
        Per-CPU maps: the sum over CPUs, or {cpu: value} with per_cpu=True; entries that are
        zero on every CPU are left out (an array has every key from the start)."""
        raise NotImplementedError

    def close(self) -> None:
        """Detach everything and release file descriptors. Safe to call twice."""
        raise NotImplementedError


class Loader:
    """A backend. `program` names a collector's BPF program: bpf/<program>.c for bcc,
    bpf/<program>.bpf.o for libbpf."""

    name = ""

    def check_available(self, program: str) -> None:
        """Raise SourceUnavailable(reason) when this backend is not installed for `program`."""

    def check(self, program: str) -> None:
        """Raise SourceUnavailable(reason) when this backend cannot run `program` here (cheap:
        no compile, no load): not installed, no privileges, bpf() denied."""

    def load(self, program: str, defines: dict[str, int], map_sizes: dict[str, int]) -> Program:
        """Compile/load; SourceUnavailable(one-line reason) on failure. `defines` are the
        program's settings (bcc: -D; libbpf: .rodata constants of the same names); `map_sizes`
        size maps whose size depends on them (bcc's C text computes those from the defines)."""
        raise NotImplementedError
