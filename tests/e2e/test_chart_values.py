"""The chart's values beyond the defaults (issue 17.2: parity with prometheus-node-exporter's
chart), rendered by the real helm and validated, and the strict values.schema.json: a misspelt or
mistyped value fails `helm template` and `helm install`, for every level of the values."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.e2e.test_chart import CHART, by_kind, daemonset, helm, render, validate_core
from tests.helpers import ROOT, run

pytestmark = pytest.mark.e2e

PARITY = {
    "image": {"registry": "registry.example.internal/", "digest": "sha256:" + "ab" * 32},
    "commonLabels": {"team": "platform"},
    "daemonsetAnnotations": {"owner": "sre"},
    "podLabels": {"release-ns": "{{ .Release.Namespace }}"},
    "revisionHistoryLimit": 3,
    "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
    "extraHostVolumeMounts": [
        {"name": "os-release", "hostPath": "/etc/os-release", "mountPath": "/host/etc/os-release"},
        {
            "name": "run",
            "hostPath": "/run",
            "mountPath": "/host/run",
            "readOnly": False,
            "mountPropagation": "HostToContainer",
        },
    ],
    "extraVolumes": [{"name": "extra", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
    "sidecars": [{"name": "proxy", "image": "registry.example.internal/proxy:1"}],
    "extraInitContainers": [{"name": "init", "image": "registry.example.internal/init:1"}],
    "service": {"enabled": True, "labels": {"scrape": "yes"}},
    "podMonitor": {"enabled": True, "sampleLimit": 20000, "labelLimit": 64, "targetLabels": ["team"]},
    "serviceMonitor": {"enabled": True, "targetLimit": 500},
    "verticalPodAutoscaler": {
        "enabled": True,
        "controlledResources": ["memory"],
        "maxAllowed": {"memory": "256Mi"},
    },
}


def test_schema_is_generated_from_values():
    result = run([sys.executable, str(ROOT / "scripts" / "chart_schema.py"), "--check"], check=False)
    assert result.returncode == 0, result.stderr


def test_parity_values_render_valid_objects():
    docs = render(PARITY)
    validate_core([d for d in docs if d["apiVersion"] != "autoscaling.k8s.io/v1"])
    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["kind"]
    ds = daemonset(docs)
    assert ds["metadata"]["annotations"] == {"owner": "sre"}
    assert ds["spec"]["revisionHistoryLimit"] == 3
    pod = ds["spec"]["template"]
    assert pod["metadata"]["labels"]["release-ns"] == "monitoring"  # templated
    spec = pod["spec"]
    assert spec["dnsConfig"] == PARITY["dnsConfig"]
    assert [c["name"] for c in spec["containers"]] == ["exporter", "proxy"]
    assert [c["name"] for c in spec["initContainers"]] == ["init"]
    exporter = spec["containers"][0]
    assert exporter["image"] == "registry.example.internal/netstack-exporter@sha256:" + "ab" * 32
    mounts = {m["mountPath"]: m for m in exporter["volumeMounts"]}
    assert mounts["/host/etc/os-release"]["readOnly"] is True  # read-only unless said otherwise
    assert mounts["/host/run"]["readOnly"] is False
    assert mounts["/host/run"]["mountPropagation"] == "HostToContainer"
    assert "/extra" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["host-os-release"]["hostPath"]["path"] == "/etc/os-release"
    assert volumes["extra"] == {"name": "extra", "emptyDir": {}}
    (svc,) = by_kind(docs, "Service")
    assert svc["metadata"]["labels"]["scrape"] == "yes"
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["clusterIP"] == "None"
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["sampleLimit"] == 20000 and pm["spec"]["labelLimit"] == 64
    assert pm["spec"]["podTargetLabels"] == ["team"]
    assert "targetLimit" not in pm["spec"]  # 0 = unset
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["targetLimit"] == 500
    (vpa,) = by_kind(docs, "VerticalPodAutoscaler")
    assert vpa_errors(vpa) == []  # the VPA CRD's schema (below)
    assert vpa["spec"]["targetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "name": ds["metadata"]["name"],
    }
    assert vpa["spec"]["updatePolicy"] == {"updateMode": "Off"}
    (policy,) = vpa["spec"]["resourcePolicy"]["containerPolicies"]
    assert policy == {
        "containerName": "exporter",
        "controlledResources": ["memory"],
        "maxAllowed": {"memory": "256Mi"},
    }


def test_defaults_keep_virtual_nodes_out():
    spec = daemonset(render())["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    expressions = {e["key"]: e for e in term["matchExpressions"]}
    assert expressions["eks.amazonaws.com/compute-type"] == {
        "key": "eks.amazonaws.com/compute-type",
        "operator": "NotIn",
        "values": ["fargate"],
    }
    assert expressions["type"]["values"] == ["virtual-kubelet"]
    assert "initContainers" not in spec and len(spec["containers"]) == 1
    assert daemonset(render())["spec"]["revisionHistoryLimit"] == 10


def _helm_fails(*args: str) -> str:
    result = subprocess.run(
        [helm(), *args, "--namespace", "monitoring"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0, result.stdout[:500]
    return result.stderr


@pytest.mark.parametrize(
    "setting, complaint",
    [
        ("serviceMonitor.enable=true", "additional properties 'enable' not allowed"),
        ("ebpf.enabeld=true", "additional properties 'enabeld' not allowed"),
        ("imgae.tag=1", "additional properties 'imgae' not allowed"),
        ("log.level=verbose", "value must be one of"),
        ("web.port=99999", "maximum"),
        ("collectors.cpu=yes", "boolean"),
        ("podMonitor.sampleLimit=-1", "minimum"),
        ("fsync.interval=soon", "pattern"),
        ("verticalPodAutoscaler.updatePolicy.updateMod=Off", "additional properties 'updateMod' not allowed"),
        ("verticalPodAutoscaler.updatePolicy.updateMode=Sometimes", "value must be one of"),
        ("verticalPodAutoscaler.maxAllowed.memroy=1Gi", "memroy"),
        ("verticalPodAutoscaler.minAllowed.memory={64Mi}", "memory"),
    ],
)
def test_a_typo_fails_helm_template_and_install(setting, complaint):
    for command in (["template", "x", str(CHART)], ["install", "x", str(CHART), "--dry-run=client"]):
        stderr = _helm_fails(*command, "--set", setting)
        assert "values don't meet the specifications of the schema" in stderr, stderr
        assert complaint in stderr, stderr


def test_every_documented_example_value_is_accepted():
    """The schema allows what the values' comments suggest."""
    render(
        {
            "collectorOptions": {"conntrack.per-cpu": True, "ipvs.max-series": 20000},
            "fsync": {"extraDirectories": [{"name": "etcd", "hostPath": "/var/lib/etcd-fsync-probe"}]},
            "prometheusRule": {"enabled": True, "disabledAlerts": ["NetstackIPVSServicesWithoutBackends"]},
            "web": {"config": {"content": {"basic_auth_users": {"prometheus": "$2y$10$x"}}}},
            "ebpf": {"enabled": True, "backend": "bcc", "resources": {"limits": {"memory": "512Mi"}}},
        }
    )


