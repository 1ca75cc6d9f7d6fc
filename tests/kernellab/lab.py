"""The kernel lab: Debian's 6.1 kernel booted in qemu, the host's root as the guest's root
(read-only over 9p, a tmpfs overlay on top), a pytest selection run inside, its exit status and
output carried back through a writable 9p share.

Steps (each cached under .cache/kernellab/ where it can be):
  fetch     `apt-get download` of the package linux-image-amd64 depends on, `dpkg-deb -x`, depmod
  vmlinux   the ELF inside the package's bzImage (qemu boots it directly through its PVH entry)
  initramfs static busybox, the virtio/9p/overlay modules in dependency order, and init.sh
  boot      qemu; stage 1 (init.sh) mounts the root and switch_roots into guest_init.sh, which
            runs pytest and powers off
"""

from __future__ import annotations

import contextlib
import gzip
import io
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = Path(os.environ.get("KERNELLAB_CACHE", ROOT / ".cache" / "kernellab"))
META_PACKAGE = "linux-image-amd64"
# Loaded by stage 1 to reach the root; their dependencies are added from modules.dep.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
BUSYBOX = Path("/bin/busybox")  # Debian busybox-static: no shared libraries needed in the initramfs


class LabError(Exception):
    """The lab could not be built or booted (not a test failure inside the guest)."""


def log(msg: str) -> None:
    print(f"kernellab: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], timeout: float = 300, **kw) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)}: no result after {timeout} s") from None
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


# --- the kernel package -------------------------------------------------------------------------


def kernel_package() -> str:
    """The versioned image package the meta-package depends on (linux-image-6.1.0-NN-amd64)."""
    out = _run(["apt-cache", "depends", META_PACKAGE])
    found = re.findall(r"Depends: (linux-image-\S+)", out)
    if not found:
        raise LabError(
            f"apt-cache depends {META_PACKAGE}: no linux-image dependency "
            f"(run apt-get update?): {out.strip()[:300]}"
        )
    return found[0]


@dataclass
class Kernel:
    root: Path  # the extracted package
    release: str  # 6.1.0-NN-amd64

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"


