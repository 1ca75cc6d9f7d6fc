#!/usr/bin/env bash
# Install everything the tests need, then run all of them (unit, integration, end-to-end).
#   bash scripts/test.sh [pytest arguments]
# As root it installs the Debian packages below; as another user those tests skip with a reason
# (with CI=true a skip is a failure). Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(
  prometheus prometheus-node-exporter   # promtool, a real Prometheus, node_exporter for benchmarks
  iproute2 nftables conntrack           # network namespaces, veth, vxlan; conntrack tests
  fio etcd-server etcd-client           # fsync probe comparison
  python3-bpfcc bpfcc-tools linux-headers-amd64   # eBPF collectors
  clang llvm bpftool libbpf-dev libbpf1   # CO-RE BPF objects (package build) and the libbpf backend
  podman buildah runc debootstrap       # image test: podman (runc); debootstrap when no registry answers
  util-linux unzip ca-certificates      # setpriv (permission tests), unzip (helm from its wheel)
  qemu-system-x86 busybox-static kmod ipvsadm   # kernel lab: Debian's 6.1 kernel in qemu, real IPVS
  openssl apache2-utils                 # TLS test certificates; bcrypt hashes from htpasswd -B
  systemd                               # systemd-analyze verify of packaging/netstack-exporter.service
  bird2                                 # BIRD 2 for the bgp tests (BIRD 1.6 is extracted below)
  chromium                              # headless browser for the landing page test
)

log() { echo "test.sh: $*" >&2; }
phase_start=$SECONDS
phase() { log "$1 took $((SECONDS - phase_start)) s"; phase_start=$SECONDS; }

if [[ $(id -u) == 0 ]]; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
else
  log "not root: Debian packages not installed; tests that need them will skip"
fi

# BIRD 1.6 (Debian's bird, the base of Calico's fork) conflicts with bird2 as a package: its .deb
# is extracted into .tools/bird1 instead (tests/bird.py runs it from there).
if [[ ! -x .tools/bird1/usr/sbin/bird ]]; then
  work=$(mktemp -d) && chmod 755 "$work"
  if (cd "$work" && { apt-get download -q bird >/dev/null 2>&1 ||
        { [[ $(id -u) == 0 ]] && apt-get update -q >/dev/null && apt-get download -q bird >/dev/null; }; }); then
    mkdir -p .tools/bird1 && dpkg-deb -x "$work"/bird_*.deb .tools/bird1
    log "extracted $("$PWD/.tools/bird1/usr/sbin/bird" --version 2>&1) into .tools/bird1"
  else
    log "could not download Debian's bird (1.6): its tests will skip"
  fi
  rm -rf "$work"
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'

# bcc: Debian's python3-bpfcc, made importable from the venv (the PyPI package 'bcc' is unrelated).
if [[ -d /usr/lib/python3/dist-packages/bcc ]]; then
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
# Kernel headers for bcc: the running kernel's, else Debian's merged into one tree.
if [[ -z ${BCC_KERNEL_SOURCE:-} ]] && headers=$(sh scripts/kernel-headers.sh 2>/dev/null); then
  export BCC_KERNEL_SOURCE=$headers
fi

bash scripts/tools.sh   # helm (the tests' Python tools come with the dev extra above)
phase "installing (Debian packages, venv, tools)"

# Lint, format and types on a full run (CI's); a run of chosen tests goes straight to pytest.
if (($# == 0)); then
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  .venv/bin/mypy
  phase "ruff and mypy"
fi

status=0
.venv/bin/python -m pytest -ra --durations=25 "$@" || status=$?
phase "pytest"
exit $status
