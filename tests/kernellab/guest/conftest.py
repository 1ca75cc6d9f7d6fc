"""Fixtures for the tests that run inside the kernel lab's guest (Debian's 6.1 kernel under
qemu; see docs/kernel-lab.md). The guest is a whole machine of its own: its root network
namespace, modules and IPVS table belong to this test run only."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers import Exporter, need, run


def loaded_modules() -> set[str]:
    return {line.split(" ", 1)[0] for line in Path("/proc/modules").read_text().splitlines()}


class GuestExporter(Exporter):
    """The exporter in the guest: Python runs ~20x slower under TCG, so start-up takes longer
    and a first collection (conntrack's probe imports pyroute2) can outlast the default 9 s."""

    def __init__(self, *args: str, env: dict | None = None, **kw):
        super().__init__(*args, env={"NETSTACK_SCRAPE_TIMEOUT": "120s", **(env or {})}, **kw)

    def wait_ready(self, timeout: float = 240.0) -> None:
        super().wait_ready(timeout)

    def get(self, path: str = "/metrics", headers: dict | None = None, timeout: float = 120):
        return super().get(path, headers, timeout)

    def scrape_until(self, check, timeout: float = 150.0, what: str = "") -> dict:
        """Scrape until check(metrics) is true; the last scrape otherwise (as an AssertionError)."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.scrape()
            if check(metrics):
                return metrics
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what or 'condition'} not met after {timeout} s; log:\n{self.log()[-3000:]}"
                )
            time.sleep(2)


def start_all(*exporters: GuestExporter) -> None:
    """Start several exporters at once: their slow interpreter start-ups overlap."""
    for e in exporters:
        e.wait = False
        e.__enter__()
    for e in exporters:
        try:
            e.wait_ready()
        except BaseException:
            for other in exporters:
                other.__exit__(None, None, None)
            raise


@pytest.fixture(scope="session", autouse=True)
def in_guest():
    need(
        os.environ.get("KERNELLAB_GUEST") == "1" and os.geteuid() == 0,
        "runs only inside the kernel lab's guest, as root (python -m tests.kernellab)",
    )
    assert os.uname().release.startswith("6.1."), os.uname().release


@pytest.fixture(scope="session")
def default_exporter():
    """The exporter with its defaults, started before anything has loaded ip_vs. nf_conntrack
    is loaded first (a node with any NAT rule has it) so the conntrack collector has a table."""
    assert "ip_vs" not in loaded_modules(), "ip_vs is loaded before the exporter started"
    run(["modprobe", "nf_conntrack"])
    with GuestExporter() as exporter:
        yield exporter