def fetch(cache: Path = CACHE) -> Kernel:
    """Download and extract the kernel package once; later calls reuse the cache."""
    package = kernel_package()
    release = package.removeprefix("linux-image-")
    root = cache / package
    if (root / ".complete").exists():
        return Kernel(root, release)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        # apt drops privileges to _apt for downloads; a directory it can write avoids the warning
        os.chmod(tmp, 0o777)
        log(f"downloading {package}")
        _run(["apt-get", "download", "-q", package], cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise LabError(f"apt-get download {package}: expected one .deb, found {debs}")
        shutil.rmtree(root, ignore_errors=True)
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    kernel = Kernel(root, release)
    if not kernel.vmlinuz.exists() or not kernel.modules.is_dir():
        raise LabError(f"{package}: no {kernel.vmlinuz.name} or modules in the package")
    # the package ships no modules.dep (the postinst makes it); modprobe in the guest needs one
    _run(["depmod", "-b", str(root), release])
    (root / ".complete").touch()
    return kernel


# --- vmlinux from bzImage ----------------------------------------------------------------------


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The compressed payload of a bzImage, decompressed: the kernel's ELF image.

    Boot protocol (Documentation/arch/x86/boot.rst): setup_sects at 0x1f1, "HdrS" at 0x202,
    payload_offset/payload_length at 0x248/0x24c, relative to the protected-mode code, which
    starts after the (setup_sects + 1) 512-byte setup sectors."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise LabError("not a bzImage (no HdrS boot header)")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    if payload.startswith(b"\xfd7zXZ\x00"):
        out = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        out = gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
    elif payload.startswith(b"\x5d\x00\x00"):
        out = lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    else:
        raise LabError(f"bzImage payload compressed with an unsupported format: {payload[:6]!r}")
    if not out.startswith(b"\x7fELF"):
        raise LabError("bzImage payload is not an ELF image")
    return out


def vmlinux(kernel: Kernel) -> Path:
    path = kernel.root / "vmlinux"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(extract_vmlinux(kernel.vmlinuz.read_bytes()))
        tmp.rename(path)
    return path


# --- initramfs ---------------------------------------------------------------------------------


def module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module files (relative to modules_dir) to insmod, each after its dependencies."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def add(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            add(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise LabError(f"module {name} not in {modules_dir}/modules.dep")
        add(by_name[name])
    return order


def read_module(path: Path) -> bytes:
    """A module's ELF; busybox insmod does not decompress .ko.xz/.ko.gz/.ko.zst."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return _run_bytes(["zstd", "-dc", str(path)])
    return data


def _run_bytes(cmd: list[str]) -> bytes:
    try:
        return subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise LabError(f"{' '.join(cmd)}: {e}") from None


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data); the format the kernel unpacks as initramfs."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs(kernel: Kernel) -> Path:
    path = kernel.root / "initramfs.cpio.gz"
    init = (HERE / "init.sh").read_bytes()
    stamp = kernel.root / "initramfs.stamp"
    key = f"{len(init)}:{hash(init)}:{BUSYBOX.stat().st_mtime if BUSYBOX.exists() else 0}"
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        return path
    if not BUSYBOX.exists():
        raise LabError(f"{BUSYBOX} missing (Debian package busybox-static)")
    dirs = ["bin", "dev", "proc", "sys", "lower", "overlay", "newroot", "modules"]
    entries: list[tuple[str, int, bytes]] = [(d, 0o040755, b"") for d in dirs]
    entries.append(("bin/busybox", 0o100755, BUSYBOX.read_bytes()))
    entries.append(("init", 0o100755, init))
    order = []
    for i, rel in enumerate(module_order(kernel.modules, INITRAMFS_MODULES)):
        name = f"modules/{i:02d}-{Path(rel).name.split('.ko')[0]}.ko"
        entries.append((name, 0o100644, read_module(kernel.modules / rel)))
        order.append(name)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio_newc(entries), 6))
    tmp.rename(path)
    stamp.write_text(key)
    return path


# --- booting -----------------------------------------------------------------------------------


def accelerator() -> tuple[list[str], str]:
    """KVM only with a hardware-virtualisation module (kvm_intel/kvm_amd): the paravirtual
    kvm_pvm found on some cloud hosts opens /dev/kvm but qemu's -cpu host aborts on it."""
    hw = [m for m in ("kvm_intel", "kvm_amd") if Path("/sys/module", m).is_dir()]
    if hw and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ["-enable-kvm", "-cpu", "host"], f"kvm ({hw[0]})"
    return ["-accel", "tcg,thread=multi", "-cpu", "max"], "tcg"


@dataclass
class Result:
    returncode: int  # pytest's exit status in the guest; -1 when the guest produced none
    output: str  # pytest's output
    console: str  # the guest's serial console (kernel and init messages)
    wall: float  # seconds from qemu's start to its exit
    accel: str
    release: str
    files: dict[str, str]  # other files the guest wrote to the result share (a JUnit report)


def boot(
    pytest_args: list[str],
    timeout: float = 900,
    memory_mb: int = 3072,
    cpus: int | None = None,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> Result:
    """Boot the guest and run `python -m pytest pytest_args` (or `command`) from the project's
    root with this interpreter; returns once the guest has powered off or `timeout` passed."""
    kernel = fetch()
    image, initrd = vmlinux(kernel), initramfs(kernel)
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise LabError("qemu-system-x86_64 not found (Debian package qemu-system-x86)")
    accel, accel_name = accelerator()
    cpus = cpus or min(os.cpu_count() or 1, 4)
    out = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    try:
        job = {
            "KERNELLAB_PROJECT": str(ROOT),
            "KERNELLAB_BIN": os.path.dirname(sys.executable),  # first on the guest's PATH
            "KERNELLAB_MODULES": str(kernel.modules),
            "KERNELLAB_RELEASE": kernel.release,
            "KERNELLAB_TIMEOUT": str(int(timeout - 60 if timeout > 120 else timeout)),
            "KERNELLAB_OUT": "/kernellab",  # the result share, as the guest sees it
            **({"CI": os.environ["CI"]} if "CI" in os.environ else {}),  # skips fail in CI
            **(env or {}),
        }
        cmd_line = command or [sys.executable, "-m", "pytest", *pytest_args]
        (out / "job").write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in job.items())
            + "set -- "
            + " ".join(map(shlex.quote, cmd_line))
            + "\n"
        )
        console = out / "console.log"
        args = [
            qemu,
            *accel,
            "-smp",
            str(cpus),
            "-m",
            str(memory_mb),
            "-kernel",
            str(image),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{console}",
            "-nic",
            "none",
            "-no-reboot",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
            "-virtfs",
            f"local,path={out},mount_tag=labout,security_model=passthrough,multidevs=remap",
        ]
        log(f"booting {kernel.release} ({accel_name}, {cpus} CPUs, {memory_mb} MiB)")
        start = time.monotonic()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            qemu_out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            qemu_out = b""
            raise LabError(f"guest did not finish within {timeout} s; console:\n" + _tail(console)) from None
        finally:
            _kill(proc)
        wall = time.monotonic() - start
        rc_file = out / "rc"
        rc = int(rc_file.read_text().strip() or -1) if rc_file.exists() else -1
        output = (out / "output").read_text(errors="replace") if (out / "output").exists() else ""
        text = console.read_text(errors="replace") if console.exists() else ""
        if proc.returncode != 0:
            text += f"\nqemu exited {proc.returncode}: {qemu_out.decode(errors='replace')}"
        files = {
            p.name: p.read_text(errors="replace")
            for p in out.iterdir()
            if p.is_file() and p.name not in ("job", "rc", "output", "console.log")
        }
        log(f"guest finished in {wall:.1f} s, exit status {rc}")
        return Result(rc, output, text, wall, accel_name, kernel.release, files)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _kill(proc: subprocess.Popen) -> None:
    """qemu by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no console log)"
