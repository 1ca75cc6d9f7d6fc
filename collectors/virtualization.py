"""virtualization: does this node run its own kernel (a VM guest, or bare metal) or share its
host's kernel (OpenVZ/Virtuozzo, LXC, a container)? And can it load kernel modules?

A shared-kernel "VPS" cannot load ip_vs, wireguard or br_netfilter: kube-proxy's IPVS mode, some
CNIs and conntrack tuning fail in ways that look like network bugs.

The exporter usually runs in a container itself (the DaemonSet), so everything is read through
--path.procfs / --path.sysfs: the host's /proc shows the host's PID 1 and PID 2. Sources, most
specific first:

  shared kernel  /proc/vz or /proc/user_beancounters without /proc/bc (OpenVZ/Virtuozzo
                 container; the host node has /proc/bc as well);
                 PID 1's `container=` environment variable and /run/systemd/container (read via
                 /proc/1/root); engine names in PID 1's cgroup paths; otherwise, when the PID
                 namespace is not the first one (PID 2 is not the kernel's kthreadd), marker files
                 /.dockerenv and /run/.containerenv. A marker alone is not trusted: images leave
                 /.dockerenv behind on VMs made from them (systemd-detect-virt says "docker" on
                 such a Firecracker guest).
  own kernel     /sys/hypervisor/type (Xen; dom0 excluded), DMI vendor strings, the OEM ID of the
                 ACPI tables (Firecracker has no DMI: its tables say FIRECK), the `hypervisor` CPU
                 flag with the paravirtual clock source (kvm-clock, xen, hyperv_clocksource).

/proc/1/environ and /proc/1/root need ptrace access to PID 1 (CAP_SYS_PTRACE across containers);
without it those sources are skipped and the others decide.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.contract import Collector, Option, Paths
from exporter.logs import log_event
from exporter.metrics import GaugeMetricFamily, Metric

log = logging.getLogger("netstack.virtualization")

GUEST, CONTAINER, NONE = "guest", "container", "none"

# DMI strings (sys_vendor, product_name, board_vendor, bios_vendor) -> type; first match wins.
DMI_VENDORS = (
    ("Firecracker", "firecracker"),
    ("KubeVirt", "kvm"),
    ("OpenStack", "kvm"),
    ("KVM", "kvm"),
    ("Amazon EC2", "amazon"),
    ("Google", "google"),
    ("QEMU", "qemu"),
    ("VMware", "vmware"),
    ("VMW", "vmware"),
    ("innotek GmbH", "oracle"),
    ("VirtualBox", "oracle"),
    ("Xen", "xen"),
    ("Bochs", "bochs"),
    ("Parallels", "parallels"),
    ("BHYVE", "bhyve"),
    ("Apple Virtualization", "apple"),
)
# OEM ID (bytes 10-15 of every ACPI table header) -> type.
ACPI_OEM_IDS = {
    "FIRECK": "firecracker",
    "VRTUAL": "hyperv",
    "VMWARE": "vmware",
    "Xen": "xen",
    "VBOX": "oracle",
    "AMAZON": "amazon",
    "Google": "google",
    "BOCHS": "qemu",
}
CLOCKSOURCES = (("kvm-clock", "kvm"), ("hyperv_clocksource", "hyperv"), ("xen", "xen"))
# `container=` values (systemd's list) -> type.
CONTAINER_NAMES = {
    "lxc": "lxc",
    "lxc-libvirt": "lxc",
    "systemd-nspawn": "systemd-nspawn",
    "docker": "docker",
    "podman": "podman",
    "rkt": "rkt",
    "wsl": "wsl",
    "proot": "proot",
    "pouch": "pouch",
    "oci": "container-other",
}
CGROUP_ENGINES = (
    (re.compile(r"/docker[-/]|/docker\.service"), "docker"),
    (re.compile(r"/libpod[-/]"), "podman"),
    (re.compile(r"/lxc[./]|/lxc\.payload"), "lxc"),
    (re.compile(r"/machine\.slice/machine-"), "systemd-nspawn"),
    (re.compile(r"/kubepods"), "container-other"),
)
XENFEAT_DOM0 = 11
ACPI_TABLES = ("FACP", "APIC", "DSDT", "MCFG", "HPET", "SRAT", "WAET")


@dataclass
class Facts:
    """What the host's /proc and /sys say; None where a source could not be read."""

    vz: bool = False
    beancounters: bool = False
    bc: bool = False
    pid1_visible: bool = False
    pid2_kthreadd: bool = False
    pid1_environ: dict[str, str] | None = None
    systemd_container: str | None = None
    pid1_cgroups: list[str] = field(default_factory=list)
    dockerenv: bool = False
    containerenv: bool = False
    hypervisor_type: str | None = None
    xen_features: int | None = None
    dmi: list[str] = field(default_factory=list)
    acpi_oem_ids: list[str] = field(default_factory=list)
    cpu_hypervisor_flag: bool = False
    clocksources: list[str] = field(default_factory=list)


