"""`kubectl -n <ns> exec ds/<name> -- netstack-exporter check` in the chart's pod: an exec'd
process gets the container's environment and security context, not its arguments, so the chart
gives every --path.* and --collector.* argument also as a NETSTACK_* variable. On the spec the
real helm renders: the check's configuration from the environment alone equals the exporter's
from its arguments (parsed by the exporter's own parser), its default probe directory is the
writable fsync mount, and the real check run with that environment (host paths mapped to this
machine's) reads what the chart enabled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from collectors import available_collectors
from exporter.check import CHECK_FLAGS, CHECK_SUBDIR
from exporter.cli import parse_config
from tests.e2e.test_chart import ALL_ON, container, daemonset, render
from tests.helpers import ROOT

pytestmark = pytest.mark.e2e

VALUES = {
    "default": {},
    "all on": ALL_ON,
    "some off": {
        "collectors": {"ipvs": False, "bgp": False},
        "collectorOptions": {"conntrack.per-cpu": False, "overlay.device-exclude": "^x,y"},
    },
    "fsync off": {"collectors": {"fsync": False}},
    "ebpf, drops off": {"ebpf": {"enabled": True, "drops": False}},
}
# flags of the exporter process only (listening, logging): the check has no use for them
SERVER_FLAGS = ("--web.", "--log.")


def exec_environment(c: dict) -> dict[str, str]:
    """The environment `kubectl exec` gives a process in the container (the plain values)."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def config_of(args: list[str], env: dict[str, str], extra=()):
    cfg = parse_config(args, env, available_collectors(), extra)
    return cfg.procfs, cfg.sysfs, cfg.enabled, cfg.collector_options


@pytest.mark.parametrize("name", VALUES)
def test_exec_check_sees_the_containers_configuration(name):
    c = container(render(VALUES[name]))
    args = [a for a in c["args"] if not a.startswith(SERVER_FLAGS)]
    exporter = config_of(args, {})
    check = config_of([], exec_environment(c), CHECK_FLAGS)
    assert check == exporter
    assert check[0] == "/host/proc" and check[1] == "/host/sys"


def test_the_checks_probe_directory_is_the_writable_fsync_mount():
    docs = render(ALL_ON)
    c = container(docs)
    env = exec_environment(c)
    cfg = parse_config([], env, available_collectors(), CHECK_FLAGS)
    first = cfg.collector_options["fsync"]["directory"][0]  # check's default --check.fsync-dir
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == first)
    assert not mount.get("readOnly")
    volumes = daemonset(docs)["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == "/var/lib/netstack-exporter/fsync"
    # the container's user may write there (root, as the exporter's own probe does)
    assert c["securityContext"]["runAsUser"] == 0 and c["securityContext"]["readOnlyRootFilesystem"] is True


def test_fsync_off_leaves_the_check_without_a_probe_directory():
    env = exec_environment(container(render({"collectors": {"fsync": False}})))
    assert env["NETSTACK_COLLECTOR_FSYNC"] == "false" and "NETSTACK_COLLECTOR_FSYNC_DIRECTORY" not in env


def test_the_real_check_with_the_exec_environment(tmp_path):
    """What `kubectl exec ds/netstack-netstack-exporter -- netstack-exporter check` runs, with the
    container's mounts mapped onto this machine: /host/proc -> /proc, the fsync hostPath -> tmp."""
    c = container(render())
    env = {}
    for key, value in exec_environment(c).items():
        value = value.replace("/host/proc", "/proc").replace("/host/sys", "/sys")
        env[key] = value.replace("/var/lib/netstack-exporter/fsync", str(tmp_path))
    (tmp_path / "root").mkdir()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "check",
            "--check.duration=1s",
            "--check.fsync-size=100k",
            "--output=json",
        ],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr
    report = json.loads(out.stdout)
    assert report["fsync_probe"]["path"] == str(tmp_path / "root")  # the mount, by default
    assert os.listdir(tmp_path / "root") == [], f"{CHECK_SUBDIR} left behind"
    collectors = next(v for v in report["checks"] if v["check"] == "collectors")
    assert "not enabled" not in " ".join(collectors["details"])
    for check_id in ("cpu.steal_node", "softnet.squeezes", "conntrack.fill", "fsync.p99"):
        verdict = next(v for v in report["checks"] if v["check"] == check_id)
        assert verdict["status"] != "skip", verdict


def test_the_image_has_the_command_on_its_path():
    # `kubectl exec ... -- netstack-exporter check` looks the command up in the image's PATH
    dockerfile = (ROOT / "packaging" / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    entrypoint = json.loads(final_stage.split("ENTRYPOINT ", 1)[1].splitlines()[0])[0]
    env_path = next(line for line in final_stage.splitlines() if line.startswith("ENV PATH="))
    assert os.path.dirname(entrypoint) in env_path.removeprefix("ENV PATH=").split(":")
    assert os.path.basename(entrypoint) == "netstack-exporter"
