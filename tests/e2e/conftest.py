"""Session fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.helpers import need_root, need_tool


@pytest.fixture(scope="session")
def built_image(tmp_path_factory):
    """packaging/Dockerfile's default image, built once for every test that runs it."""
    from tests.image import IMAGE, build_image, podman
    from tests.integration.test_ebpf_loader import need_core_objects

    need_root()
    need_tool("podman", "podman")
    need_tool("runc", "runc")
    need_core_objects()  # the build machine can build the BPF objects (clang, bpftool, BTF)
    yield build_image(tmp_path_factory.mktemp("base"))
    podman("rmi", "-f", IMAGE, check=False)
