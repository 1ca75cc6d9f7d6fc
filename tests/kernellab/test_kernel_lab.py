"""The kernel lab in the normal suite: Debian's 6.1 kernel booted once per session under qemu,
the guest selection (tests/kernellab/guest: real IPVS, every default collector) run inside it,
each guest test module reported here as one test that fails with the guest's output.

Not skipped for a missing /dev/kvm or a slow machine: the lab falls back to TCG."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import need, need_root, need_tool
from tests.kernellab import lab

GUEST_DIR = Path(__file__).with_name("guest")
# What runs in the guest. Tests of other kernel features that must also pass on 6.1 join here.
GUEST_SELECTION = ["tests/kernellab/guest"]
GUEST_MODULES = sorted(p.stem for p in GUEST_DIR.glob("test_*.py"))
LAB_TIMEOUT = 1500  # seconds for boot plus the whole guest selection under TCG

pytestmark = [pytest.mark.root, pytest.mark.timeout(LAB_TIMEOUT + 120)]

RESULT: dict[str, lab.Result] = {}  # for the terminal summary (tests/kernellab/conftest.py)


@pytest.fixture(scope="session")
def guest_run() -> lab.Result:
    need_root()
    need_tool("qemu-system-x86_64", "qemu-system-x86")
    need_tool("ipvsadm", "ipvsadm")
    need_tool("depmod", "kmod")
    need_tool("apt-get", "apt")
    need(
        Path("/bin/busybox").exists() and shutil.which("busybox") is not None,
        "needs /bin/busybox (Debian package busybox-static)",
    )
    try:
        result = lab.boot(
            [*GUEST_SELECTION, "-p", "no:cacheprovider", "-q", "-rA", "--junitxml=/kernellab/junit.xml"],
            timeout=LAB_TIMEOUT,
        )
    except lab.LabError as e:
        pytest.fail(f"kernel lab: {e}")
    RESULT["guest"] = result
    return result


def guest_report(result: lab.Result) -> str:
    return (
        f"guest pytest exit status {result.returncode} after {result.wall:.0f} s "
        f"({result.release}, {result.accel}); its output:\n{result.output[-20000:]}"
        + ("" if result.output else f"\nconsole:\n{result.console[-6000:]}")
    )


def test_guest_runs_debian_6_1(guest_run):
    assert guest_run.release.startswith("6.1."), guest_run.release
    assert f"kernellab guest: {guest_run.release}" in guest_run.output, guest_report(guest_run)
    assert "junit.xml" in guest_run.files, guest_report(guest_run)
    assert guest_run.returncode == 0, guest_report(guest_run)


@pytest.mark.parametrize("module", GUEST_MODULES)
def test_guest_module_passes(guest_run, module):
    """Every test of one guest module ran in the guest and passed (a skip counts as a
    failure: the guest is built to have everything these tests need)."""
    report = guest_run.files.get("junit.xml")
    assert report, guest_report(guest_run)
    cases = [
        c for c in ET.fromstring(report).iter("testcase") if c.get("classname", "").split(".")[-1] == module
    ]
    assert cases, f"no test of {module} ran in the guest\n" + guest_report(guest_run)
    bad = [
        f"{c.get('name')}: {c[0].tag}: {(c[0].get('message') or '')[:300]}"
        for c in cases
        if len(c) and c[0].tag in ("failure", "error", "skipped")
    ]
    assert not bad, "\n".join(bad) + "\n\n" + guest_report(guest_run)
