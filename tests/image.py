"""The container image, built once per test session and shared by every test that runs it
(tests/e2e/test_ebpf_image.py, tests/e2e/test_deploy_path.py): packaging/Dockerfile built by
podman with runc (crun refuses this machine's cgroup layout), RUN steps on the host network (a
private build network makes netavark change the host's iptables and ip_forward), the Python
packages from the locked wheelhouse (scripts/image.py), on Debian's bookworm-slim or, when no
registry answers, a base made with debootstrap."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import ROOT, need_tool

BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/netstack-exporter-test:core"


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


def build_image(tmp: Path) -> str:
    """Builds IMAGE (base, wheelhouse, podman build), printing how long each part took."""
    started = time.monotonic()
    ensure_base(tmp)
    based = time.monotonic()
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import image as image_script
    finally:
        sys.path.pop(0)
    image_script.wheelhouse()
    wheels = time.monotonic()
    args = [a for a in image_script.build_args("core")]
    args[args.index("-t") + 1] = IMAGE
    result = subprocess.run(
        ["podman", "--runtime", "runc", *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = time.monotonic()
    print(
        f"\nimage build: base {based - started:.1f}s, wheelhouse {wheels - based:.1f}s, "
        f"podman build {done - wheels:.1f}s",
        file=sys.stderr,
    )
    return IMAGE
