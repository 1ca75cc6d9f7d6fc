"""The default container image (packaging/Dockerfile) built with podman: no bcc, LLVM or clang,
<= 150 MB, and its eBPF collectors working with CAP_BPF + CAP_PERFMON and no header mount;
under the runtime's default seccomp profile they say that seccomp is the cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, Netns, free_port, need_root, need_tool, parse_metrics, samples
from tests.integration.test_ebpf_loader import need_core_objects, tracefs_mounted

BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/netstack-exporter-test:core"
MAX_BYTES = 150 * 10**6
# podman raises its own RLIMIT_NOFILE/NPROC for containers; a sandboxed root without
# CAP_SYS_RESOURCE cannot, so the container gets modest explicit limits.
RUN = ["run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
pytestmark = pytest.mark.timeout(1800)  # debootstrap + build: minutes
SEND = (
    "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[1])):\n    s.sendto(b'x', ('127.0.0.1', 9))\n"
)


def podman(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def ensure_base(tmp: Path) -> None:
    """Debian's bookworm-slim; made with debootstrap (slimmed like Docker Hub's) when the
    registry cannot be reached, as here."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    if podman("pull", BASE, timeout=300, check=False).returncode == 0:
        return
    need_tool("debootstrap", "debootstrap")
    rootfs = tmp / "rootfs"
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    slim(rootfs)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["podman", "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True, timeout=300
    )
    tar.wait()
    subprocess.run(["rm", "-rf", str(rootfs)], check=True)


def slim(rootfs: Path) -> None:
    """What Docker Hub's -slim images leave out: documentation, manuals, locales, apt caches;
    and the dpkg and apt settings that keep them out of later installs."""
    subprocess.run(
        [
            "sh",
            "-c",
            "rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin "
            "var/lib/apt/lists/* usr/share/man/* usr/share/info/* usr/share/groff/* "
            "usr/share/lintian/* var/log/*; "
            "find usr/share/doc -mindepth 2 ! -name copyright -delete 2>/dev/null; "
            "find usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias "
            "-exec rm -rf {} +",
        ],
        cwd=rootfs,
        check=True,
    )
    (rootfs / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(
        "".join(
            f"path-{rule}\n"
            for rule in (
                "exclude /usr/share/doc/*",
                "include /usr/share/doc/*/copyright",
                "exclude /usr/share/man/*",
                "exclude /usr/share/groff/*",
                "exclude /usr/share/info/*",
                "exclude /usr/share/lintian/*",
                "exclude /usr/share/locale/*",
                "include /usr/share/locale/locale.alias",
            )
        )
    )
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    need_root()
    need_tool("podman", "podman")
    need_tool("runc", "runc")
    need_core_objects()  # the build machine can build them (clang, bpftool, BTF)
    ensure_base(tmp_path_factory.mktemp("base"))
    args = ["build", "--network=host", "-f", "packaging/Dockerfile", "-t", IMAGE]
    ca = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    if ca and os.path.exists(ca):  # behind a TLS-intercepting proxy (the Dockerfile's note)
        args += ["-v", f"{ca}:/run/ca.crt:ro", "--build-arg", "PIP_CERT=/run/ca.crt"]
    result = subprocess.run(
        ["podman", "--runtime", "runc", *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield IMAGE
    podman("rmi", "-f", IMAGE, check=False)


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
