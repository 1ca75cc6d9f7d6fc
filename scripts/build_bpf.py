#!/usr/bin/env python3
"""Compile the CO-RE BPF programs collectors/bpf/*.bpf.c into collectors/bpf/*.bpf.o.

    python3 scripts/build_bpf.py [--out DIR] [--btf FILE]

Run by the package build (setup.py) and usable on its own. Needs clang (Debian clang), bpftool
(to write vmlinux.h from BTF) and libbpf's BPF headers (Debian libbpf-dev). vmlinux.h is
generated here, from the build machine's /sys/kernel/btf/vmlinux (or --btf / NETSTACK_BTF),
and not committed: it is ~2.8 MB and ~135,000 lines per architecture, and the programs take
nothing from it that differs between kernels (they read only tracepoint arguments, see the
.bpf.c files), so any kernel's BTF of the target architecture gives the same objects.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = ROOT / "collectors" / "bpf"
DEFAULT_BTF = "/sys/kernel/btf/vmlinux"
# __TARGET_ARCH_* selects bpf_tracing.h's register layout for the target architecture.
TARGET_ARCH = {
    "x86_64": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "s390x": "s390",
    "ppc64le": "powerpc",
    "riscv64": "riscv",
}
LIBBPF_HEADER = "bpf/bpf_helpers.h"
HEADER_DIRS = ("/usr/include", "/usr/local/include")


class BuildError(Exception):
    """A tool or input is missing; the message says which and how to get it."""


def sources(bpf_dir: Path = BPF_DIR) -> list[Path]:
    return sorted(bpf_dir.glob("*.bpf.c"))


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name) or (shutil.which(name, path="/usr/sbin:/sbin"))
    if not path:
        raise BuildError(
            f"{name} not found: building the BPF objects needs it (Debian: apt-get install {package})"
        )
    return path


def check_inputs(btf: str) -> tuple[str, str, str]:
    """(clang, bpftool, target arch) or BuildError naming what is missing."""
    clang = require_tool("clang", "clang llvm")
    bpftool = require_tool("bpftool", "bpftool")
    if not any(os.path.exists(os.path.join(d, LIBBPF_HEADER)) for d in HEADER_DIRS):
        raise BuildError(
            f"<{LIBBPF_HEADER}> not found: building the BPF objects needs libbpf's "
            "headers (Debian: apt-get install libbpf-dev)"
        )
    if not os.path.exists(btf):
        raise BuildError(
            f"no BTF at {btf}: vmlinux.h is generated from kernel BTF; build on a "
            "kernel with CONFIG_DEBUG_INFO_BTF, or set NETSTACK_BTF (or --btf) to a "
            "vmlinux or .btf file of the target architecture"
        )
    machine = platform.machine()
    if machine not in TARGET_ARCH:
        raise BuildError(f"unknown architecture {machine}: add it to TARGET_ARCH")
    return clang, bpftool, TARGET_ARCH[machine]


def build(out_dir: Path, btf: str = "", quiet: bool = False) -> list[Path]:
    """Compile every *.bpf.c into out_dir; return the objects written."""
    btf = btf or os.environ.get("NETSTACK_BTF") or DEFAULT_BTF
    clang, bpftool, arch = check_inputs(btf)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    with tempfile.TemporaryDirectory(prefix="netstack-bpf-") as tmp:
        header = Path(tmp) / "vmlinux.h"
        with open(header, "w") as f:
            run([bpftool, "btf", "dump", "file", btf, "format", "c"], stdout=f)
        for src in sources():
            obj = out_dir / (src.name[:-2] + ".o")  # softirq.bpf.c -> softirq.bpf.o
            run(
                [
                    clang,
                    "-target",
                    "bpf",
                    f"-D__TARGET_ARCH_{arch}",
                    "-O2",
                    "-g",
                    "-Wall",
                    "-Werror",
                    "-I",
                    tmp,
                    "-c",
                    str(src),
                    "-o",
                    str(obj),
                ]
            )
            built.append(obj)
            if not quiet:
                print(f"build_bpf: {src.relative_to(ROOT)} -> {obj}", file=sys.stderr)
    return built


def run(argv: list[str], **kwargs) -> None:
    result = subprocess.run(argv, stderr=subprocess.PIPE, text=True, **kwargs)
    if result.returncode != 0:
        raise BuildError(f"{os.path.basename(argv[0])} failed ({result.returncode}): {result.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BPF_DIR, help="output directory")
    parser.add_argument("--btf", default="", help=f"kernel BTF for vmlinux.h ({DEFAULT_BTF})")
    args = parser.parse_args()
    try:
        build(args.out, args.btf)
    except BuildError as e:
        print(f"build_bpf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
