"""A real Prometheus server scrapes the real exporter reading this machine's /proc."""

import contextlib
import json
import time
import urllib.parse
import urllib.request

import pytest

from tests.helpers import Exporter, prometheus_server


def online_cpus() -> int:
    with open("/proc/stat") as f:
        return sum(1 for line in f if line.startswith("cpu") and not line.startswith("cpu "))


@pytest.fixture
def prometheus(tmp_path):
    with contextlib.ExitStack() as stack:

        def start(target: str) -> str:
            config = (
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "scrape_configs:\n  - job_name: netstack\n"
                f"    static_configs:\n      - targets: ['{target}']\n"
            )
            return stack.enter_context(prometheus_server(config, tmp_path))

        yield start


def query(base: str, promql: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


def wait_for(base: str, promql: str, want: int, timeout: float = 40) -> list:
    deadline = time.monotonic() + timeout
    result = []
    while time.monotonic() < deadline:
        try:
            result = query(base, promql)
            if len(result) >= want:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    return result


def test_prometheus_scrapes_steal_per_cpu(prometheus, tmp_path):
    cpus = online_cpus()
    # every default collector on this machine's real /proc; the fsync probe in a temp directory
    with Exporter(f"--collector.fsync.directory={tmp_path / 'fsync'}") as exp:
        base = prometheus(f"127.0.0.1:{exp.port}")
        steal = wait_for(base, 'netstack_cpu_seconds_total{mode="steal"}', cpus)
        assert len(steal) == cpus, steal
        assert all(s["metric"]["job"] == "netstack" for s in steal)
        up = wait_for(base, 'up{job="netstack"}', 1)
        assert up and up[0]["value"][1] == "1"
        ok = wait_for(base, 'netstack_scrape_collector_success{collector=~"cpu|softirq"} == 1', 2)
        assert len(ok) == 2
        rate = wait_for(base, 'rate(netstack_softirqs_total{vector="NET_RX"}[10s])', cpus)
        assert len(rate) == cpus
