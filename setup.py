"""Package build hook: compile the CO-RE BPF objects (collectors/bpf/*.bpf.o) into the build.

Everything else about the package is in pyproject.toml. A wheel without the objects would give
the libbpf backend nothing to load, so a wheel build fails with the missing tool's name (clang,
bpftool, libbpf-dev, kernel BTF). An editable install (a development checkout) only warns: the
objects are built into the source tree when the tools are there, and the libbpf backend says
what is missing at run time when they are not. NETSTACK_SKIP_BPF=1 builds without them (a
bcc-only package).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _build_bpf_module():
    spec = importlib.util.spec_from_file_location("build_bpf", HERE / "scripts" / "build_bpf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithBpf(build_py):
    def run(self) -> None:
        super().run()
        if os.environ.get("NETSTACK_SKIP_BPF") == "1":
            print("setup.py: NETSTACK_SKIP_BPF=1: no BPF objects in this build", file=sys.stderr)
            return
        build_bpf = _build_bpf_module()
        editable = getattr(self, "editable_mode", False)
        out = HERE / "collectors" / "bpf" if editable else Path(self.build_lib) / "collectors" / "bpf"
        try:
            build_bpf.build(out)
        except build_bpf.BuildError as e:
            if not editable:
                raise SystemExit(
                    f"setup.py: cannot build the BPF objects: {e} "
                    "(NETSTACK_SKIP_BPF=1 builds a package without them)"
                ) from None
            print(f"setup.py: warning: BPF objects not built: {e}", file=sys.stderr)


setup(cmdclass={"build_py": BuildPyWithBpf})