def _read(path: str, limit: int = 1 << 20) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:  # absent, or no ptrace access to PID 1
        return None


def _text(path: str) -> str | None:
    data = _read(path)
    return None if data is None else data.decode("utf-8", "replace").strip()


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/PID/environ: NUL-separated NAME=value."""
    out = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            out[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def parse_status_field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


def parse_cpu_flags(text: str) -> set[str]:
    """Flags of the first CPU in /proc/cpuinfo (x86 'flags', arm64 'Features')."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def acpi_oem_id(header: bytes) -> str | None:
    """The OEM ID of an ACPI table (header bytes 10-15, space padded)."""
    if len(header) < 16:
        return None
    return header[10:16].decode("ascii", "replace").rstrip(" \0") or None


def read_facts(paths: Paths) -> Facts:
    f = Facts()
    f.vz = os.path.exists(paths.proc("vz"))
    f.beancounters = os.path.exists(paths.proc("user_beancounters"))
    f.bc = os.path.exists(paths.proc("bc"))
    status1 = _text(paths.proc("1", "status"))
    f.pid1_visible = status1 is not None
    status2 = _text(paths.proc("2", "status")) or ""
    f.pid2_kthreadd = (
        parse_status_field(status2, "Name") == "kthreadd" and parse_status_field(status2, "PPid") == "0"
    )
    environ = _read(paths.proc("1", "environ"))
    f.pid1_environ = None if environ is None else parse_environ(environ)
    f.systemd_container = _text(paths.proc("1", "root", "run", "systemd", "container"))
    cgroups = _text(paths.proc("1", "cgroup")) or ""
    f.pid1_cgroups = [line.split(":", 2)[2] for line in cgroups.splitlines() if line.count(":") >= 2]
    f.dockerenv = os.path.exists(paths.proc("1", "root", ".dockerenv"))
    f.containerenv = os.path.exists(paths.proc("1", "root", "run", ".containerenv"))
    f.hypervisor_type = _text(paths.sys("hypervisor", "type"))
    features = _text(paths.sys("hypervisor", "properties", "features"))
    try:
        f.xen_features = int(features, 16) if features else None
    except ValueError:
        f.xen_features = None
    for name in ("sys_vendor", "product_name", "board_vendor", "bios_vendor"):
        value = _text(paths.sys("class", "dmi", "id", name))
        if value:
            f.dmi.append(value)
    for table in ACPI_TABLES:
        header = _read(paths.sys("firmware", "acpi", "tables", table), 36)
        oem = acpi_oem_id(header) if header else None
        if oem and oem not in f.acpi_oem_ids:
            f.acpi_oem_ids.append(oem)
    f.cpu_hypervisor_flag = "hypervisor" in parse_cpu_flags(_text(paths.proc("cpuinfo")) or "")
    clocks = _text(paths.sys("devices", "system", "clocksource", "clocksource0", "available_clocksource"))
    f.clocksources = clocks.split() if clocks else []
    return f


def detect(f: Facts) -> tuple[str, str, str]:
    """(type, role, evidence) from the facts; role is guest, container or none."""
    container = _container(f)
    if container:
        return container[0], CONTAINER, container[1]
    guest = _hypervisor(f)
    if guest:
        return guest[0], GUEST, guest[1]
    return "none", NONE, "no container or hypervisor signs"


def _container(f: Facts) -> tuple[str, str] | None:
    if (f.vz or f.beancounters) and not f.bc:
        found = "/proc/vz" if f.vz else "/proc/user_beancounters"
        return "openvz", f"{found} without /proc/bc"
    if f.pid1_environ and f.pid1_environ.get("container"):
        name = f.pid1_environ["container"]
        return CONTAINER_NAMES.get(name, "container-other"), f"PID 1 container={name}"
    if f.systemd_container:
        name = f.systemd_container
        return CONTAINER_NAMES.get(name, "container-other"), f"/run/systemd/container={name}"
    for path in f.pid1_cgroups:
        for pattern, kind in CGROUP_ENGINES:
            if pattern.search(path):
                return kind, f"PID 1 cgroup {path}"
    if f.pid1_visible and not f.pid2_kthreadd:
        if f.dockerenv:
            return "docker", "PID namespace of a container, /.dockerenv"
        if f.containerenv:
            return "podman", "PID namespace of a container, /run/.containerenv"
        return "container-other", "PID namespace of a container (PID 2 is not kthreadd)"
    return None


