"""Writes charts/netstack-exporter/values.schema.json from the chart's values.yaml: every key of the
chart's own settings is listed and typed from its default, and no other key is allowed, so a typo
in values (`serviceMonitor.enable`, `ebpf.enabeld`) fails `helm install` / `helm template`.
Kubernetes objects passed through as they are (resources, affinity, probes, ...) are free-form.

    .venv/bin/python scripts/chart_schema.py          # write the schema
    .venv/bin/python scripts/chart_schema.py --check  # exit 1 if the committed schema is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "netstack-exporter"
SCHEMA = CHART / "values.schema.json"

# Kubernetes or Prometheus objects, maps of user-chosen keys, and lists of such: any content.
FREE_FORM = {
    "imagePullSecrets",
    "commonLabels",
    "collectorOptions",
    "extraEnv",
    "web.config.content",
    "ebpf.seccompProfile",
    "ebpf.resources",
    "resources",
    "podSecurityContext",
    "securityContext",
    "serviceAccount.annotations",
    "daemonsetAnnotations",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "tolerations",
    "affinity",
    "dnsConfig",
    "extraVolumes",
    "extraVolumeMounts",
    "sidecars",
    "extraInitContainers",
    "updateStrategy",
    "livenessProbe",
    "readinessProbe",
    "service.labels",
    "service.annotations",
    "networkPolicy.prometheusNamespaceSelector",
    "networkPolicy.prometheusPodSelector",
    "prometheusRule.labels",
    "prometheusRule.additionalRuleLabels",
    "dashboards.annotations",
}
for monitor in ("podMonitor", "serviceMonitor"):
    FREE_FORM |= {
        f"{monitor}.{k}" for k in ("labels", "relabelings", "metricRelabelings", "tlsConfig", "basicAuth")
    }

# Settings whose default does not show every allowed type or value.
OVERRIDES: dict[str, dict] = {
    "log.level": {"enum": ["debug", "info", "warn", "error"]},
    "log.format": {"enum": ["logfmt", "json"]},
    "ebpf.backend": {"enum": ["auto", "libbpf", "bcc"]},
    "ebpf.softirqSampleEvery": {"type": "integer", "minimum": 1, "maximum": 1024},
    "ebpf.btfPath": {"type": "string", "pattern": "^(|/.*)$"},
    "service.type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "image.pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "image.digest": {"type": "string", "pattern": "^(|sha256:[0-9a-f]+)$"},
    "web.port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "fsync.interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
    "collectors": {"type": "object", "additionalProperties": {"type": "boolean"}},
    "dashboards.labelValue": {"type": "string"},
    "verticalPodAutoscaler.controlledValues": {"enum": ["", "RequestsAndLimits", "RequestsOnly"]},
    "ebpf.capabilities": {"type": "array", "items": {"type": "string"}},
    "extraArgs": {"type": "array", "items": {"type": "string"}},
    "prometheusRule.disabledAlerts": {"type": "array", "items": {"type": "string"}},
    "verticalPodAutoscaler.controlledResources": {"type": "array", "items": {"enum": ["cpu", "memory"]}},
    # The VPA CRD's updatePolicy (InPlaceOrRecreate: VPA 1.4 and later); the API server would
    # silently prune a misspelt key, so it fails here instead.
    "verticalPodAutoscaler.updatePolicy": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "updateMode": {"enum": ["Off", "Initial", "Recreate", "Auto", "InPlaceOrRecreate"]},
            "minReplicas": {"type": "integer", "minimum": 1},
        },
    },
    "fsync.extraDirectories": {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "hostPath"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "hostPath": {"type": "string", "pattern": "^/"},
            },
        },
    },
    "extraHostVolumeMounts": {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "hostPath", "mountPath"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "hostPath": {"type": "string", "pattern": "^/"},
                "mountPath": {"type": "string", "pattern": "^/"},
                "readOnly": {"type": "boolean"},
                "mountPropagation": {"enum": ["None", "HostToContainer", "Bidirectional"]},
            },
        },
    },
}
for bound in ("minAllowed", "maxAllowed"):
    OVERRIDES[f"verticalPodAutoscaler.{bound}"] = {  # a resource list; the CRD checks the quantities
        "type": "object",
        "propertyNames": {"enum": ["cpu", "memory"]},
        "additionalProperties": {"type": ["string", "number"]},
    }
for monitor in ("podMonitor", "serviceMonitor"):
    OVERRIDES[f"{monitor}.targetLabels"] = {"type": "array", "items": {"type": "string"}}
    for limit in (
        "sampleLimit",
        "targetLimit",
        "labelLimit",
        "labelNameLengthLimit",
        "labelValueLengthLimit",
    ):
        OVERRIDES[f"{monitor}.{limit}"] = {"type": "integer", "minimum": 0}


def schema_of(value, path: str) -> dict:
    if path in OVERRIDES:
        return OVERRIDES[path]
    if path in FREE_FORM:
        return {"type": "array"} if isinstance(value, list) else {"type": "object"}
    if isinstance(value, dict):
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: schema_of(v, f"{path}.{k}" if path else k) for k, v in value.items()},
        }
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, str):
        return {"type": "string"}
    raise SystemExit(f"values.yaml: {path}: give it a schema in OVERRIDES or FREE_FORM")


def build() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    unused = (set(OVERRIDES) | FREE_FORM) - set(_paths(values))
    if unused:
        raise SystemExit(f"scripts/chart_schema.py names settings values.yaml lacks: {sorted(unused)}")
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "netstack-exporter values"}
    schema.update(schema_of(values, ""))
    return json.dumps(schema, indent=2) + "\n"


def _paths(values: dict, prefix: str = ""):
    for k, v in values.items():
        path = f"{prefix}{k}"
        yield path
        if isinstance(v, dict):
            yield from _paths(v, path + ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        if not SCHEMA.exists() or SCHEMA.read_text() != text:
            print("stale: run scripts/chart_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
