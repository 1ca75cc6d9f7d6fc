"""The dashboard queries that this host cannot feed from its own /proc (tests/e2e/test_chart.py
lists them as documented absent there, marked LIVE), on real data made here as root: BGP from two
real BIRD 2 daemons in network namespaces (one session Established, one peer that never answers),
the eBPF collectors attached to this kernel, and a vxlan pair between two network namespaces
carrying traffic, each scraped by a real Prometheus. Every such query of every dashboard must
return data."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.bird import TwoNodes, config, mesh_name
from tests.e2e.test_chart import DOCUMENTED_ABSENT, LIVE, _get, _wait, dashboard_queries, query_result
from tests.helpers import Exporter, Netns, free_port, need_root, need_tool, prometheus_server, stop_process
from tests.integration.test_ebpf_loader import tracefs_mounted
from tests.integration.test_overlay import ARGS as OVERLAY_ARGS
from tests.integration.test_overlay import overlay_pair, send_udp, two_hosts

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ABSENT_PEER = "198.18.0.9"  # configured on node A, never answers: stays Connect/Active
OVERLAY = "netstack_overlay_"


def live_queries() -> list[tuple[str, str, str]]:
    """The queries test_chart.py could not give data for, marked LIVE there."""
    live = [needs for needs, reason in DOCUMENTED_ABSENT.items() if LIVE in reason]
    return [(name, title, expr) for name, title, expr in dashboard_queries() if any(n in expr for n in live)]


def scrape_config(target: str) -> str:
    return (
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n  - job_name: netstack-exporter\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )


def prometheus_in(ns: Netns, target: str, workdir):
    """Prometheus inside ns (the overlay exporter listens on the namespace's loopback)."""
    port = free_port()
    (workdir / "prometheus.yml").write_text(scrape_config(target))
    log = open(workdir / "prometheus.log", "w")
    proc = ns.popen(
        need_tool("prometheus", "prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log, f"http://127.0.0.1:{port}"


def check(base: str, instance: str, queries: list[tuple[str, str, str]]) -> None:
    def scraped():
        q = f'count_over_time(up{{instance="{instance}"}}[1m]) >= 5'
        return _get(base, "/api/v1/query", query=q)["data"]["result"]

    assert _wait(scraped), "Prometheus did not scrape the exporter"
    empty = [(n, t, e) for n, t, e in queries if not query_result(base, e, [instance], timeout=20)]
    assert not empty, "queries without data on real data:\n" + "\n".join(map(str, empty))


def test_bgp_and_ebpf_panels_on_real_bird_and_kernel(tmp_path):
    need_root()
    queries = [q for q in live_queries() if OVERLAY not in q[2]]
    assert any("netstack_bgp_" in e for _, _, e in queries) and any("skb_drops" in e for _, _, e in queries)
    # tracefs: the eBPF collectors read the running kernel's vector and drop-reason names there
    with tracefs_mounted(), TwoNodes() as nodes:
        a_peers = {
            mesh_name(nodes.B4): (nodes.B4, nodes.A4),
            "Node_" + ABSENT_PEER.replace(".", "_"): (ABSENT_PEER, nodes.A4),
        }
        bird_a = nodes.add(nodes.a, 2, config(2, nodes.A4, a_peers, ("198.19.1.0/24",)), "a")
        b_peers = {mesh_name(nodes.A4): (nodes.A4, nodes.B4)}
        bird_b = nodes.add(nodes.b, 2, config(2, nodes.B4, b_peers, ("198.19.2.0/24",)), "b")
        bird_a.wait_for(mesh_name(nodes.B4), "Established")
        bird_b.wait_for(mesh_name(nodes.A4), "Established")
        with Exporter(
            "--collector.disable-defaults",
            "--collector.bgp",
            f"--collector.bgp.socket={bird_a.socket_path}",
            "--collector.ebpf_softirq",
            "--collector.ebpf_softirq.per-cpu",
            "--collector.ebpf_drops",
        ) as exporter:
            target = f"127.0.0.1:{exporter.port}"
            with prometheus_server(scrape_config(target), tmp_path) as base:
                # both eBPF programs attached (they load in the background)
                available = 'sum(netstack_collector_available{collector=~"ebpf_.*"}) == 2'
                assert _wait(lambda: _get(base, "/api/v1/query", query=available)["data"]["result"]), (
                    exporter.log()
                )
                check(base, target, queries)


def test_overlay_panels_on_a_real_vxlan_pair(tmp_path):
    need_root()
    queries = [q for q in live_queries() if OVERLAY in q[2]]
    assert len(queries) >= 10
    with two_hosts() as (a, b):
        overlay_pair(a, b)
        with Exporter(*OVERLAY_ARGS, netns=a) as exporter:
            proc, log, base = prometheus_in(a, f"127.0.0.1:{exporter.port}", tmp_path)
            try:
                with a.entered():
                    for _ in range(6):
                        send_udp(a, "198.19.0.2", 200, 20)  # traffic through vx0
                        time.sleep(0.5)
                    check(base, f"127.0.0.1:{exporter.port}", queries)
            finally:
                stop_process(proc, 10)
                log.close()