def _hypervisor(f: Facts) -> tuple[str, str] | None:
    if f.hypervisor_type == "xen":
        if f.xen_features is not None and f.xen_features >> XENFEAT_DOM0 & 1:
            return None  # dom0 runs the hypervisor's control domain: not a guest
        return "xen", "/sys/hypervisor/type=xen"
    for value in f.dmi:
        if "Microsoft Corporation" in value and "Virtual Machine" in f.dmi:
            return "hyperv", "DMI Microsoft Corporation Virtual Machine"
        for needle, kind in DMI_VENDORS:
            if needle in value:
                if kind == "qemu" and "kvm-clock" in f.clocksources:
                    kind = "kvm"
                return kind, f"DMI {value}"
    for oem in f.acpi_oem_ids:
        if oem in ACPI_OEM_IDS:
            kind = ACPI_OEM_IDS[oem]
            if kind == "qemu" and "kvm-clock" in f.clocksources:
                kind = "kvm"
            return kind, f"ACPI OEM ID {oem}"
    if f.cpu_hypervisor_flag:
        for clock, kind in CLOCKSOURCES:
            if any(c.startswith(clock) for c in f.clocksources):
                return kind, f"hypervisor CPU flag, {clock} clock source"
        return "vm-other", "hypervisor CPU flag"
    return None


def modules_loadable(paths: Paths, role: str, modules_dir: str) -> tuple[bool, str]:
    """(can load, reason): shared_kernel, no_module_support (no /proc/modules: built without
    CONFIG_MODULES), modules_disabled (kernel.modules_disabled=1), no_modules_directory (nothing
    under modules-path for the running kernel), or none."""
    if role == CONTAINER:
        return False, "shared_kernel"
    if not os.path.exists(paths.proc("modules")):
        return False, "no_module_support"
    if (_text(paths.proc("sys", "kernel", "modules_disabled")) or "0") == "1":
        return False, "modules_disabled"
    release = _text(paths.proc("sys", "kernel", "osrelease"))
    if not release or not os.path.isdir(os.path.join(modules_dir, release)):
        return False, "no_modules_directory"
    return True, "none"


def _absolute(path: str) -> None:
    if not os.path.isabs(path):
        raise ValueError(f"must be an absolute path, got {path!r}")


class VirtualizationCollector(Collector):
    name = "virtualization"
    default_enabled = True
    help = (
        "Own kernel (VM guest, bare metal) or shared kernel (OpenVZ, LXC, container); whether "
        "kernel modules can be loaded."
    )
    options = (
        Option(
            "modules-path",
            "The host's kernel module tree (/lib/modules; the DaemonSet mounts it at /host/lib/modules).",
            "/lib/modules",
            validate=_absolute,
        ),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self._logged: tuple[str, str, str] | None = None

    def collect(self) -> Iterable[Metric]:
        kind, role, evidence = detect(read_facts(self.paths))
        loadable, reason = modules_loadable(self.paths, role, self.option("modules-path"))
        if self._logged != (kind, role, reason):
            log_event(
                log,
                logging.INFO,
                "virtualization",
                type=kind,
                role=role,
                evidence=evidence,
                modules_loadable=loadable,
                reason=reason,
            )
            self._logged = (kind, role, reason)
        info = GaugeMetricFamily(
            "netstack_virtualization_info",
            "What runs this node: type (kvm, xen, vmware, hyperv, "
            "firecracker, openvz, lxc, docker, ..., none) and role (guest = own kernel, "
            "container = the host's kernel, none = bare metal). Always 1.",
            labels=["type", "role"],
        )
        info.add_metric([kind, role], 1)
        modules = GaugeMetricFamily(
            "netstack_kernel_modules_loadable",
            "1 when this node can load kernel modules "
            "(ip_vs, wireguard); 0 with the reason: shared_kernel, no_module_support, "
            "modules_disabled, no_modules_directory.",
            labels=["reason"],
        )
        modules.add_metric([reason], int(loadable))
        return [info, modules]


COLLECTOR = VirtualizationCollector
