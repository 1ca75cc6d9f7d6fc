"""Package build hook: compile the CO-RE BPF objects (collectors/bpf/*.bpf.o) into the build.

Everything else about the package is in pyproject.toml. Without the tools (clang, bpftool,
libbpf-dev, kernel BTF) the build warns with the missing tool's name and goes on without the
objects: the eBPF collectors are off by default, and with them on, the libbpf backend says at run
time what this install lacks. So `pip install .` works on a host with only Python. A build that
must carry them (the container image, a release wheel) sets NETSTACK_REQUIRE_BPF=1 and fails
instead; NETSTACK_SKIP_BPF=1 does not try (a bcc-only package).
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
            if os.environ.get("NETSTACK_REQUIRE_BPF") == "1":
                raise SystemExit(f"setup.py: cannot build the BPF objects: {e}") from None
            print(
                f"setup.py: warning: BPF objects not built ({e}); the libbpf eBPF backend will be "
                "unavailable in this install",
                file=sys.stderr,
            )


setup(cmdclass={"build_py": BuildPyWithBpf})
