"""Issue 18.2 on the real kernel: the vxlan MTU loss the small side sees. Node a's underlay takes
9000 bytes, node b's 1470; both tunnels have MTU 1500 (b's is 20 bytes too large; it is not bound
to its underlay, which would clamp it). 1,422-byte datagrams (the frames of a 1,422-byte ping)
both ways: a's encapsulated 1,500-byte frames are dropped on b's underlay on receive, b's are
fragmented on b; b's tunnel device counts nothing. Each node's real exporter is scraped by a real
Prometheus in its namespace with the shipped rules (`for:` shortened as in
tests/e2e/test_alerts_e2e.py): b raises the MTU mismatch, the underlay drops and the
fragmentation. Measured here and printed: a raises NetstackOverlayDropping and
NetstackOverlayUnderlayDropping too."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from tests.e2e.test_alerts_e2e import RULES, short_for
from tests.helpers import Exporter, Netns, free_port, need_tool, stop_process
from tests.integration.test_overlay import ARGS, MAC_A, MAC_B, add_vxlan, kernel_stats, send_udp, two_hosts

pytestmark = pytest.mark.root


def prometheus_in(ns: Netns, exporter_port: int, tmp, name: str):
    port = free_port()
    rules = tmp / f"rules-{name}.yml"
    rules.write_text(short_for(RULES.read_text()))
    config = tmp / f"prometheus-{name}.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n  - job_name: netstack-exporter\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
    )
    log = open(tmp / f"prometheus-{name}.log", "w")
    proc = ns.popen(
        need_tool("prometheus", "prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / ('data-' + name)}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log, f"http://127.0.0.1:{port}"


def alerts(ns: Netns, base: str) -> set[tuple[str, str]]:
    with ns.entered(), urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=5) as r:
        return {(a["labels"]["alertname"], a["state"]) for a in json.load(r)["data"]["alerts"]}


def test_the_small_side_raises_underlay_drops_and_fragmentation(tmp_path):
    with two_hosts(mtu_a=9000, mtu_b=1470) as (a, b):
        add_vxlan(
            a,
            "vx0",
            42,
            remote="198.18.0.2",
            local="198.18.0.1",
            dev="ula",
            mtu=1500,
            mac=MAC_A,
            addr="198.19.0.1/24",
        )
        add_vxlan(
            b,
            "vx0",
            42,
            remote="198.18.0.1",
            local="198.18.0.2",
            mtu=1500,
            mac=MAC_B,
            addr="198.19.0.2/24",
        )
        a.ip("neigh", "add", "198.19.0.2", "lladdr", MAC_B, "dev", "vx0", "nud", "permanent")
        b.ip("neigh", "add", "198.19.0.1", "lladdr", MAC_A, "dev", "vx0", "nud", "permanent")
        started = []
        with Exporter(*ARGS, netns=a) as exp_a, Exporter(*ARGS, netns=b) as exp_b:
            try:
                for ns, exp, name in ((a, exp_a, "a"), (b, exp_b, "b")):
                    started.append((ns, *prometheus_in(ns, exp.port, tmp_path, name)))
                time.sleep(4)  # clean scrapes first
                seen = {"a": set(), "b": set()}
                want = {
                    "NetstackOverlayMTUMismatch",
                    "NetstackOverlayUnderlayDropping",
                    "NetstackOverlayFragmenting",
                }
                for _ in range(30):
                    # 1,422-byte datagrams (DF unset, as ping's): the frames of a 1,422-byte ping
                    send_udp(a, "198.19.0.2", 1422, 20, df=False)
                    send_udp(b, "198.19.0.1", 1422, 20, df=False)
                    time.sleep(0.5)
                    for ns, _, _, base in started:
                        seen["a" if ns is a else "b"] |= alerts(ns, base)
                    if {n for n, s in seen["b"] if s == "firing"} >= want:
                        break
                dropped = kernel_stats(b, "ulb")["rx_dropped"]
                print(f"b: ulb rx_dropped {dropped}; alerts a {sorted(seen['a'])}, b {sorted(seen['b'])}")
                assert dropped > 0
                assert {n for n, s in seen["b"] if s == "firing"} >= want, seen
                # the tunnel's own counters stay 0: no overlay drop or error alert on either side
                assert not {n for n, _ in seen["b"]} & {"NetstackOverlayDropping", "NetstackOverlayErrors"}, (
                    seen
                )
                # the big side has no mismatch (what else it raises is printed above)
                assert "NetstackOverlayMTUMismatch" not in {n for n, _ in seen["a"]}, seen
            finally:
                for _, proc, log, _ in started:
                    stop_process(proc, 10)
                    log.close()
