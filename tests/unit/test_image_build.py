"""The image build is pinned and offline (issue 17.3): every locked package has an exact version
and sha256 hashes, the Dockerfile installs only from the wheelhouse with --require-hashes and no
index, the image carries OCI labels, and its tag is the exporter's version."""

from __future__ import annotations

import re
import sys

from tests.helpers import ROOT, run

DOCKERFILE = ROOT / "packaging" / "Dockerfile"
LOCKS = [ROOT / "packaging" / "requirements.lock", ROOT / "packaging" / "build-requirements.lock"]


def pins(path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    name = None
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if not line.startswith(" "):
            m = re.fullmatch(r"([a-z0-9-]+)==([\w.]+) \\", line)
            assert m, f"{path.name}: not an exact pin: {line}"
            name = m.group(1)
            out[name] = []
        else:
            m = re.fullmatch(r"    --hash=sha256:([0-9a-f]{64})( \\)?", line)
            assert m and name, f"{path.name}: {line}"
            out[name].append(m.group(1))
    return out


def test_every_locked_package_is_pinned_with_hashes():
    runtime = pins(LOCKS[0])
    for name in ("pyroute2", "pyyaml", "bcrypt"):
        assert name in runtime, name
    assert "aiohttp" not in runtime  # the HTTP server is exporter/http.py, on asyncio alone
    assert "prometheus-client" not in runtime  # families: exporter/metrics.py
    for lock in LOCKS:
        for name, hashes in pins(lock).items():
            assert hashes, f"{lock.name}: {name} has no hash"
    # compiled packages carry one wheel per architecture (x86_64, aarch64)
    assert len(runtime["pyyaml"]) >= 2 and len(runtime["bcrypt"]) >= 2
    assert "setuptools" in pins(LOCKS[1])


def test_dockerfile_installs_only_locked_wheels_without_an_index():
    text = DOCKERFILE.read_text()
    assert "COPY build/wheelhouse /wheels" in text
    assert "PIP_NO_INDEX=1" in text and "PIP_FIND_LINKS=/wheels" in text
    installs = re.findall(r"pip install ([^\\\n]*)", text)
    assert installs, text
    for args in installs:
        assert "--require-hashes -r packaging/" in args or args.startswith(
            "--no-deps --no-build-isolation ."
        ), args
    for label in ("title", "version", "revision", "licenses", "description"):
        assert f"org.opencontainers.image.{label}=" in text, label


def test_build_is_tagged_with_the_exporter_version():
    from exporter import __version__

    command = run([sys.executable, str(ROOT / "scripts" / "image.py"), "build", "--print"]).stdout
    assert f"-t netstack-exporter:{__version__} " in command
    assert f"--build-arg VERSION={__version__} " in command
    assert "--network=host" in command  # a private build network makes netavark touch the host's iptables
    bcc = run(
        [sys.executable, str(ROOT / "scripts" / "image.py"), "build", "--print", "--variant", "bcc"]
    ).stdout
    assert f"-t netstack-exporter:{__version__}-bcc " in bcc
