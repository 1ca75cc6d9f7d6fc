"""The default container image (packaging/Dockerfile) built with podman: no bcc, LLVM or clang,
<= 150 MB, and its eBPF collectors working with CAP_BPF + CAP_PERFMON and no header mount;
under the runtime's default seccomp profile they say that seccomp is the cause."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import pytest

from tests.helpers import Netns, free_port, parse_metrics, samples
from tests.image import podman
from tests.integration.test_ebpf_loader import tracefs_mounted

MAX_BYTES = 150 * 10**6
# podman raises its own RLIMIT_NOFILE/NPROC for containers; a sandboxed root without
# CAP_SYS_RESOURCE cannot, so the container gets modest explicit limits.
RUN = ["run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
pytestmark = pytest.mark.timeout(1800)  # debootstrap + build: minutes
SEND = (
    "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[1])):\n    s.sendto(b'x', ('127.0.0.1', 9))\n"
)


@pytest.fixture(scope="module")
def image(built_image):
    """The session's one build of the image (tests/image.py), shared with test_deploy_path.py."""
    return built_image


def test_image_is_small_and_has_no_compiler(image):
    [info] = json.loads(podman("image", "inspect", image).stdout)
    assert info["Size"] <= MAX_BYTES, info["Size"]
    found = podman(
        *RUN,
        "--entrypoint",
        "sh",
        image,
        "-c",
        "ls /usr/bin /usr/lib/x86_64-linux-gnu | grep -E '^(clang|llc|libLLVM|libclang|"
        "libbcc)' ; /opt/netstack/bin/python -c 'import bcc' 2>&1 | tail -1; "
        "ls /opt/netstack/lib/python3*/site-packages/collectors/bpf/",
    ).stdout
    assert "No module named 'bcc'" in found
    assert "softirq.bpf.o" in found and "drops.bpf.o" in found
    assert not any(
        line.startswith(("clang", "llc", "libLLVM", "libclang", "libbcc")) for line in found.splitlines()
    ), found


def run_exporter(image: str, *security: str) -> tuple[str, int]:
    port = free_port()
    cid = podman(
        "run",
        "-d",
        *RUN[2:],
        "--network=host",
        "--cap-drop",
        "all",
        "--cap-add",
        "BPF,PERFMON",
        *security,
        "-v",
        "/sys/kernel/tracing:/sys/kernel/tracing:ro",
        image,
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        "--collector.ebpf_drops",
        "--collector.ebpf_softirq",
    ).stdout.strip()
    return cid, port


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def scrape_until(port: int, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = scrape(port)
            if text in body:
                return body
        except OSError:
            body = ""
        assert time.monotonic() < deadline, f"{text!r} not in {body[-2000:]}"
        time.sleep(0.5)


def no_socket(body: str) -> float:
    return sum(samples(parse_metrics(body), "netstack_skb_drops_total", reason="NO_SOCKET").values())


def test_ebpf_collectors_work_without_header_mounts(image):
    with tracefs_mounted(), Netns("ebm") as ns:
        cid, port = run_exporter(image, "--security-opt", "seccomp=unconfined")
        try:
            for c in ("ebpf_drops", "ebpf_softirq"):
                scrape_until(port, f'netstack_scrape_collector_success{{collector="{c}"}} 1')
            before = no_socket(scrape(port))
            ns.exec(sys.executable, "-c", SEND, "5000")
            after = no_socket(scrape(port))
            logs = podman("logs", cid).stdout + podman("logs", cid).stderr
        finally:
            podman("rm", "-f", cid, check=False)
    assert 5000 <= after - before <= 5010, (before, after)
    assert "backend=libbpf" in logs


def test_default_seccomp_profile_is_named_as_the_cause(image):
    with tracefs_mounted():
        cid, port = run_exporter(image)
        try:
            scrape_until(port, 'netstack_collector_available{collector="ebpf_drops"} 0')
            page = scrape(port, "/")
        finally:
            podman("rm", "-f", cid, check=False)
    assert "seccomp filter denies bpf()" in page
