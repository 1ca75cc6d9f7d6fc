"""The deploy path, end to end (issue 17.4): the image built from packaging/Dockerfile (the
session's one build, tests/image.py) runs the chart's rendered DaemonSet pod template — its
arguments, environment, security context, mounts, resources — under podman with runc, with the
chart's defaults and with eBPF on. The kubelet's part is played here: `podman kube play` rejects
hostPort with host networking and would run the probes inside the container, so the pod spec is
translated to `podman run` and the httpGet probes are sent from the host, as the kubelet does.
A real Prometheus scrapes it with the chart's rendered PrometheusRule loaded. Checked: the pod
becomes ready and stays live, every enabled collector succeeds or is unavailable for a reason
documented below, every rule is healthy, and every query of both dashboards returns data or is
documented as absent on this host (docs/deployment.md, "What CI proves")."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_chart import by_kind, daemonset, dashboard_queries, expand, render
from tests.helpers import ROOT, free_port, parse_metrics, prometheus_server, samples
from tests.image import podman
from tests.integration.test_ebpf_loader import tracefs_mounted

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

NODE = "ci-node"
# Collectors the chart enables that this CI host cannot serve, and the reason the exporter gives
# (a substring of its landing page's "why unavailable"). Anything else must succeed.
DOCUMENTED_UNAVAILABLE = {
    "ipvs": "ip_vs",  # the CI kernel is built without IPVS
    "bgp": "bird",  # no Calico: no BIRD control socket in the (empty) run directory
}
# Dashboard queries that return nothing on this host, by the metric family they need, and why.
DOCUMENTED_ABSENT = {
    "netstack_ipvs_": "no IPVS in the CI kernel",
    "netstack_bgp_": "no Calico BIRD on the CI host",
    "netstack_bird_": "no Calico BIRD on the CI host",
    "netstack_overlay_": "no VXLAN/tunnel device on the CI host",
    "netstack_ip_fragments_": "no fragmentation on an idle host",
    "netstack_softirq_wait_": "eBPF collectors off by default",
    "netstack_softirq_service_": "eBPF collectors off by default",
    "netstack_skb_drops_": "eBPF collectors off by default",
    "netstack_conntrack_insert_failed_": "no conntrack races on an idle host (rate over an empty range)",
    "netstack_kube_ipvs0_": "no kube-proxy on the CI host",
    "netstack_fsync_probe_errors_": "no probe errors on a healthy disk",
    "netstack_conntrack_entries_by_state": "--collector.conntrack.by-state is off by default",
    'collector="ebpf_drops"': "eBPF collectors off by default",
}
ALWAYS_PRESENT = (
    "netstack_cpu_",
    "netstack_softnet_",
    "netstack_conntrack_entries",
    "netstack_fsync_duration_",
)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _api(base: str, path: str, **params) -> dict:
    with urllib.request.urlopen(f"{base}{path}?" + urllib.parse.urlencode(params), timeout=10) as r:
        return json.load(r)


def _until(predicate, timeout: float, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def podman_run_args(pod: dict, image: str, port: int, host_dir: Path) -> list[str]:
    """`podman run` arguments that give the container what the kubelet would from `pod` (the
    DaemonSet's pod template spec). hostPath volumes of DirectoryOrCreate type (the fsync probe
    directory, Calico's run directory) are redirected under host_dir: tests write nowhere else."""
    (c,) = pod["containers"]
    args = ["run", "-d", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
    assert pod["hostNetwork"] is True
    args.append("--network=host")
    sc = c["securityContext"]
    args += ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    args += ["--cap-drop", ",".join(sc["capabilities"]["drop"])]
    args += ["--cap-add", ",".join(sc["capabilities"]["add"])]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    assert sc.get("privileged") is False
    seccomp = sc.get("seccompProfile") or pod.get("securityContext", {}).get("seccompProfile", {})
    if seccomp.get("type") == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    else:
        assert seccomp.get("type") == "RuntimeDefault"  # podman's default profile
    limits = c["resources"].get("limits", {})
    if "memory" in limits:
        args.append(f"--memory={int(limits['memory'].removesuffix('Mi'))}m")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in c["volumeMounts"]:
        v = volumes[mount["name"]]
        ro = ":ro" if mount.get("readOnly") else ""
        if "hostPath" in v:
            source = v["hostPath"]["path"]
            if v["hostPath"].get("type") == "DirectoryOrCreate":
                source = str(host_dir / source.strip("/").replace("/", "_"))
                Path(source).mkdir(parents=True, exist_ok=True)
            args += ["-v", f"{source}:{mount['mountPath']}{ro}"]
        elif "emptyDir" in v:
            size = v["emptyDir"].get("sizeLimit", "64Mi").removesuffix("Mi")
            args += ["--tmpfs", f"{mount['mountPath']}:size={size}m"]
        else:
            raise AssertionError(f"volume kind not translated: {v}")
    env = {}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:  # the downward API: status.hostIP is the node's address
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
            env[e["name"]] = "127.0.0.1"
    for name, value in env.items():
        args += ["-e", f"{name}={value}"]
    container_port = c["ports"][0]["containerPort"]
    exporter_args = []
    for a in c["args"]:
        for name, value in env.items():  # the kubelet expands $(VAR) in args
            a = a.replace(f"$({name})", value)
        if a.startswith("--web.listen-address="):
            assert a.endswith(f":{container_port}")
            a = a[: -len(str(container_port))] + str(port)  # a free port, not the hostPort 9977
        exporter_args.append(a)
    return [*args, image, *exporter_args]


def probe(c: dict, which: str, port: int) -> int:
    """The kubelet's httpGet probe, from outside the container (the chart uses no exec probe)."""
    p = c[which]
    assert "exec" not in p, "a probe that needs tools inside the image"
    get = p["httpGet"]
    assert get["port"] == "metrics"
    return _get(f"http://127.0.0.1:{port}{get['path']}")[0]


def collector_reasons(port: int) -> dict[str, str]:
    """collector -> 'why unavailable' from the landing page's table, for unavailable ones."""
    page = _get(f"http://127.0.0.1:{port}/")[1]
    rows = re.findall(
        r"<tr><td>([\w]+)</td><td>yes</td><td>no</td><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td></tr>", page
    )
    return dict(rows)


def prometheus_config(tmp: Path, target: str, rules: list[dict], job: str) -> str:
    """Scraping `target` as the chart's monitors do: job = the `job` value, instance = node =
    the node's name; the chart's rules loaded."""
    import yaml

    rule_file = tmp / "rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": rules}))
    return (
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rule_file}']\n"
        f"scrape_configs:\n  - job_name: {job}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
        "    relabel_configs:\n"
        f"      - {{target_label: instance, replacement: {NODE}}}\n"
        f"      - {{target_label: node, replacement: {NODE}}}\n"
    )


