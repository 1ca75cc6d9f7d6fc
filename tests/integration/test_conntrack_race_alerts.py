"""Issue 18.1 on the real kernel: one insert race raises one alert. In a network namespace with
nftables conntrack (and NAT) rules, tests/conntrack_race.py makes two CPUs race on the same new
TCP tuples; the kernel counts every loser in insert_failed and in drop. The real exporter and a
real Prometheus with the shipped rules (`for:` shortened as in tests/e2e/test_alerts_e2e.py) run in
the same namespace: NetstackConntrackInsertFailed fires, NetstackConntrackDropping (a full table)
is never even pending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

from tests.e2e.test_alerts_e2e import RULES, short_for
from tests.helpers import ROOT, Exporter, Netns, free_port, need, need_tool, stop_process

NFT = """table ip nse_race {
  chain out { type filter hook output priority 0; ct state new counter; }
  chain post { type nat hook postrouting priority 100; ip daddr 198.18.0.2 masquerade; }
}
"""


def race(ns: Netns, first_port: int, n: int = 5000) -> None:
    ns.exec(sys.executable, "-m", "tests.conntrack_race", str(n), str(first_port), cwd=ROOT, timeout=60)


def conntrack_totals(ns: Netns) -> dict[str, int]:
    lines = ns.exec("cat", "/proc/net/stat/nf_conntrack").stdout.splitlines()
    header = lines[0].split()
    totals = dict.fromkeys(header, 0)
    for line in lines[1:]:
        for name, value in zip(header, line.split()):
            totals[name] += int(value, 16)
    return totals


def test_one_insert_race_raises_only_the_insert_failed_warning(tmp_path):
    need(len(os.sched_getaffinity(0)) >= 2, "the race needs two CPUs")
    prometheus = need_tool("prometheus", "prometheus")
    need_tool("nft", "nftables")
    with Netns("nse18-race") as ns:
        ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ns.ip("addr", "add", "198.18.0.1/24", "dev", "v0")
        ns.ip("link", "set", "v0", "up")
        ns.ip("link", "set", "v1", "up")
        ns.ip("neigh", "add", "198.18.0.2", "lladdr", "02:00:00:00:00:02", "dev", "v0")
        ns.exec("nft", "-f", "-", input=NFT)
        rules = tmp_path / "rules.yml"
        rules.write_text(short_for(RULES.read_text()))
        with Exporter("--collector.disable-defaults", "--collector.conntrack", netns=ns) as exp:
            port = free_port()
            config = tmp_path / "prometheus.yml"
            config.write_text(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files: ['{rules}']\n"
                "scrape_configs:\n  - job_name: netstack-exporter\n"
                f"    static_configs:\n      - targets: ['127.0.0.1:{exp.port}']\n"
            )
            log = open(tmp_path / "prometheus.log", "w")
            proc = ns.popen(
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                time.sleep(4)  # a few clean scrapes first
                seen: set[tuple[str, str]] = set()
                fired = False
                for burst in range(12):  # at most 24,000 entries: far from a full table
                    race(ns, 1024 + burst * 2000, 2000)
                    with ns.entered(), urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=5) as r:
                        alerts = json.load(r)["data"]["alerts"]
                    seen |= {(a["labels"]["alertname"], a["state"]) for a in alerts}
                    fired = ("NetstackConntrackInsertFailed", "firing") in seen
                    if fired and burst >= 6:
                        break
                    time.sleep(1)
                totals = conntrack_totals(ns)
                print(
                    f"race: insert_failed {totals['insert_failed']}, drop {totals['drop']}, alerts {sorted(seen)}"
                )
                assert totals["insert_failed"] > 0 and totals["drop"] == totals["insert_failed"], totals
                assert fired, seen
                # one race, one alert: nothing about a full table, not even pending
                assert {name for name, _ in seen if "Conntrack" in name} == {
                    "NetstackConntrackInsertFailed"
                }, seen
                # the only other state seen is NetstackExporterAbsent pending until the first scrape
                assert {(n, s) for n, s in seen if "Conntrack" not in n} <= {
                    ("NetstackExporterAbsent", "pending")
                }, seen
            finally:
                stop_process(proc, 10)
                log.close()