# --- the VerticalPodAutoscaler against the VPA CRD's schema ----------------------------------------

VPA_SCHEMA = ROOT / "tests" / "fixtures" / "vpa" / "verticalpodautoscaler-v1.schema.yaml"
VPA_ALL = {
    "enabled": True,
    "updatePolicy": {"updateMode": "Initial"},
    "controlledResources": ["cpu", "memory"],
    "controlledValues": "RequestsOnly",
    "minAllowed": {"cpu": "10m", "memory": "32Mi"},
    "maxAllowed": {"cpu": 1, "memory": "256Mi"},
}


def structural(schema: dict) -> dict:
    """The CRD's structural schema as JSON Schema, with pruning made an error: an object that
    lists its properties (and does not preserve unknown fields) admits no other key."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out:
        out["properties"] = {k: structural(v) for k, v in out["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = structural(out[key])
    return out


def vpa_errors(doc: dict) -> list[str]:
    import jsonschema
    import yaml

    validator = jsonschema.Draft7Validator(structural(yaml.safe_load(VPA_SCHEMA.read_text())))
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))


def render_vpa(values: dict) -> dict:
    (doc,) = by_kind(render({"verticalPodAutoscaler": values}), "VerticalPodAutoscaler")
    return doc


def test_vpa_with_every_value_set_matches_the_crd():
    doc = render_vpa(VPA_ALL)
    assert doc["apiVersion"] == "autoscaling.k8s.io/v1"
    assert vpa_errors(doc) == []
    (policy,) = doc["spec"]["resourcePolicy"]["containerPolicies"]
    assert policy == {
        "containerName": "exporter",
        "controlledResources": ["cpu", "memory"],
        "controlledValues": "RequestsOnly",
        "minAllowed": {"cpu": "10m", "memory": "32Mi"},
        "maxAllowed": {"cpu": 1, "memory": "256Mi"},
    }
    assert doc["spec"]["updatePolicy"] == {"updateMode": "Initial"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"])


@pytest.mark.parametrize("mode", ["Off", "Initial", "Recreate", "Auto"])
@pytest.mark.parametrize("controlled", ["", "RequestsAndLimits", "RequestsOnly"])
def test_vpa_defaults_and_every_choice_match_the_crd(mode, controlled):
    assert vpa_errors(render_vpa({"enabled": True})) == []
    assert (
        vpa_errors(
            render_vpa({**VPA_ALL, "updatePolicy": {"updateMode": mode}, "controlledValues": controlled})
        )
        == []
    )


@pytest.mark.parametrize(
    "values, complaint",
    [
        # quantities pass through the chart's schema as strings or numbers
        ({"maxAllowed": {"memory": "256 MiB"}}, "does not match"),
        ({"minAllowed": {"cpu": "a lot"}}, "does not match"),
    ],
)
def test_the_crd_check_catches_what_the_api_server_would_refuse_or_prune(values, complaint):
    """Guards the check above: values the chart's schema lets through (quantities) but
    the CRD refuses, or prunes."""
    errors = vpa_errors(render_vpa({**VPA_ALL, **values}))
    assert any(complaint in e for e in errors), errors