VARIANTS = {
    "defaults": {},
    "ebpf": {"ebpf": {"enabled": True}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_pod_runs_and_prometheus_sees_it(variant, built_image, tmp_path):
    # 2s instead of the chart's 60s so fsync panels have two probes within the test's minute.
    values = {**VARIANTS[variant], "fsync": {"interval": "2s"}, "prometheusRule": {"enabled": True}}
    docs = render(values)
    with contextlib.ExitStack() as stack:
        if variant == "ebpf":
            stack.enter_context(tracefs_mounted())  # the chart mounts the node's tracefs
        run_pod(variant, docs, built_image, tmp_path)


def run_pod(variant: str, docs: list[dict], built_image: str, tmp_path: Path) -> None:
    pod = daemonset(docs)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    (rule,) = by_kind(docs, "PrometheusRule")
    port = free_port()
    timings = {}
    started = time.monotonic()
    cid = podman(*podman_run_args(pod, built_image, port, tmp_path / "host")).stdout.strip()
    with contextlib.ExitStack() as stack:
        stack.callback(podman, "rm", "-f", "-t", "2", cid, check=False)
        ready = _until(lambda: probe(c, "readinessProbe", port) == 200, 60)
        timings["ready"] = time.monotonic() - started
        assert ready, podman("logs", cid, check=False).stderr[-2000:]
        assert probe(c, "livenessProbe", port) == 200
        exec_check(cid, c)
        timings["exec check"] = time.monotonic() - started

        # every enabled collector: successful, or unavailable for a documented reason
        metrics = parse_metrics(_get(f"http://127.0.0.1:{port}/metrics")[1])
        success = {
            dict(k[1])["collector"]: v
            for k, v in samples(metrics, "netstack_scrape_collector_success").items()
        }
        available = {
            dict(k[1])["collector"]: v for k, v in samples(metrics, "netstack_collector_available").items()
        }
        reasons = collector_reasons(port)
        expected = {n for n, on in json.loads(json.dumps(_chart_collectors())).items() if on}
        if variant == "ebpf":
            expected |= {"ebpf_softirq", "ebpf_drops"}
        assert expected <= set(success), set(success)
        for name in sorted(expected):
            if success[name] == 1:
                continue
            assert available[name] == 0, f"{name} is failing: {reasons}"
            assert name in DOCUMENTED_UNAVAILABLE, f"{name} unavailable, not documented: {reasons.get(name)}"
            assert DOCUMENTED_UNAVAILABLE[name] in reasons.get(name, "").lower(), (name, reasons.get(name))
        if variant == "ebpf":
            assert success["ebpf_softirq"] == 1 and success["ebpf_drops"] == 1, reasons
        rss = samples(metrics, "process_resident_memory_bytes")
        print(
            f"\n[{variant}] unavailable: {reasons}; RSS {max(rss.values()) / 2**20:.0f} MiB", file=sys.stderr
        )

        # a real Prometheus with the chart's rules scrapes the pod
        job = "netstack-exporter"
        config = prometheus_config(tmp_path, f"127.0.0.1:{port}", rule["spec"]["groups"], job)
        base = stack.enter_context(prometheus_server(config, tmp_path))
        scraped = _until(
            lambda: _try(
                lambda: _api(base, "/api/v1/query", query=f'count_over_time(up{{job="{job}"}}[1m]) >= 8')[
                    "data"
                ]["result"]
            ),
            90,
        )
        timings["8 scrapes"] = time.monotonic() - started
        assert scraped, (tmp_path / "prometheus.log").read_text()[-2000:]

        def evaluated():
            rules = [r for g in _api(base, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None

        rules = _until(lambda: _try(evaluated), 30)
        assert rules and all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules or [] if r["health"] != "ok"
        ]
        wanted = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
        assert {r["name"] for r in rules if r["type"] == "alerting"} == wanted
        active = {a["labels"]["alertname"] for a in _api(base, "/api/v1/alerts")["data"]["alerts"]}
        assert not active & {"NetstackCollectorFailing", "NetstackExporterDown", "NetstackExporterAbsent"}, (
            active
        )

        # every dashboard query: data, or documented as absent on this host
        # every dashboard (fleet, node, drill-downs) as Grafana asks; the fsync window holds two probes
        windows = {"$fsync_window": "30s", "$job": job}
        empty = []
        for name, title, expr in dashboard_queries():
            expr = expand(expr, NODE, windows)
            result = _api(base, "/api/v1/query", query=expr)
            assert result["status"] == "success", (name, title, expr)
            if result["data"]["result"]:
                continue
            why = [r for prefix, r in DOCUMENTED_ABSENT.items() if prefix in expr]
            if variant == "ebpf":
                why = [w for w in why if "eBPF" not in w]
            empty.append((name, title, expr))
            assert why, f"{name}: panel {title!r} returns no data and is not documented absent: {expr}"
        timings["total"] = time.monotonic() - started
        print(
            f"[{variant}] {len(dashboard_queries())} dashboard queries, {len(empty)} documented empty; "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
            file=sys.stderr,
        )


def exec_check(cid: str, c: dict) -> None:
    """`kubectl -n <ns> exec ds/<name> -- netstack-exporter check` (docs/check.md): `podman exec`
    runs it in the running container as kubectl would, with the container's user, capabilities,
    read-only root, mounts and environment, not its arguments. The check reads the host through
    the chart's mounts and probes the writable fsync mount, in its own subdirectory."""
    out = podman(
        *("exec", cid, "netstack-exporter", "check"),
        *("--check.duration=1s", "--check.fsync-size=100k", "--output=json"),
        check=False,
        timeout=60,
    )
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr[-2000:]
    report = json.loads(out.stdout)
    fsync_dirs = [e["value"] for e in c["env"] if e["name"] == "NETSTACK_COLLECTOR_FSYNC_DIRECTORY"]
    assert report["fsync_probe"]["path"] == fsync_dirs[0].split(",")[0], report["fsync_probe"]
    assert report["fsync_probe"]["syncs"] > 0
    checks = {v["check"]: v for v in report["checks"]}
    for check_id in (
        "cpu.steal_node",
        "softnet.squeezes",
        "conntrack.fill",
        "fsync.p99",
        "virtualization.kernel",
    ):
        assert checks[check_id]["status"] != "skip", checks[check_id]
    # the collectors the exporter runs, no more and no fewer: none "not enabled", none failing
    assert "not enabled" not in " ".join(checks["collectors"]["details"]), checks["collectors"]
    assert "failing" not in checks["collectors"]["value"], checks["collectors"]
    # the node, not the pod: the host's PID 1 through /host/proc (this CI host is a VM guest)
    assert "(guest)" in checks["virtualization.kernel"]["value"], checks["virtualization.kernel"]


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def _chart_collectors() -> dict[str, bool]:
    import yaml

    return yaml.safe_load((ROOT / "charts" / "netstack-exporter" / "values.yaml").read_text())["collectors"]


def test_built_image_carries_oci_labels_and_no_shell_is_needed(built_image):
    from exporter import __version__

    [info] = json.loads(podman("image", "inspect", built_image).stdout)
    labels = info["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])
    # the chart's probes are kubelet httpGet: none runs a command inside the container
    ds = daemonset(render({"ebpf": {"enabled": True}}))
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    for which in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert "exec" not in c.get(which, {}), which
