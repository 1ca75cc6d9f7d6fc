"""The Helm chart, rendered by the real helm binary (scripts/tools.sh puts it in .tools/bin), with
default values and with everything on: core objects validated by kubernetes-validate --strict for
a pinned Kubernetes version, prometheus-operator objects by the cloudcoil models, and the
DaemonSet checked for what the exporter needs on a node. The default arguments are also given to
the real exporter process, which must accept them and become ready."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, Exporter, need, run

pytestmark = pytest.mark.e2e

CHART = ROOT / "charts" / "netstack-exporter"
HELM = ROOT / ".tools" / "bin" / "helm"
VALIDATE = ROOT / ".venv" / "bin" / "kubernetes-validate"
KUBE_VERSION = "1.33.0"  # the Kubernetes version the chart is validated against (pinned)
NAMESPACE = "monitoring"

ALL_ON = {
    "ebpf": {"enabled": True, "kernelSource": "/opt/kernel-headers"},
    "fsync": {"extraDirectories": [{"name": "etcd", "hostPath": "/var/lib/etcd-fsync-probe"}]},
    "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {
        "enabled": True,
        "additionalRuleLabels": {"team": "platform"},
        "disabledAlerts": ["NetstackIPVSSeriesCapped"],
    },
    "dashboards": {"enabled": True},
    "collectorOptions": {"conntrack.per-cpu": True, "ipvs.max-series": 20000},
}


def _yaml():
    try:
        import yaml
    except ImportError:
        need(False, "needs PyYAML (a dependency of the package)")
    return yaml


def helm() -> str:
    need(HELM.exists(), "needs helm: run scripts/tools.sh")
    return str(HELM)


def render(values: dict | None = None, *extra: str) -> list[dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        json.dump(values or {}, f)  # JSON is YAML
        f.flush()
        out = run(
            [
                helm(),
                "template",
                "netstack",
                str(CHART),
                "--namespace",
                NAMESPACE,
                "--kube-version",
                KUBE_VERSION,
                "-f",
                f.name,
                *extra,
            ]
        ).stdout
    return [d for d in _yaml().safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def daemonset(docs: list[dict]) -> dict:
    (ds,) = by_kind(docs, "DaemonSet")
    return ds


def container(docs: list[dict]) -> dict:
    (c,) = daemonset(docs)["spec"]["template"]["spec"]["containers"]
    return c


def validate_core(docs: list[dict]) -> None:
    need(VALIDATE.exists(), "needs kubernetes-validate: pip install -e '.[test]'")
    core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rendered.yaml"
        path.write_text(_yaml().safe_dump_all(core))
        result = run(
            [str(VALIDATE), "--strict", "--kubernetes-version", KUBE_VERSION, str(path)], check=False
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(core), result.stdout


def validate_crd(doc: dict) -> None:
    """Validates against the prometheus-operator models; the models ignore unknown keys, so a
    round trip that loses a key is a field the CRD does not have (a typo, a wrong nesting)."""
    try:
        from cloudcoil.models.prometheus_operator import v1
    except ImportError:
        need(False, "needs cloudcoil-models-prometheus-operator: pip install -e '.[test]'")
    model = getattr(v1, doc["kind"]).model_validate(doc)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


# --- helm itself ---------------------------------------------------------------------------------


def test_helm_lint_passes_for_default_and_all_on():
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        json.dump(ALL_ON, f)
        f.flush()
        for args in ([], ["-f", f.name]):
            result = run([helm(), "lint", "--strict", str(CHART), *args], check=False)
            assert result.returncode == 0, result.stdout + result.stderr


# --- default values ------------------------------------------------------------------------------


def test_default_render_is_valid_and_minimal():
    docs = render()
    validate_core(docs)
    assert sorted(d["kind"] for d in docs) == ["DaemonSet", "ServiceAccount"]


def test_daemonset_runs_in_the_host_network_and_reads_the_host():
    docs = render()
    spec = daemonset(docs)["spec"]["template"]["spec"]
    c = container(docs)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in spec["tolerations"]

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for host, inside in (("/proc", "/host/proc"), ("/sys", "/host/sys")):
        assert mounts[inside]["readOnly"] is True
        assert volumes[mounts[inside]["name"]]["hostPath"]["path"] == host
    fsync = mounts["/var/lib/netstack-exporter/fsync/root"]
    assert not fsync.get("readOnly")
    assert volumes[fsync["name"]]["hostPath"] == {
        "path": "/var/lib/netstack-exporter/fsync",
        "type": "DirectoryOrCreate",
    }
    assert "/lib/modules" not in mounts and "/usr/src" not in mounts  # only with eBPF

    args = c["args"]
    assert "--path.procfs=/host/proc" in args and "--path.sysfs=/host/sys" in args
    # the node's own address (downward API), not every interface of the node
    assert "--web.listen-address=[$(HOST_IP)]:9977" in args
    assert {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} in c["env"]
    assert not any(a.startswith("--web.config.file") for a in args)
    assert "--collector.fsync.directory=/var/lib/netstack-exporter/fsync/root" in args
    assert not any("ebpf" in a for a in args)
    assert c["ports"] == [{"name": "metrics", "containerPort": 9977, "hostPort": 9977, "protocol": "TCP"}]


def test_probes_use_healthz_and_readyz():
    c = container(render())
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_security_context_is_least_privilege():
    docs = render()
    c = container(docs)
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert daemonset(docs)["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_default_args_are_accepted_by_the_real_exporter(tmp_path):
    """The chart's arguments, with the host paths swapped for this machine's, start the exporter."""
    need((ROOT / "exporter" / "main.py").exists(), "the exporter process is not written yet")
    args = []
    for arg in container(render())["args"]:
        if arg.startswith("--web.listen-address="):
            continue  # the helper picks a free loopback port
        arg = arg.replace("/host/proc", "/proc").replace("/host/sys", "/sys")
        arg = arg.replace("/var/lib/netstack-exporter/fsync", str(tmp_path))
        args.append(arg)
    with Exporter(*args) as exporter:
        with exporter.get("/healthz") as r:
            assert r.status == 200
        metrics = exporter.scrape()
    success = {
        dict(labels)["collector"]: v
        for (name, labels), v in metrics.items()
        if name == "netstack_scrape_collector_success"
    }
    enabled = {
        a[len("--collector.") :]
        for a in args
        if a.startswith("--collector.") and not {".", "="} & set(a[len("--collector.") :])
    }
    assert enabled == set(success)  # every collector the chart turns on is running
    assert success["cpu"] == 1 and success["softirq"] == 1  # and reads this host's /proc


# --- everything on -------------------------------------------------------------------------------


def test_all_on_render_is_valid():
    docs = render(ALL_ON)
    validate_core(docs)
    kinds = sorted(d["kind"] for d in docs)
    dashboards = sorted((ROOT / "dashboards").glob("*.json"))
    assert len(dashboards) == 9  # fleet, node and seven drill-downs
    assert kinds == [
        *["ConfigMap"] * len(dashboards),  # one per dashboard
        "DaemonSet",
        "PodMonitor",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_crd(doc)


def test_validators_reject_mistakes():
    """Guards the two tests above: a validator that passed anything would prove nothing."""
    docs = render(ALL_ON)
    bad_ds = copy.deepcopy(daemonset(docs))
    bad_ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(AssertionError):
        validate_core([bad_ds])
    bad_pm = copy.deepcopy(by_kind(docs, "PodMonitor")[0])
    bad_pm["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError):
        validate_crd(bad_pm)


def test_ebpf_core_needs_no_header_mounts_and_adds_capabilities():
    docs = render(ALL_ON)
    c = container(docs)
    spec = daemonset(docs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug"):
        assert mounts[path]["readOnly"] is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert "/lib/modules" not in mounts and "/usr/src" not in mounts  # libbpf: no headers
    assert "--collector.ebpf_softirq" in c["args"] and "--collector.ebpf_drops" in c["args"]
    assert "--collector.ebpf_softirq.backend=auto" in c["args"]
    assert "--collector.ebpf_drops.backend=auto" in c["args"]
    assert "--collector.ebpf_softirq.sample-every=16" in c["args"]  # within 5% of CPU (docs/ebpf.md)
    assert not any(a.startswith("--collector.ebpf.btf-path") for a in c["args"])
    btf = container(render({**ALL_ON, "ebpf": {**ALL_ON["ebpf"], "btfPath": "/btf/vmlinux.btf"}}))
    assert "--collector.ebpf.btf-path=/btf/vmlinux.btf" in btf["args"]
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    assert {"NET_ADMIN", "BPF", "PERFMON"} == set(caps["add"])
    assert c["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert c["resources"]["limits"]["memory"] == "128Mi"  # the libbpf backend adds ~2 MB


def test_ebpf_bcc_mounts_host_headers_read_only():
    bcc = {
        "enabled": True,
        "backend": "bcc",
        "hostKernelHeaders": True,
        "kernelSource": "/opt/kernel-headers",
        "resources": {"requests": {"memory": "192Mi"}, "limits": {"memory": "512Mi"}},
    }
    docs = render({"ebpf": bcc})
    c = container(docs)
    volumes = {v["name"]: v for v in daemonset(docs)["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/lib/modules", "/usr/src"):
        assert mounts[path]["readOnly"] is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert "--collector.ebpf_drops.backend=bcc" in c["args"]
    assert {"name": "BCC_KERNEL_SOURCE", "value": "/opt/kernel-headers"} in c["env"]
    assert c["resources"]["limits"]["memory"] == "512Mi"  # clang at startup


def test_extra_fsync_directory_and_collector_options():
    c = container(render(ALL_ON))
    assert "--collector.fsync.directory=/var/lib/netstack-exporter/fsync/etcd" in c["args"]
    assert "--collector.conntrack.per-cpu" in c["args"]
    assert "--collector.ipvs.max-series=20000" in c["args"]
    off = container(
        render({"collectorOptions": {"conntrack.per-cpu": False}, "collectors": {"ipvs": False}})
    )["args"]
    assert "--no-collector.conntrack.per-cpu" in off and "--no-collector.ipvs" in off


def test_fsync_off_removes_its_mount():
    docs = render({"collectors": {"fsync": False}})
    c = container(docs)
    assert "--no-collector.fsync" in c["args"]
    assert not any("fsync" in m["mountPath"] for m in c["volumeMounts"])


def test_fsync_left_to_the_exporter_default_still_gets_its_directory():
    # fsync is on by default in the exporter; without its hostPath it would probe the read-only
    # root filesystem of the container.
    c = container(render(None, "--set", "collectors=null"))
    assert not any(a.endswith("collector.fsync") for a in c["args"])
    assert "--collector.fsync.directory=/var/lib/netstack-exporter/fsync/root" in c["args"]
    assert any(m["mountPath"] == "/var/lib/netstack-exporter/fsync/root" for m in c["volumeMounts"])


def test_monitors_scrape_every_node_as_job_netstack_exporter():
    docs = render(ALL_ON)
    (pm,) = by_kind(docs, "PodMonitor")
    (sm,) = by_kind(docs, "ServiceMonitor")
    (svc,) = by_kind(docs, "Service")
    pod_labels = daemonset(docs)["spec"]["template"]["metadata"]["labels"]
    assert pm["metadata"]["labels"]["release"] == "prom"
    for monitor, endpoints in ((pm, "podMetricsEndpoints"), (sm, "endpoints")):
        # job = the `job` value, set by a relabeling (not from a label that follows nameOverride)
        assert "jobLabel" not in monitor["spec"]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (ep,) = monitor["spec"][endpoints]
        assert ep["port"] == "metrics" and ep["path"] == "/metrics"
        assert {
            "sourceLabels": ["__meta_kubernetes_pod_node_name"],
            "targetLabel": "instance",
            "action": "replace",
        } in ep["relabelings"]
        assert monitor_job(ep) == "netstack-exporter"
    assert pod_labels["app.kubernetes.io/name"] == "netstack-exporter"
    for key, val in pm["spec"]["selector"]["matchLabels"].items():
        assert pod_labels[key] == val
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == pm["spec"]["selector"]["matchLabels"]


def monitor_job(endpoint: dict) -> str:
    (job,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    assert "sourceLabels" not in job and job["action"] == "replace"
    return job["replacement"]


def rule_jobs(docs: list[dict]) -> set[str]:
    (rule,) = by_kind(docs, "PrometheusRule")
    import re

    text = json.dumps(rule["spec"])
    return set(re.findall(r'job=\\"([^"\\]+)\\"', text))


@pytest.mark.parametrize(
    "values, job",
    [
        ({"nameOverride": "nse"}, "netstack-exporter"),
        ({"fullnameOverride": "x"}, "netstack-exporter"),
        ({"nameOverride": "nse", "job": "node-net"}, "node-net"),
    ],
)
def test_rules_and_monitors_agree_on_the_job(values, job):
    """Issue 17.1: with nameOverride=nse the monitors used to scrape job="nse" while the rules
    selected job="netstack-exporter": NetstackExporterDown never fired, ...Absent always did."""
    docs = render({**ALL_ON, **values})
    (pm,) = by_kind(docs, "PodMonitor")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert monitor_job(pm["spec"]["podMetricsEndpoints"][0]) == job
    assert monitor_job(sm["spec"]["endpoints"][0]) == job
    assert rule_jobs(docs) == {job}
    (rule,) = by_kind(docs, "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert exprs["NetstackExporterDown"].strip() == f'up{{job="{job}"}} == 0'
    assert exprs["NetstackExporterAbsent"].strip() == f'absent(up{{job="{job}"}})'


def test_runbook_urls_follow_the_base_value():
    plain = by_kind(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")[0]
    base = "https://git.example.internal/ops/netstack-exporter/-/blob/main/docs/runbooks.md"
    based = by_kind(
        render({"prometheusRule": {"enabled": True, "runbookBaseURL": base + "/"}}), "PrometheusRule"
    )[0]
    for before, after in zip(
        (r for g in plain["spec"]["groups"] for r in g["rules"]),
        (r for g in based["spec"]["groups"] for r in g["rules"]),
        strict=True,
    ):
        anchor = before["alert"].lower()
        assert before["annotations"]["runbook_url"] == f"docs/runbooks.md#{anchor}"
        assert after["annotations"]["runbook_url"] == f"{base}#{anchor}"


def test_prometheus_rule_is_the_rules_file_with_values_applied():
    yaml = _yaml()
    source = yaml.safe_load((ROOT / "alerts" / "netstack.rules.yml").read_text())["groups"]
    (rule,) = by_kind(render(ALL_ON), "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in source]
    rendered = {r["alert"]: r for g in groups for r in g["rules"]}
    expected = {r["alert"]: r for g in source for r in g["rules"]}
    assert set(expected) - set(rendered) == {"NetstackIPVSSeriesCapped"}
    for name, r in rendered.items():
        assert r["expr"] == expected[name]["expr"]
        assert r["annotations"] == expected[name]["annotations"]
        assert r["labels"] == {**expected[name]["labels"], "team": "platform"}

    plain = by_kind(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")[0]
    assert plain["spec"]["groups"] == source


def test_dashboards_configmap_carries_the_generated_json_for_the_sidecar():
    docs = render(ALL_ON)
    maps = {name: cm for cm in by_kind(docs, "ConfigMap") for name in cm["data"]}
    assert set(maps) == {p.name for p in (ROOT / "dashboards").glob("*.json")}
    assert len(maps) == len(by_kind(docs, "ConfigMap"))  # one dashboard per ConfigMap
    for name, cm in maps.items():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == NAMESPACE
        committed = (ROOT / "dashboards" / name).read_text()
        assert json.loads(cm["data"][name]) == json.loads(committed)
        # the API server refuses objects over 1 MiB; a client-side `kubectl apply` also copies the
        # object into an annotation, and annotations are limited to 256 KiB
        size = len(_yaml().safe_dump(cm).encode())
        assert size < 256 * 1024, (name, size)
    custom = by_kind(
        render(
            {"dashboards": {"enabled": True, "label": "my_dash", "labelValue": "yes", "namespace": "grafana"}}
        ),
        "ConfigMap",
    )[0]
    assert custom["metadata"]["labels"]["my_dash"] == "yes"
    assert custom["metadata"]["namespace"] == "grafana"


def test_chart_package_is_self_contained(tmp_path):
    """helm package keeps files/ (rules and dashboards) inside the archive, so an installed
    chart renders the same PrometheusRule and ConfigMap."""
    out = run([helm(), "package", str(CHART), "--destination", str(tmp_path)]).stdout
    archive = next(tmp_path.glob("netstack-exporter-*.tgz"))
    assert archive.name in out
    result = run(
        [
            helm(),
            "template",
            "x",
            str(archive),
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "dashboards.enabled=true",
        ]
    )
    kinds = [d["kind"] for d in _yaml().safe_load_all(result.stdout) if d]
    assert "PrometheusRule" in kinds and "ConfigMap" in kinds
    shutil.rmtree(tmp_path, ignore_errors=True)


# --- the chart's rules and dashboards against a real Prometheus scraping real exporters ----------

# Dashboard queries that return nothing in this test, by a metric family (or selector) they need,
# and why. Those marked LIVE return data in tests/e2e/test_dashboards_live.py (root: a real BIRD,
# the eBPF collectors, a vxlan device in a network namespace).
LIVE = "tests/e2e/test_dashboards_live.py"
DOCUMENTED_ABSENT = {
    "netstack_bgp_": f"no BIRD on this host (LIVE: {LIVE})",
    "netstack_bird_": f"no BIRD on this host (LIVE: {LIVE})",
    "netstack_overlay_": f"no tunnel device in the host network namespace (LIVE: {LIVE})",
    "netstack_softirq_wait_": f"ebpf_softirq is off by default (LIVE: {LIVE})",
    "netstack_softirq_service_": f"ebpf_softirq is off by default (LIVE: {LIVE})",
    "netstack_skb_drops_": f"ebpf_drops is off by default (LIVE: {LIVE})",
    'collector="ebpf_drops"': f"ebpf_drops is off by default (LIVE: {LIVE})",
    "netstack_ipvs_service_connections_total": "per-service IPVS counters come only from netlink: "
    "this kernel has no IPVS, the fixture node's table is procfs",
    "netstack_ipvs_service_incoming_": "per-service IPVS counters: netlink only (as above)",
    "netstack_ipvs_service_outgoing_": "per-service IPVS counters: netlink only (as above)",
    "netstack_ipvs_kube_ipvs0_addresses": "no kube-ipvs0 device (no kube-proxy in IPVS mode here)",
    "netstack_conntrack_entries_by_state": "--collector.conntrack.by-state is off (a table dump per "
    "scrape); tests/integration covers it",
}
# What Grafana puts in place of the variables: short windows for a 1 s scrape, filters at All.
SUBSTITUTE = {
    "$__rate_interval": "10s",
    "$__range": "1m",
    "$fsync_window": "10s",
    "$job": "netstack-exporter",
    "$cpu": ".*",
    "$device": ".*",
    "$address": ".*",
    "$path": ".*",
    "$peer": ".*",
    "$reason": ".*",
}


def _get(base: str, path: str, **params) -> dict:
    import urllib.parse
    import urllib.request

    url = f"{base}{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _wait(predicate, timeout: float = 60.0):
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError:
            pass
        time.sleep(0.5)
    return last


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) of every query of every committed dashboard."""
    return [
        (path.name, panel["title"], target["expr"])
        for path in sorted((ROOT / "dashboards").glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
    ]


def expand(expr: str, node: str, values: dict[str, str] | None = None) -> str:
    """The query Prometheus gets from Grafana for `node`: SUBSTITUTE, with `values` over it."""
    values = {**SUBSTITUTE, **(values or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    expr = expr.replace("$node", node)
    assert "$" not in expr, f"variable left in {expr}"
    return expr


def query_result(base: str, expr: str, nodes: list[str], timeout: float = 0) -> list:
    """The first non-empty result of expr with $node set to each node in turn (waiting up to
    timeout for one); [] when every node gives nothing. Fails on a query Prometheus refuses."""

    def attempt():
        for node in nodes:
            result = _get(base, "/api/v1/query", query=expand(expr, node))
            assert result["status"] == "success", (expr, result)
            if result["data"]["result"]:
                return result["data"]["result"]
        return []

    return (_wait(attempt, timeout) if timeout else attempt()) or []


def test_rules_and_dashboard_queries_work_on_real_data(tmp_path):
    """Prometheus loads alerts/netstack.rules.yml, scrapes two exporters as job="netstack-exporter"
    (as the chart's monitors set it): one on this machine's /proc, one on the fixture host tree
    (tests/check_trees.py: an IPVS table from procfs, per-CPU conntrack statistics), and evaluates
    every rule without error; the collector-health alerts stay silent although IPVS is unavailable
    on this kernel; every query of every dashboard runs, and returns data for one of the two nodes
    or needs a family listed in DOCUMENTED_ABSENT."""
    from tests.check_trees import HostTree
    from tests.helpers import prometheus_server

    tree = HostTree(tmp_path / "fixture-node")
    tree.healthy()
    with (
        Exporter(
            f"--collector.fsync.directory={tmp_path / 'fsync'}", "--collector.fsync.interval=1s"
        ) as host,
        Exporter(*tree.args(), "--collector.conntrack.per-cpu", "--collector.ipvs.backends") as fixture,
    ):
        targets = [f"127.0.0.1:{host.port}", f"127.0.0.1:{fixture.port}"]
        config = (
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ROOT / 'alerts' / 'netstack.rules.yml'}']\n"
            "scrape_configs:\n  - job_name: netstack-exporter\n"
            f"    static_configs: [{{targets: {targets}}}]\n"
        )
        with prometheus_server(config, tmp_path) as base:
            _check_live(base, targets, tree)


def _check_live(base: str, instances: list[str], tree) -> None:
    def rules():
        groups = _get(base, "/api/v1/rules")["data"]["groups"]
        found = [r for g in groups for r in g["rules"]]
        return found if found and all(r["health"] != "unknown" for r in found) else None

    evaluated = _wait(rules)
    assert evaluated, "Prometheus never evaluated the rules"
    assert all(r["health"] == "ok" for r in evaluated), [
        (r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"
    ]
    expected = {r["alert"] for r in alerting_rules_from_file()}
    assert {r["name"] for r in evaluated} == expected

    # A few scrapes so rates have two samples (the fixture node's CPUs and packets move on).
    def scraped():
        for _ in range(2):
            tree.quiet_interval()
        q = 'count(count_over_time(up{job="netstack-exporter"}[1m]) >= 5) == 2'
        return _get(base, "/api/v1/query", query=q)["data"]["result"]

    assert _wait(scraped)
    alerts = _get(base, "/api/v1/alerts")["data"]["alerts"]
    active = {a["labels"]["alertname"] for a in alerts}
    assert not active & {"NetstackCollectorFailing", "NetstackExporterDown", "NetstackExporterAbsent"}, alerts

    queries = dashboard_queries()
    assert {name for name, _, _ in queries} >= {
        "netstack-node.json",
        "netstack-fleet.json",
        "netstack-cpu.json",
    }
    empty = []
    for name, title, expr in queries:
        why = [reason for needs, reason in DOCUMENTED_ABSENT.items() if needs in expr]
        if query_result(base, expr, instances, timeout=0 if why else 30):
            continue
        assert why, f"{name}: panel {title!r} returns no data and is not documented absent: {expr}"
        empty.append((name, title, why[0]))
    print(f"{len(queries)} dashboard queries, {len(empty)} documented empty here", file=sys.stderr)
    for name, title, reason in empty:
        print(f"  {name}: {title!r}: {reason}", file=sys.stderr)


def alerting_rules_from_file() -> list[dict]:
    groups = _yaml().safe_load((ROOT / "alerts" / "netstack.rules.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


# --- listen address, web config, TLS, NetworkPolicy ------------------------------------------------


def test_listen_address_choices():
    def listen(values):
        c = container(render({"web": values}))
        (arg,) = [a for a in c["args"] if a.startswith("--web.listen-address=")]
        # (NETSTACK_* carry the collector settings for `kubectl exec ... check`: test_check_chart.py)
        names = [e["name"] for e in c.get("env", []) if not e["name"].startswith("NETSTACK_")]
        return arg.split("=", 1)[1], names

    assert listen({}) == ("[$(HOST_IP)]:9977", ["HOST_IP"])
    assert listen({"listenOnAllInterfaces": True}) == (":9977", [])
    assert listen({"listenHost": "10.0.0.5", "port": 9100}) == ("10.0.0.5:9100", [])
    assert listen({"listenHost": "fd00::5"}) == ("[fd00::5]:9977", [])


def test_host_ip_listen_address_is_accepted_by_the_real_exporter():
    """Kubernetes expands $(HOST_IP) to status.hostIP; the exporter must accept the bracketed
    form for an IPv4 address, as node_exporter does."""
    (arg,) = [a for a in container(render())["args"] if a.startswith("--web.listen-address=")]
    exporter = Exporter("--collector.disable-defaults", "--collector.cpu")
    port = exporter.port
    exporter.args = [a for a in exporter.args if not a.startswith("--web.listen-address=")]
    exporter.args.append(arg.replace("$(HOST_IP)", "127.0.0.1").replace(":9977", f":{port}"))
    with exporter as e:
        assert e.get("/healthz").status == 200


TLS_ON = {
    "web": {
        "config": {
            "content": {
                "tls_server_config": {
                    "cert_file": "/etc/netstack-exporter/tls/tls.crt",
                    "key_file": "/etc/netstack-exporter/tls/tls.key",
                },
                "basic_auth_users": {"prometheus": "$2y$10$" + "a" * 53},
            }
        },
        "tlsSecret": "netstack-tls",
        "tls": {"enabled": True},
    },
    "podMonitor": {
        "enabled": True,
        "tlsConfig": {
            "ca": {"secret": {"name": "netstack-tls", "key": "ca.crt"}},
            "serverName": "netstack-exporter",
        },
        "basicAuth": {
            "username": {"name": "scrape-auth", "key": "username"},
            "password": {"name": "scrape-auth", "key": "password"},
        },
    },
    "serviceMonitor": {
        "enabled": True,
        "tlsConfig": {
            "ca": {"secret": {"name": "netstack-tls", "key": "ca.crt"}},
            "serverName": "netstack-exporter",
        },
    },
    "networkPolicy": {"enabled": True},
}


def test_web_config_and_tls_from_secrets():
    docs = render(TLS_ON)
    validate_core(docs)
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_crd(doc)
    c = container(docs)
    spec = daemonset(docs)["spec"]["template"]["spec"]
    assert "--web.config.file=/etc/netstack-exporter/web/web.yml" in c["args"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    web, tls = mounts["/etc/netstack-exporter/web"], mounts["/etc/netstack-exporter/tls"]
    assert web["readOnly"] and tls["readOnly"]
    assert volumes[tls["name"]]["secret"]["secretName"] == "netstack-tls"
    (secret,) = by_kind(docs, "Secret")
    assert volumes[web["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    web_yml = _yaml().safe_load(secret["stringData"]["web.yml"])
    assert web_yml == TLS_ON["web"]["config"]["content"]
    # the chart's web.yml is one the exporter accepts (up to the files it names)
    from exporter.webconfig import parse_web_config

    assert parse_web_config(secret["stringData"]["web.yml"]).tls.cert_file.endswith("tls.crt")
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (pm,) = by_kind(docs, "PodMonitor")
    (sm,) = by_kind(docs, "ServiceMonitor")
    (pep,), (sep,) = pm["spec"]["podMetricsEndpoints"], sm["spec"]["endpoints"]
    assert pep["scheme"] == sep["scheme"] == "https"
    assert pep["tlsConfig"] == TLS_ON["podMonitor"]["tlsConfig"]
    assert pep["basicAuth"] == TLS_ON["podMonitor"]["basicAuth"]
    assert "basicAuth" not in sep


def test_existing_web_config_secret_and_client_certificates():
    docs = render(
        {
            "web": {
                "config": {"existingSecret": "my-web-config"},
                "tls": {"enabled": True, "clientCertRequired": True},
            }
        }
    )
    validate_core(docs)
    assert not by_kind(docs, "Secret")
    c = container(docs)
    volumes = {v["name"]: v for v in daemonset(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["web-config"]["secret"]["secretName"] == "my-web-config"
    # kubelet has no client certificate: the probes check the port only
    assert c["livenessProbe"]["tcpSocket"] == {"port": "metrics"} and "httpGet" not in c["livenessProbe"]
    assert c["readinessProbe"]["tcpSocket"] == {"port": "metrics"}


def test_no_tls_no_scheme_on_monitors():
    docs = render({"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    for monitor, key in (
        (by_kind(docs, "PodMonitor")[0], "podMetricsEndpoints"),
        (by_kind(docs, "ServiceMonitor")[0], "endpoints"),
    ):
        (ep,) = monitor["spec"][key]
        assert "scheme" not in ep and "tlsConfig" not in ep and "basicAuth" not in ep


def test_network_policy_admits_only_prometheus():
    docs = render({"networkPolicy": {"enabled": True}})
    validate_core(docs)
    (np,) = by_kind(docs, "NetworkPolicy")
    pod_labels = daemonset(docs)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in np["spec"]["podSelector"]["matchLabels"].items())
    assert np["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9977, "protocol": "TCP"}]
    (peer,) = rule["from"]  # namespace AND pod in one peer, not either
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
