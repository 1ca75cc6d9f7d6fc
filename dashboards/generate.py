"""Generates the Grafana dashboards (grafana-foundation-sdk) and syncs the chart's copies.

    .venv/bin/python dashboards/generate.py          # write dashboards/*.json and the chart's files/
    .venv/bin/python dashboards/generate.py --check  # exit 1 if any committed file is stale

Outputs:
    dashboards/netstack-node.json                           the per-node overview
    dashboards/netstack-fleet.json                          every node at once, linking to the node one
    charts/netstack-exporter/files/dashboards/*.json        same bytes, for the dashboards ConfigMap
    charts/netstack-exporter/files/netstack.rules.yml       copy of alerts/netstack.rules.yml (Helm
                                                            can only read files inside the chart)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import heatmap as heatmap_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

ROOT = Path(__file__).resolve().parent.parent
CHART_FILES = ROOT / "charts" / "netstack-exporter" / "files"

DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every query selects the chosen job (the chart's `job` value); node panels also one node (the
# chart's monitors set instance to the node name).
JOB = 'job="$job"'
NODE = 'job="$job",instance="$node"'
RATE = "$__rate_interval"
# The fsync probe records once per interval (the chart's default 60s): a window of one interval
# holds at most one sample and rate() gives nothing. The fsync_window variable (default 5m, at
# least twice the interval) is used by every fsync panel instead of $__rate_interval.
FSYNC_RATE = "$fsync_window"
NODE_UID = "netstack-node"
FLEET_UID = "netstack-fleet"
CPU_UID = "netstack-cpu"
CONNTRACK_UID = "netstack-conntrack"
OVERLAY_UID = "netstack-overlay"
IPVS_UID = "netstack-ipvs"
FSYNC_UID = "netstack-fsync"
BGP_UID = "netstack-bgp"
DROPS_UID = "netstack-drops"
# The per-area drill-downs: uid -> (link title, rows of the node dashboard that open it)
AREAS = {
    CPU_UID: (
        "CPU, softirq and softnet",
        ("CPU steal", "SoftIRQ and softnet", "eBPF", "Node: virtualization"),
    ),
    CONNTRACK_UID: ("Conntrack", ("Conntrack",)),
    OVERLAY_UID: ("Overlay, MTU and netstat", ("Overlay",)),
    IPVS_UID: ("IPVS", ("IPVS", "Node: virtualization and L2 readiness")),
    FSYNC_UID: ("fsync", ("fsync",)),
    BGP_UID: ("BGP", ("BGP",)),
    DROPS_UID: ("eBPF drops", ("eBPF",)),
}


def query(expr: str, legend: str = "", ref: str = "A") -> prom_b.Dataquery:
    q = prom_b.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    return q


def thresholds(*steps: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    return (
        dash_b.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in steps])
    )


def timeseries(
    title: str,
    description: str,
    unit: str,
    *queries: tuple[str, str],
    width: int = 12,
    stacked: bool = False,
    min_zero: bool = True,
    threshold: float | None = None,
) -> ts_b.Panel:
    panel = (
        ts_b.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common_m.LegendDisplayMode.TABLE)
            .placement(common_m.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
    )
    if min_zero:
        panel = panel.min(0)
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    if threshold is not None:
        # Draw the alert threshold on the graph so the panel and the alert tell the same story.
        panel = panel.thresholds(thresholds((None, "green"), (threshold, "red"))).thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common_m.GraphThresholdsStyleMode.DASHED)
        )
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, ref=chr(ord("A") + i)))
    return panel


def stat(title: str, description: str, unit: str, expr: str, steps, width: int = 6) -> stat_b.Panel:
    return (
        stat_b.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(width)
        .height(4)
        .with_target(query(expr))
        .color_mode(common_m.BigValueColorMode.BACKGROUND)
        .graph_mode(common_m.BigValueGraphMode.AREA)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(thresholds(*steps))
    )


def heatmap(title: str, description: str, expr: str, width: int = 12) -> heatmap_b.Panel:
    return (
        heatmap_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .with_target(query(expr, "{{le}}").format(prom_b.prometheus.PromQueryFormat.HEATMAP))
        .calculate(False)
        .unit("s")
    )


def histogram_quantile(q: float, metric: str, by: str, extra: str = "", window: str = RATE) -> str:
    selector = NODE + (f",{extra}" if extra else "")
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{window}])))"


# Data links (fleet cells and series) have no keepTime: Grafana puts the time range in this way.
TIME_RANGE = "&${__url_time_range}"


def dashboard_url(uid: str, node: str | None = "${node}") -> str:
    """A link to another netstack dashboard that keeps the data source, the job and (when given)
    the node; Grafana expands the ${...} when the link is clicked."""
    url = f"/d/{uid}?var-datasource=${{datasource}}&var-job=${{job}}"
    return url + (f"&var-node={node}" if node else "")


def link(title: str, uid: str, node: bool = True) -> dash_b.DashboardLink:
    return (
        dash_b.DashboardLink(title)
        .type(dash_m.DashboardLinkType.LINK)
        .url(dashboard_url(uid, "${node}" if node else None))
        .keep_time(True)
    )


def node_variable() -> dash_b.QueryVariable:
    return (
        dash_b.QueryVariable("node")
        .label("Node")
        .datasource(DATASOURCE)
        .query(f"label_values(netstack_scrape_collector_success{{{JOB}}}, instance)")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
    )


def common_variables(d: dash_b.Dashboard) -> dash_b.Dashboard:
    """datasource, job and fsync_window: shared by every dashboard so links carry them over."""
    return (
        d.with_variable(dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dash_b.QueryVariable("job")
            .label("Job")
            .datasource(DATASOURCE)
            .query("label_values(netstack_scrape_collector_success, job)")
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            dash_b.CustomVariable("fsync_window")
            .label("fsync window")
            .description("Rate window of the fsync panels: at least twice the fsync probe interval.")
            .values("2m,5m,10m,30m,1h")
            .current(dash_m.VariableOption(text="5m", value="5m", selected=True))
        )
    )


def node_dashboard() -> dash_b.Dashboard:
    d = (
        dash_b.Dashboard("netstack: node overview")
        .uid(NODE_UID)
        .description(
            "One node's network and disk health from netstack-exporter: CPU steal, "
            "softirq/softnet, conntrack, overlay, IPVS, fsync, eBPF."
        )
        .tags(["netstack", "network", "kubernetes"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .link(link("Fleet overview", FLEET_UID, node=False))
    )
    for uid, (title, _) in AREAS.items():
        d = d.link(link(title, uid))
    d = common_variables(d).with_variable(node_variable())

    d = (
        d.with_row(dash_b.Row("Exporter"))
        .with_panel(
            stat(
                "Collectors failing",
                "Collectors whose source is there but whose last "
                "collection failed; the exporter's landing page (/) says why.",
                "none",
                f"count((netstack_scrape_collector_success{{{NODE}}} == 0) unless on "
                f"(collector) (netstack_collector_available{{{NODE}}} == 0)) or vector(0)",
                [(None, "green"), (1, "red")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "Collectors unavailable",
                "Enabled collectors whose source is absent "
                "here (no IPVS, eBPF without headers...): not an error, see /.",
                "none",
                f"count(netstack_collector_available{{{NODE}}} == 0) or vector(0)",
                [(None, "green"), (1, "blue")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "Scrape up",
                "Whether Prometheus reaches the exporter on this node.",
                "none",
                f"up{{{NODE}}}",
                [(None, "red"), (1, "green")],
                width=4,
            )
        )
        .with_panel(
            timeseries(
                "Collector duration",
                "Time each collector took per collection.",
                "s",
                (f"netstack_scrape_collector_duration_seconds{{{NODE}}}", "{{collector}}"),
                width=12,
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("CPU steal"))
        .with_panel(
            timeseries(
                "Steal per CPU",
                "Fraction of each vCPU's time the hypervisor gave to other guests. "
                "Alert: over 25% on one CPU for 10m.",
                "percentunit",
                (f'rate(netstack_cpu_seconds_total{{{NODE},mode="steal"}}[{RATE}])', "cpu {{cpu}}"),
                threshold=0.25,
            )
        )
        .with_panel(
            timeseries(
                "CPU time by mode (node)",
                "Share of all CPUs by mode, idle left out. Steal above 10% "
                "across the node fires NetstackCPUStealHigh.",
                "percentunit",
                (
                    f'sum by (mode) (rate(netstack_cpu_seconds_total{{{NODE},mode!="idle"}}[{RATE}]))'
                    f' / scalar(count(netstack_cpu_seconds_total{{{NODE},mode="idle"}}))',
                    "{{mode}}",
                ),
                stacked=True,
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("SoftIRQ and softnet"))
        .with_panel(
            timeseries(
                "NET_RX / NET_TX softirqs per CPU",
                "How often each CPU ran the network softirqs (/proc/softirqs).",
                "ops",
                (
                    f'rate(netstack_softirqs_total{{{NODE},vector=~"NET_RX|NET_TX"}}[{RATE}])',
                    "{{vector}} cpu {{cpu}}",
                ),
            )
        )
        .with_panel(
            timeseries(
                "Packets processed per CPU",
                "softnet_stat processed: packets taken from the backlog and NIC queues by NET_RX.",
                "pps",
                (f"rate(netstack_softnet_processed_total{{{NODE}}}[{RATE}])", "cpu {{cpu}}"),
            )
        )
        .with_panel(
            timeseries(
                "Squeezes and backlog drops",
                "time_squeeze: NET_RX ran out of budget with work left; "
                "dropped: the input backlog was full (packet loss).",
                "ops",
                (f"rate(netstack_softnet_times_squeezed_total{{{NODE}}}[{RATE}])", "squeezed cpu {{cpu}}"),
                (f"rate(netstack_softnet_dropped_total{{{NODE}}}[{RATE}])", "dropped cpu {{cpu}}"),
            )
        )
        .with_panel(
            timeseries(
                "Backlog length",
                "Packets waiting in each CPU's input backlog at scrape time, against "
                "net.core.netdev_max_backlog (drops start there).",
                "none",
                (f"netstack_softnet_backlog_packets{{{NODE}}}", "cpu {{cpu}}"),
                (f"netstack_softnet_max_backlog_packets{{{NODE}}}", "netdev_max_backlog"),
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("Conntrack"))
        .with_panel(
            stat(
                "Table fill",
                "Entries / nf_conntrack_max. Alert above 90%.",
                "percentunit",
                f"netstack_conntrack_entries{{{NODE}}} / netstack_conntrack_entries_limit{{{NODE}}}",
                [(None, "green"), (0.75, "orange"), (0.9, "red")],
            )
        )
        .with_panel(
            timeseries(
                "Entries and limit",
                "Entries in this node's (host network namespace) table and the global maximum.",
                "none",
                (f"netstack_conntrack_entries{{{NODE}}}", "entries"),
                (f"netstack_conntrack_entries_limit{{{NODE}}}", "limit"),
                width=6,
            )
        )
        .with_panel(
            timeseries(
                "Failures",
                "insert_failed is the DNS 5-second race; drop and early_drop mean a full table.",
                "ops",
                (f"sum(rate(netstack_conntrack_insert_failed_total{{{NODE}}}[{RATE}]))", "insert_failed"),
                (f"sum(rate(netstack_conntrack_drop_total{{{NODE}}}[{RATE}]))", "drop"),
                (f"sum(rate(netstack_conntrack_early_drop_total{{{NODE}}}[{RATE}]))", "early_drop"),
                (f"sum(rate(netstack_conntrack_invalid_total{{{NODE}}}[{RATE}]))", "invalid"),
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("Overlay"))
        .with_panel(
            timeseries(
                "MTU mismatch",
                "1 when a tunnel device's MTU plus encapsulation overhead exceeds its underlay's MTU.",
                "none",
                (f"netstack_overlay_mtu_mismatch{{{NODE}}}", "{{device}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Overlay and underlay MTU",
                "Device MTU against the MTU of the link it is carried on.",
                "bytes",
                (f"netstack_overlay_mtu_bytes{{{NODE}}}", "{{device}}"),
                (f"netstack_overlay_underlay_mtu_bytes{{{NODE}}}", "{{device}} underlay"),
                width=8,
                min_zero=False,
            )
        )
        .with_panel(
            timeseries(
                "Drops and errors",
                "Per tunnel device; tx drops on VXLAN usually mean a missing "
                "forwarding entry, carrier errors an unroutable remote.",
                "pps",
                (f"rate(netstack_overlay_receive_dropped_total{{{NODE}}}[{RATE}])", "{{device}} rx dropped"),
                (f"rate(netstack_overlay_transmit_dropped_total{{{NODE}}}[{RATE}])", "{{device}} tx dropped"),
                (f"rate(netstack_overlay_receive_errors_total{{{NODE}}}[{RATE}])", "{{device}} rx errors"),
                (f"rate(netstack_overlay_transmit_errors_total{{{NODE}}}[{RATE}])", "{{device}} tx errors"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Error kinds",
                "The detailed counters that tell causes apart: carrier = no route to "
                "the remote endpoint, frame = malformed encapsulation, over/fifo/missed = receive "
                "resources.",
                "pps",
                *[
                    (
                        f"rate(netstack_overlay_{kind}_errors_total{{{NODE}}}[{RATE}])",
                        "{{device}} " + kind.replace("_", " "),
                    )
                    for kind in (
                        "transmit_carrier",
                        "receive_frame",
                        "receive_crc",
                        "receive_over",
                        "receive_fifo",
                        "receive_missed",
                        "transmit_fifo",
                    )
                ],
            )
        )
        .with_panel(
            timeseries(
                "Host-wide fragmentation and UDP errors",
                "The same failures seen by the IP and UDP "
                "stacks (/proc/net/snmp, netstat): VXLAN, Geneve and WireGuard are UDP; no-port "
                "datagrams are VXLAN packets for a device that is down.",
                "pps",
                (
                    f"rate(netstack_ip_fragment_failures_total{{{NODE}}}[{RATE}])",
                    "fragmentation failed {{family}}",
                ),
                (
                    f"rate(netstack_ip_reassembly_failures_total{{{NODE}}}[{RATE}])",
                    "reassembly failed {{family}}",
                ),
                (
                    f"rate(netstack_udp_receive_errors_total{{{NODE}}}[{RATE}])",
                    "udp receive errors {{family}}",
                ),
                (
                    f"rate(netstack_udp_receive_buffer_errors_total{{{NODE}}}[{RATE}])",
                    "udp rcvbuf errors {{family}}",
                ),
                (f"rate(netstack_udp_no_port_datagrams_total{{{NODE}}}[{RATE}])", "udp no port {{family}}"),
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("IPVS"))
        .with_panel(
            stat(
                "Services",
                "IPVS virtual services (one per Service port in kube-proxy IPVS mode).",
                "none",
                f"netstack_ipvs_services{{{NODE}}}",
                [(None, "blue")],
            )
        )
        .with_panel(
            stat(
                "Backends",
                "Real servers across all virtual services.",
                "none",
                f"netstack_ipvs_backends{{{NODE}}}",
                [(None, "blue")],
            )
        )
        .with_panel(
            stat(
                "Services without backends",
                "Traffic to these is black-holed.",
                "none",
                f"netstack_ipvs_services_without_backends{{{NODE}}}",
                [(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat(
                "Backends with weight 0",
                "Backends that receive no new connections (graceful termination).",
                "none",
                f"netstack_ipvs_backends_weight_zero{{{NODE}}}",
                [(None, "green"), (1, "orange")],
            )
        )
        .with_panel(
            timeseries(
                "Connections",
                "New IPVS connections per second.",
                "cps",
                (f"rate(netstack_ipvs_connections_total{{{NODE}}}[{RATE}])", "connections"),
            )
        )
        .with_panel(
            timeseries(
                "Traffic",
                "Bytes through IPVS, in and out.",
                "Bps",
                (f"rate(netstack_ipvs_incoming_bytes_total{{{NODE}}}[{RATE}])", "in"),
                (f"rate(netstack_ipvs_outgoing_bytes_total{{{NODE}}}[{RATE}])", "out"),
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("fsync (etcd WAL pattern)"))
        .with_panel(
            heatmap(
                "fdatasync latency",
                "Distribution of every fdatasync the probe measured, all probed directories together.",
                f"sum by (le) (increase(netstack_fsync_duration_seconds_bucket{{{NODE}}}[{FSYNC_RATE}]))",
            )
        )
        .with_panel(
            timeseries(
                "fdatasync p50 / p99",
                "From the histogram. etcd wants p99 under 10ms (red line).",
                "s",
                (
                    histogram_quantile(0.5, "netstack_fsync_duration_seconds", "path", window=FSYNC_RATE),
                    "p50 {{path}}",
                ),
                (
                    histogram_quantile(0.99, "netstack_fsync_duration_seconds", "path", window=FSYNC_RATE),
                    "p99 {{path}}",
                ),
                threshold=0.01,
            )
        )
        .with_panel(
            timeseries(
                "Last probe quantiles",
                "Quantiles of the last completed probe, per directory.",
                "s",
                (f"netstack_fsync_probe_quantile_seconds{{{NODE}}}", "{{path}} q{{q}}"),
            )
        )
        .with_panel(
            timeseries(
                "Probe errors and age",
                "Errors by reason, and seconds since the last successful probe (alert above 600s).",
                "none",
                (
                    f"increase(netstack_fsync_probe_errors_total{{{NODE}}}[{FSYNC_RATE}])",
                    "{{path}} {{reason}}",
                ),
                (
                    f"time() - netstack_fsync_probe_last_success_timestamp_seconds{{{NODE}}}",
                    "{{path}} seconds since success",
                ),
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("BGP (Calico's BIRD)"))
        .with_panel(
            stat(
                "Peers not Established",
                "BGP peers of this node's BIRD in any state but Established (alert after 5 minutes).",
                "none",
                f'sum(netstack_bgp_peers{{{NODE},state!="Established"}})',
                [(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat(
                "BIRD answering",
                "1 when every BIRD control socket of this node answers (bird.ctl, bird6.ctl).",
                "none",
                f"min(netstack_bird_up{{{NODE}}})",
                [(None, "red"), (1, "green")],
            )
        )
        .with_panel(
            timeseries(
                "Peers by state",
                "BGP peers per BGP state (Established, Active, Connect, ...).",
                "none",
                (f"sum by (state) (netstack_bgp_peers{{{NODE}}}) > 0", "{{state}}"),
                stacked=True,
            )
        )
        .with_panel(
            timeseries(
                "Session up per peer",
                "1 while the session with the peer is Established. Empty "
                "with --collector.bgp.peer-series=counts.",
                "none",
                (f"netstack_bgp_peer_up{{{NODE}}}", "{{peer}} {{type}} {{family}}"),
            )
        )
        .with_panel(
            timeseries(
                "Routes per peer",
                "Routes imported from and exported to each peer.",
                "none",
                (f"netstack_bgp_peer_imported_routes{{{NODE}}}", "{{peer}} imported"),
                (f"netstack_bgp_peer_exported_routes{{{NODE}}}", "{{peer}} exported"),
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("Node: virtualization and L2 readiness"))
        .with_panel(
            stat_b.Panel()
            .title("Virtualization")
            .description(
                "What runs this node: type (role). Role container means the host's kernel is shared."
            )
            .datasource(DATASOURCE)
            .span(6)
            .height(4)
            .with_target(query(f"netstack_virtualization_info{{{NODE}}}", "{{type}} ({{role}})"))
            .text_mode(common_m.BigValueTextMode.NAME)
            .graph_mode(common_m.BigValueGraphMode.NONE)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
        )
        .with_panel(
            stat(
                "Kernel modules loadable",
                "0 when this node cannot load kernel modules (see the reason label).",
                "none",
                f"netstack_kernel_modules_loadable{{{NODE}}}",
                [(None, "red"), (1, "green")],
            )
        )
        .with_panel(
            stat(
                "Strict ARP",
                "kube-proxy's strictARP state (arp_ignore=1, "
                "arp_announce=2), needed by MetalLB layer 2 in IPVS mode.",
                "none",
                f"netstack_ipvs_strict_arp{{{NODE}}}",
                [(None, "red"), (1, "green")],
            )
        )
        .with_panel(
            stat(
                "kube-ipvs0 addresses",
                "Service IPs kube-proxy bound to kube-ipvs0.",
                "none",
                f"sum(netstack_ipvs_kube_ipvs0_addresses{{{NODE}}})",
                [(None, "blue")],
            )
        )
    )

    d = (
        d.with_row(dash_b.Row("eBPF (optional collectors)"))
        .with_panel(
            timeseries(
                "Softirq wait p99 (raise to run)",
                "How long NET_RX/NET_TX waited between being raised "
                "and running: a starved CPU shows here first. Empty when ebpf_softirq is off.",
                "s",
                (histogram_quantile(0.99, "netstack_softirq_wait_seconds", "vector"), "{{vector}} p99"),
                (histogram_quantile(0.5, "netstack_softirq_wait_seconds", "vector"), "{{vector}} p50"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Softirq service p99",
                "Time spent running the softirq handler.",
                "s",
                (histogram_quantile(0.99, "netstack_softirq_service_seconds", "vector"), "{{vector}} p99"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Packet drops by kernel reason",
                "skb:kfree_skb drop reasons, top 10. Empty when ebpf_drops is off.",
                "pps",
                (
                    f"topk(10, sum by (reason) (rate(netstack_skb_drops_total{{{NODE}}}[{RATE}])))",
                    "{{reason}}",
                ),
                width=8,
            )
        )
    )
    return d


# The fleet table: one instant query per column, each one value per node (by instance), merged
# into one row per node. (title, unit, red threshold, PromQL)
FLEET_COLUMNS = [
    (
        "CPU steal",
        "percentunit",
        0.10,
        f'sum by (instance) (rate(netstack_cpu_seconds_total{{{JOB},mode="steal"}}[{RATE}]))'
        f' / count by (instance) (netstack_cpu_seconds_total{{{JOB},mode="idle"}})',
    ),
    (
        "Max CPU steal",
        "percentunit",
        0.25,
        f'max by (instance) (rate(netstack_cpu_seconds_total{{{JOB},mode="steal"}}[{RATE}]))',
    ),
    (
        "Squeezes/s",
        "none",
        1,
        f"sum by (instance) (rate(netstack_softnet_times_squeezed_total{{{JOB}}}[{RATE}]))",
    ),
    (
        "Backlog drops/s",
        "pps",
        0.001,
        f"sum by (instance) (rate(netstack_softnet_dropped_total{{{JOB}}}[{RATE}]))",
    ),
    (
        "Conntrack fill",
        "percentunit",
        0.90,
        f"max by (instance) (netstack_conntrack_entries{{{JOB}}} / netstack_conntrack_entries_limit{{{JOB}}})",
    ),
    (
        "Conntrack failures/s",
        "none",
        0.001,
        f"sum by (instance) (rate(netstack_conntrack_insert_failed_total{{{JOB}}}[{RATE}])"
        f" + rate(netstack_conntrack_early_drop_total{{{JOB}}}[{RATE}]))",
    ),
    (
        "fsync p99",
        "s",
        0.010,
        "max by (instance) (histogram_quantile(0.99, sum by (instance, path, le) "
        f"(rate(netstack_fsync_duration_seconds_bucket{{{JOB}}}[{FSYNC_RATE}]))))",
    ),
    (
        "Overlay MTU mismatches",
        "none",
        1,
        f"sum by (instance) (netstack_overlay_mtu_mismatch{{{JOB}}})",
    ),
    (
        "Overlay drops/s",
        "pps",
        0.001,
        f"sum by (instance) (rate(netstack_overlay_receive_dropped_total{{{JOB}}}[{RATE}])"
        f" + rate(netstack_overlay_transmit_dropped_total{{{JOB}}}[{RATE}]))",
    ),
    (
        "IPVS black holes",
        "none",
        1,
        f"sum by (instance) (netstack_ipvs_services_without_backends{{{JOB}}})",
    ),
    (
        "BGP peers down",
        "none",
        1,
        f"sum by (instance) (netstack_bgp_peer_up{{{JOB}}} == bool 0)",
    ),
    (
        "Collectors failing",
        "none",
        1,
        # == bool: 0 on a healthy node rather than no row; unavailable sources do not count
        f"sum by (instance) ((netstack_scrape_collector_success{{{JOB}}} == bool 0) unless on "
        f"(job, instance, collector) (netstack_collector_available{{{JOB}}} == 0))",
    ),
]

NODE_LINK = (
    f"/d/{NODE_UID}?var-datasource=${{datasource}}&var-job=${{job}}&var-node=${{__data.fields.instance}}"
    + TIME_RANGE
)
# A fleet figure's cell (and its worst-nodes graph) also opens the drill-down of its area.
FLEET_AREAS = {
    "CPU steal": CPU_UID,
    "Max CPU steal": CPU_UID,
    "Squeezes/s": CPU_UID,
    "Backlog drops/s": CPU_UID,
    "Conntrack fill": CONNTRACK_UID,
    "Conntrack failures/s": CONNTRACK_UID,
    "fsync p99": FSYNC_UID,
    "Overlay MTU mismatches": OVERLAY_UID,
    "Overlay drops/s": OVERLAY_UID,
    "IPVS black holes": IPVS_UID,
    "BGP peers down": BGP_UID,
}


def area_link(column: str, node: str) -> list[dict]:
    uid = FLEET_AREAS.get(column)
    if uid is None:
        return []
    return [{"title": f"{AREAS[uid][0]} for this node", "url": dashboard_url(uid, node) + TIME_RANGE}]


def fleet_table() -> table_b.Panel:
    panel = (
        table_b.Panel()
        .title("Every node")
        .description(
            "One row per node: the value each alert watches, red past the alert's threshold "
            "(empty: the node has no such source, e.g. no IPVS or BGP). Click a node for its dashboard."
        )
        .datasource(DATASOURCE)
        .span(24)
        .height(16)
        .with_transformation(dash_m.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dash_m.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        f"Value #{chr(ord('A') + i)}": c[0] for i, c in enumerate(FLEET_COLUMNS)
                    },
                },
            )
        )
        .override_by_name(
            "instance",
            [
                dash_m.DynamicConfigValue(id_val="displayName", value="Node"),
                dash_m.DynamicConfigValue(
                    id_val="links", value=[{"title": "Node dashboard", "url": NODE_LINK}]
                ),
            ],
        )
    )
    for i, (title, unit, red, expr) in enumerate(FLEET_COLUMNS):
        ref = chr(ord("A") + i)
        panel = panel.with_target(
            query(expr, ref=ref).instant().format(prom_b.prometheus.PromQueryFormat.TABLE)
        ).override_by_name(
            title,
            [
                dash_m.DynamicConfigValue(id_val="unit", value=unit),
                dash_m.DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [{"value": None, "color": "green"}, {"value": red, "color": "red"}],
                    },
                ),
                dash_m.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
                *[
                    dash_m.DynamicConfigValue(id_val="links", value=links)
                    for links in [area_link(title, "${__data.fields.instance}")]
                    if links
                ],
            ],
        )
    return panel


def top(title: str, description: str, unit: str, expr: str, threshold: float | None = None) -> ts_b.Panel:
    """Ten worst nodes over time; a click on a series opens that node's dashboard."""
    link = (
        f"/d/{NODE_UID}?var-datasource=${{datasource}}&var-job=${{job}}&var-node=${{__field.labels.instance}}"
        + TIME_RANGE
    )
    links = [dash_b.DashboardLink("Node dashboard").url(link)]
    links += [
        dash_b.DashboardLink(a["title"]).url(a["url"]) for a in area_link(title, "${__field.labels.instance}")
    ]
    return timeseries(
        title, description, unit, (f"topk(10, {expr})", "{{instance}}"), threshold=threshold
    ).data_links(links)


def fleet_dashboard() -> dash_b.Dashboard:
    d = (
        dash_b.Dashboard("netstack: fleet overview")
        .uid(FLEET_UID)
        .description(
            "Every node of one job at once: the figures the netstack alerts watch, worst nodes first; "
            "each node links to its node dashboard."
        )
        .tags(["netstack", "network", "kubernetes"])
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
    )
    d = common_variables(d)
    d = d.with_row(dash_b.Row("Nodes")).with_panel(fleet_table())
    d = d.with_row(dash_b.Row("Worst nodes over time"))
    for title, unit, red, expr in FLEET_COLUMNS:
        d = d.with_panel(top(title, f"The ten nodes with the highest {title.lower()}.", unit, expr, red))
    return d


# --- per-area drill-downs ---------------------------------------------------------------------
# One dashboard per area, for one node, opened from the node dashboard's panels and links. Each
# has the datasource, job, fsync_window and node variables (the links carry the first three and
# the node over) plus a filter of its own where the area has a natural key (CPU, device, address,
# path, peer, reason); a multi-value filter defaults to All (.*), which also matches series
# without that label (e.g. conntrack without per-cpu).


def label_filter(name: str, label: str, metric: str, title: str) -> dash_b.QueryVariable:
    return (
        dash_b.QueryVariable(name)
        .label(title)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}{{{NODE}}}, {label})")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.NATURAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dash_m.VariableOption(text="All", value="$__all", selected=True))
    )


def drilldown(uid: str, title: str, description: str) -> dash_b.Dashboard:
    d = (
        dash_b.Dashboard(f"netstack: {title}")
        .uid(uid)
        .description(description)
        .tags(["netstack", "network", "kubernetes"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .link(link("Node overview", NODE_UID))
        .link(link("Fleet overview", FLEET_UID, node=False))
    )
    for other, (link_title, _) in AREAS.items():
        if other != uid:
            d = d.link(link(link_title, other))
    return common_variables(d).with_variable(node_variable())


def table(
    title: str, description: str, expr: str, hide: tuple[str, ...] = (), width: int = 24
) -> table_b.Panel:
    """The labels of an info series (one row per series), as an instant table."""
    excluded = {name: True for name in ("Time", "Value", "__name__", "job", "instance", *hide)}
    return (
        table_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(6)
        .with_target(query(expr).instant().format(prom_b.prometheus.PromQueryFormat.TABLE))
        .with_transformation(
            dash_m.DataTransformerConfig(id_val="organize", options={"excludeByName": excluded})
        )
    )


def cpu_dashboard() -> dash_b.Dashboard:
    cpu = NODE + ',cpu=~"$cpu"'
    d = drilldown(
        CPU_UID,
        "CPU, softirq and softnet",
        "One node's CPUs: steal and time by mode, network softirqs, softnet backlog and budget "
        "per CPU, and (with ebpf_softirq) how long NET_RX/NET_TX waited to run.",
    ).with_variable(label_filter("cpu", "cpu", "netstack_cpu_seconds_total", "CPU"))
    d = (
        d.with_row(dash_b.Row("Steal and CPU time"))
        .with_panel(
            timeseries(
                "Steal per CPU",
                "Share of each vCPU's time the hypervisor ran something else. "
                "NetstackCPUStealHighPerCPU: over 25% on one CPU.",
                "percentunit",
                (f'rate(netstack_cpu_seconds_total{{{cpu},mode="steal"}}[{RATE}])', "cpu {{cpu}}"),
                threshold=0.25,
            )
        )
        .with_panel(
            timeseries(
                "Time by mode (selected CPUs)",
                "Average share of the selected CPUs by mode, idle left out.",
                "percentunit",
                (
                    f'sum by (mode) (rate(netstack_cpu_seconds_total{{{cpu},mode!="idle"}}[{RATE}]))'
                    f' / scalar(count(netstack_cpu_seconds_total{{{cpu},mode="idle"}}))',
                    "{{mode}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            timeseries(
                "Interrupt time per CPU",
                "Hard and soft interrupt time per CPU: a CPU near 100% softirq is where NET_RX "
                "work piles up (RSS/RPS imbalance).",
                "percentunit",
                (
                    f'sum by (cpu) (rate(netstack_cpu_seconds_total{{{cpu},mode=~"irq|softirq"}}[{RATE}]))',
                    "cpu {{cpu}}",
                ),
            )
        )
        .with_panel(
            timeseries(
                "Implausible readings",
                "Counter values the exporter refused (a CPU's time going backwards, a softirq "
                "count that cannot be): non-zero means the host's counters, not the exporter.",
                "none",
                (f"increase(netstack_cpu_backwards_jumps_total{{{NODE}}}[{RATE}])", "cpu backwards jumps"),
                (f"increase(netstack_cpu_implausible_readings_total{{{NODE}}}[{RATE}])", "cpu implausible"),
                (
                    f"increase(netstack_softirq_implausible_readings_total{{{NODE}}}[{RATE}])",
                    "softirq implausible",
                ),
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Network softirqs"))
        .with_panel(
            timeseries(
                "NET_RX / NET_TX per CPU",
                "Softirq runs per second per CPU (/proc/softirqs).",
                "ops",
                (f"rate(netstack_softirqs_total{{{cpu}}}[{RATE}])", "{{vector}} cpu {{cpu}}"),
            )
        )
        .with_panel(
            timeseries(
                "NET_RX share per CPU",
                "Each CPU's share of the node's NET_RX runs: one CPU far above 1/n carries the "
                "receive work of a single queue or flow.",
                "percentunit",
                (
                    f'sum by (cpu) (rate(netstack_softirqs_total{{{cpu},vector="NET_RX"}}[{RATE}]))'
                    f' / scalar(sum(rate(netstack_softirqs_total{{{NODE},vector="NET_RX"}}[{RATE}])))',
                    "cpu {{cpu}}",
                ),
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Softnet backlog and budget"))
        .with_panel(
            timeseries(
                "Packets processed per CPU",
                "softnet_stat processed: packets NET_RX took from the backlog and NIC queues.",
                "pps",
                (f"rate(netstack_softnet_processed_total{{{cpu}}}[{RATE}])", "cpu {{cpu}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "RPS steered to each CPU",
                "received_rps: packets another CPU handed to this one (RPS/RFS inter-processor "
                "interrupts); flow_limit: packets dropped by the per-flow backlog limit.",
                "pps",
                (f"rate(netstack_softnet_received_rps_total{{{cpu}}}[{RATE}])", "rps cpu {{cpu}}"),
                (f"rate(netstack_softnet_flow_limit_count_total{{{cpu}}}[{RATE}])", "flow limit cpu {{cpu}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Backlog drops per CPU",
                "The CPU's input backlog was full: packets lost (NetstackSoftnetDropping).",
                "pps",
                (f"rate(netstack_softnet_dropped_total{{{cpu}}}[{RATE}])", "cpu {{cpu}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Squeezes per CPU",
                "time_squeeze: NET_RX stopped with work left because it used its budget "
                "(netdev_budget packets or netdev_budget_usecs).",
                "ops",
                (f"rate(netstack_softnet_times_squeezed_total{{{cpu}}}[{RATE}])", "cpu {{cpu}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Backlog length",
                "Packets queued in each CPU's input backlog at scrape time, against "
                "net.core.netdev_max_backlog.",
                "none",
                (f"netstack_softnet_backlog_packets{{{cpu}}}", "cpu {{cpu}}"),
                (f"netstack_softnet_max_backlog_packets{{{NODE}}}", "netdev_max_backlog"),
                width=8,
            )
        )
        .with_panel(
            stat(
                "NET_RX budget (packets)",
                "net.core.netdev_budget: packets one NET_RX run may process.",
                "none",
                f"netstack_softnet_budget_packets{{{NODE}}}",
                [(None, "blue")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "NET_RX budget (time)",
                "net.core.netdev_budget_usecs: time one NET_RX run may take.",
                "s",
                f"netstack_softnet_budget_seconds{{{NODE}}}",
                [(None, "blue")],
                width=4,
            )
        )
    )
    wait = "netstack_softirq_wait_seconds"
    d = (
        d.with_row(dash_b.Row("eBPF: softirq wait and service (ebpf_softirq)"))
        .with_panel(
            timeseries(
                "NET_RX / NET_TX wait p99 and p50",
                "Time from raise to run (NetstackNetRxSoftirqWaitHigh): a starved CPU (a busy real-time task, ksoftirqd "
                "deferred) shows here before packets drop. Per CPU with "
                "--collector.ebpf_softirq.per-cpu; empty when ebpf_softirq is off.",
                "s",
                (
                    histogram_quantile(0.99, wait, "vector, cpu", extra='cpu=~"$cpu"'),
                    "{{vector}} p99 {{cpu}}",
                ),
                (
                    histogram_quantile(0.5, wait, "vector, cpu", extra='cpu=~"$cpu"'),
                    "{{vector}} p50 {{cpu}}",
                ),
                width=8,
            )
        )
        .with_panel(
            heatmap(
                "NET_RX wait distribution",
                "Every raise-to-run wait of NET_RX in the window, all selected CPUs.",
                f'sum by (le) (increase({wait}_bucket{{{cpu},vector="NET_RX"}}[{RATE}]))',
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Handler run time p99",
                "Time one run of the softirq handler took.",
                "s",
                (
                    histogram_quantile(
                        0.99, "netstack_softirq_service_seconds", "vector, cpu", extra='cpu=~"$cpu"'
                    ),
                    "{{vector}} p99 {{cpu}}",
                ),
                width=8,
            )
        )
    )
    return d


def conntrack_dashboard() -> dash_b.Dashboard:
    d = drilldown(
        CONNTRACK_UID,
        "conntrack",
        "One node's connection tracking table: fill, hash table, every statistics counter "
        "(per CPU with --collector.conntrack.per-cpu) and, with by-state, entries per protocol and state.",
    )

    def per_cpu(counter: str) -> str:
        return f"sum by (cpu) (rate(netstack_conntrack_{counter}_total{{{NODE}}}[{RATE}]))"

    d = (
        d.with_row(dash_b.Row("Table"))
        .with_panel(
            stat(
                "Table fill",
                "Entries / nf_conntrack_max (NetstackConntrackTableNearlyFull above 90%).",
                "percentunit",
                f"netstack_conntrack_entries{{{NODE}}} / netstack_conntrack_entries_limit{{{NODE}}}",
                [(None, "green"), (0.75, "orange"), (0.9, "red")],
            )
        )
        .with_panel(
            stat(
                "Entries per hash bucket",
                "Entries / nf_conntrack_buckets: the average chain a lookup walks. Above ~4, "
                "raise the buckets with the limit.",
                "none",
                f"netstack_conntrack_entries{{{NODE}}} / netstack_conntrack_buckets{{{NODE}}}",
                [(None, "green"), (4, "orange"), (8, "red")],
            )
        )
        .with_panel(
            stat(
                "Hash buckets",
                "nf_conntrack_buckets (host-wide).",
                "none",
                f"netstack_conntrack_buckets{{{NODE}}}",
                [(None, "blue")],
            )
        )
        .with_panel(
            stat_b.Panel()
            .title("Source")
            .description("Where the statistics came from: netlink (per-CPU, needs NET_ADMIN) or procfs.")
            .datasource(DATASOURCE)
            .span(6)
            .height(4)
            .with_target(query(f"netstack_conntrack_source_info{{{NODE}}}", "{{source}}"))
            .text_mode(common_m.BigValueTextMode.NAME)
            .graph_mode(common_m.BigValueGraphMode.NONE)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
        )
        .with_panel(
            timeseries(
                "Entries and limit",
                "Entries in the host network namespace's table and nf_conntrack_max.",
                "none",
                (f"netstack_conntrack_entries{{{NODE}}}", "entries"),
                (f"netstack_conntrack_entries_limit{{{NODE}}}", "limit"),
            )
        )
        .with_panel(
            timeseries(
                "Entries by protocol and state",
                "Only with --collector.conntrack.by-state: which kind of entry fills the table "
                "(TIME_WAIT floods, UDP DNS entries, half-open SYN_SENT).",
                "none",
                (
                    f"sum by (protocol, state) (netstack_conntrack_entries_by_state{{{NODE}}})",
                    "{{protocol}} {{state}}",
                ),
                stacked=True,
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Failures per CPU"))
        .with_panel(
            timeseries(
                "insert_failed",
                "Lost insert races (the DNS 5-second delay): NetstackConntrackInsertFailed.",
                "ops",
                (per_cpu("insert_failed"), "cpu {{cpu}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "drop",
                "Packets dropped because no entry could be made: NetstackConntrackDropping.",
                "ops",
                (per_cpu("drop"), "cpu {{cpu}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "early_drop",
                "Unassured entries evicted to make room in a full table.",
                "ops",
                (per_cpu("early_drop"), "cpu {{cpu}}"),
                width=8,
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Other statistics"))
        .with_panel(
            timeseries(
                "Invalid, ICMP errors, restarts",
                "invalid: packets conntrack could not track; error: ICMP errors matching no "
                "connection; search_restart: lookups restarted under a moving chain.",
                "ops",
                (f"sum(rate(netstack_conntrack_invalid_total{{{NODE}}}[{RATE}]))", "invalid"),
                (f"sum(rate(netstack_conntrack_error_total{{{NODE}}}[{RATE}]))", "error"),
                (f"sum(rate(netstack_conntrack_search_restart_total{{{NODE}}}[{RATE}]))", "search_restart"),
            )
        )
        .with_panel(
            timeseries(
                "Races resolved, chains too long",
                "clash_resolve: insert races resolved by reusing the entry (UDP); chain_toolong: "
                "inserts refused because a hash chain was too long (raise the buckets).",
                "ops",
                (f"sum(rate(netstack_conntrack_clash_resolve_total{{{NODE}}}[{RATE}]))", "clash_resolve"),
                (f"sum(rate(netstack_conntrack_chain_toolong_total{{{NODE}}}[{RATE}]))", "chain_toolong"),
            )
        )
        .with_panel(
            timeseries(
                "Inserts and lookups",
                "New entries and tuple lookups that found one (NAT port selection).",
                "ops",
                (f"sum(rate(netstack_conntrack_insert_total{{{NODE}}}[{RATE}]))", "insert"),
                (f"sum(rate(netstack_conntrack_found_total{{{NODE}}}[{RATE}]))", "found"),
                width=24,
            )
        )
    )
    return d


def overlay_dashboard() -> dash_b.Dashboard:
    dev = NODE + ',device=~"$device"'
    d = drilldown(
        OVERLAY_UID,
        "overlay, MTU and netstat",
        "One node's tunnel devices (VXLAN, Geneve, IPIP, WireGuard...): MTU against the underlay, "
        "traffic, drops and errors of the tunnel and of its underlay; and the host's IP/UDP "
        "counters, where fragmentation and encapsulated-datagram errors show.",
    ).with_variable(label_filter("device", "device", "netstack_overlay_mtu_bytes", "Device"))
    d = (
        d.with_row(dash_b.Row("Tunnels and MTU"))
        .with_panel(
            table(
                "Tunnel devices",
                "Kind, VNI, UDP port and underlay of each tunnel device.",
                f"netstack_overlay_info{{{dev}}}",
            )
        )
        .with_panel(
            timeseries(
                "MTU mismatch",
                "1 when MTU + encapsulation overhead exceeds the underlay's MTU "
                "(NetstackOverlayMTUMismatch): full-size packets are dropped or fragmented.",
                "none",
                (f"netstack_overlay_mtu_mismatch{{{dev}}}", "{{device}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Encapsulated size against the underlay",
                "MTU + overhead (the largest frame the tunnel sends) and the underlay's MTU.",
                "bytes",
                (
                    f"netstack_overlay_mtu_bytes{{{dev}}} + netstack_overlay_encapsulation_overhead_bytes{{{dev}}}",
                    "{{device}} MTU + overhead",
                ),
                (f"netstack_overlay_underlay_mtu_bytes{{{dev}}}", "{{device}} underlay MTU"),
                width=8,
                min_zero=False,
            )
        )
        .with_panel(
            stat(
                "Topology stale",
                "1 when the last link dump was interrupted every time and the last complete "
                "topology was served with fresh counters.",
                "none",
                f"max(netstack_overlay_topology_stale{{{NODE}}})",
                [(None, "green"), (1, "orange")],
                width=8,
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Traffic, drops and errors"))
        .with_panel(
            timeseries(
                "Packets",
                "Inner packets through each tunnel.",
                "pps",
                (f"rate(netstack_overlay_receive_packets_total{{{dev}}}[{RATE}])", "{{device}} rx"),
                (f"rate(netstack_overlay_transmit_packets_total{{{dev}}}[{RATE}])", "{{device}} tx"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Drops and errors",
                "vxlan tx drops: no forwarding entry; tx errors: no route to the remote.",
                "pps",
                (f"rate(netstack_overlay_receive_dropped_total{{{dev}}}[{RATE}])", "{{device}} rx dropped"),
                (f"rate(netstack_overlay_transmit_dropped_total{{{dev}}}[{RATE}])", "{{device}} tx dropped"),
                (f"rate(netstack_overlay_receive_errors_total{{{dev}}}[{RATE}])", "{{device}} rx errors"),
                (f"rate(netstack_overlay_transmit_errors_total{{{dev}}}[{RATE}])", "{{device}} tx errors"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Underlay drops and errors",
                "An encapsulated frame larger than the receiving device's MTU is dropped on the "
                "underlay, not on the tunnel (NetstackOverlayUnderlayDropping).",
                "pps",
                *[
                    (
                        f"rate(netstack_overlay_underlay_{kind}_total{{{dev}}}[{RATE}])",
                        "{{device}} underlay " + kind.replace("_", " "),
                    )
                    for kind in ("receive_dropped", "transmit_dropped", "receive_errors", "transmit_errors")
                ],
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Error kinds",
                "The detailed counters: carrier = no route to the remote endpoint, frame/length "
                "= malformed encapsulation, over/fifo/missed = receive resources.",
                "pps",
                *[
                    (
                        f"rate(netstack_overlay_{kind}_errors_total{{{dev}}}[{RATE}])",
                        "{{device}} " + kind.replace("_", " "),
                    )
                    for kind in (
                        "receive_length",
                        "receive_over",
                        "receive_crc",
                        "receive_frame",
                        "receive_fifo",
                        "receive_missed",
                        "transmit_aborted",
                        "transmit_carrier",
                        "transmit_fifo",
                        "transmit_heartbeat",
                        "transmit_window",
                    )
                ],
                width=24,
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Host IP and UDP (netstat)"))
        .with_panel(
            timeseries(
                "Fragmentation",
                "Fragments created and fragmentations that failed (DF set, or IPv6), per family: "
                "an overlay MTU too large shows here on the sending node.",
                "pps",
                (f"rate(netstack_ip_fragments_created_total{{{NODE}}}[{RATE}])", "created {{family}}"),
                (f"rate(netstack_ip_fragment_failures_total{{{NODE}}}[{RATE}])", "failed {{family}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Reassembly and malformed packets",
                "Reassembly failures and timeouts (lost fragments), truncated packets, and "
                "packets dropped by reverse-path filtering (asymmetric routes).",
                "pps",
                (
                    f"rate(netstack_ip_reassembly_failures_total{{{NODE}}}[{RATE}])",
                    "reassembly failed {{family}}",
                ),
                (
                    f"rate(netstack_ip_reassembly_timeouts_total{{{NODE}}}[{RATE}])",
                    "reassembly timeout {{family}}",
                ),
                (f"rate(netstack_ip_truncated_packets_total{{{NODE}}}[{RATE}])", "truncated {{family}}"),
                (
                    f"rate(netstack_ip_reverse_path_filter_drops_total{{{NODE}}}[{RATE}])",
                    "rp_filter {{family}}",
                ),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "UDP errors",
                "VXLAN, Geneve and WireGuard are UDP: buffer errors are datagrams the socket had "
                "no room for, no-port datagrams arrive for a tunnel device that is down.",
                "pps",
                (f"rate(netstack_udp_receive_errors_total{{{NODE}}}[{RATE}])", "receive errors {{family}}"),
                (f"rate(netstack_udp_receive_buffer_errors_total{{{NODE}}}[{RATE}])", "rcvbuf {{family}}"),
                (f"rate(netstack_udp_send_buffer_errors_total{{{NODE}}}[{RATE}])", "sndbuf {{family}}"),
                (f"rate(netstack_udp_checksum_errors_total{{{NODE}}}[{RATE}])", "checksum {{family}}"),
                (f"rate(netstack_udp_no_port_datagrams_total{{{NODE}}}[{RATE}])", "no port {{family}}"),
                width=8,
            )
        )
    )
    return d


def ipvs_dashboard() -> dash_b.Dashboard:
    svc = NODE + ',address=~"$address"'
    service = "{{protocol}} {{address}}:{{port}}"
    d = drilldown(
        IPVS_UID,
        "IPVS",
        "One node's IPVS table (kube-proxy in IPVS mode): services without backends (black holes), "
        "per-service backends and connections, traffic, and the sysctls and kube-ipvs0 addresses "
        "that MetalLB layer 2 and graceful termination depend on.",
    ).with_variable(label_filter("address", "address", "netstack_ipvs_service_backends", "Service address"))
    d = (
        d.with_row(dash_b.Row("Table"))
        .with_panel(
            stat(
                "Services without backends",
                "Their traffic is dropped (NetstackIPVSServicesWithoutBackends).",
                "none",
                f"netstack_ipvs_services_without_backends{{{NODE}}}",
                [(None, "green"), (1, "red")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "Without weighted backends",
                "Every backend at weight 0 (graceful termination): new connections are dropped.",
                "none",
                f"netstack_ipvs_services_without_weighted_backends{{{NODE}}}",
                [(None, "green"), (1, "orange")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "Services",
                "Virtual services in the table.",
                "none",
                f"netstack_ipvs_services{{{NODE}}}",
                [(None, "blue")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "Backends",
                "Real servers over all services.",
                "none",
                f"netstack_ipvs_backends{{{NODE}}}",
                [(None, "blue")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "Backends at weight 0",
                "Draining or disabled backends.",
                "none",
                f"netstack_ipvs_backends_weight_zero{{{NODE}}}",
                [(None, "green"), (1, "orange")],
                width=4,
            )
        )
        .with_panel(
            stat(
                "Series capped",
                "1 when --collector.ipvs.max-series left per-service or per-backend series out "
                "(NetstackIPVSSeriesCapped).",
                "none",
                f"netstack_ipvs_series_capped{{{NODE}}}",
                [(None, "green"), (1, "orange")],
                width=4,
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Per service"))
        .with_panel(
            timeseries(
                "Backends per service",
                "A service at 0 is a black hole.",
                "none",
                (f"netstack_ipvs_service_backends{{{svc}}}", service),
            )
        )
        .with_panel(
            timeseries(
                "Connections per service",
                "Active (established) and inactive (TIME_WAIT, UDP) connections over the service's backends.",
                "none",
                (f"netstack_ipvs_service_connections_active{{{svc}}}", service + " active"),
                (f"netstack_ipvs_service_connections_inactive{{{svc}}}", service + " inactive"),
            )
        )
        .with_panel(
            timeseries(
                "New connections per service",
                "Netlink source only (the procfs table has no per-service counters).",
                "cps",
                (f"rate(netstack_ipvs_service_connections_total{{{svc}}}[{RATE}])", service),
            )
        )
        .with_panel(
            timeseries(
                "Traffic per service",
                "Bytes in and out per service; netlink source only.",
                "Bps",
                (f"rate(netstack_ipvs_service_incoming_bytes_total{{{svc}}}[{RATE}])", service + " in"),
                (f"rate(netstack_ipvs_service_outgoing_bytes_total{{{svc}}}[{RATE}])", service + " out"),
            )
        )
        .with_panel(
            timeseries(
                "Backend weights",
                "Only with --collector.ipvs.backends: each backend's weight (0: no new connections).",
                "none",
                (
                    f"netstack_ipvs_backend_weight{{{svc}}}",
                    service + " -> {{backend_address}}:{{backend_port}}",
                ),
            )
        )
        .with_panel(
            timeseries(
                "Backend connections",
                "Only with --collector.ipvs.backends: active connections per backend.",
                "none",
                (
                    f"netstack_ipvs_backend_connections_active{{{svc}}}",
                    service + " -> {{backend_address}}:{{backend_port}}",
                ),
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Node totals and settings"))
        .with_panel(
            timeseries(
                "Connections and packets",
                "All of IPVS on this node (/proc/net/ip_vs_stats).",
                "ops",
                (f"rate(netstack_ipvs_connections_total{{{NODE}}}[{RATE}])", "connections"),
                (f"rate(netstack_ipvs_incoming_packets_total{{{NODE}}}[{RATE}])", "packets in"),
                (f"rate(netstack_ipvs_outgoing_packets_total{{{NODE}}}[{RATE}])", "packets out"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "IPVS sysctls",
                "net.ipv4.vs.conntrack (1 when kube-proxy needs conntrack for SNAT), "
                "expire_nodest_conn, and the ARP sysctls of strictARP.",
                "none",
                (f"netstack_ipvs_sysctl{{{NODE}}}", "{{sysctl}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Strict ARP and kube-ipvs0",
                "strictARP state (needed by MetalLB layer 2 in IPVS mode), whether kube-ipvs0 "
                "exists, and the service IPs bound to it.",
                "none",
                (f"netstack_ipvs_strict_arp{{{NODE}}}", "strict ARP"),
                (f"netstack_ipvs_kube_ipvs0_present{{{NODE}}}", "kube-ipvs0 present"),
                (f"sum(netstack_ipvs_kube_ipvs0_addresses{{{NODE}}})", "kube-ipvs0 addresses"),
                width=8,
            )
        )
    )
    return d


def fsync_dashboard() -> dash_b.Dashboard:
    path = NODE + ',path=~"$path"'
    dur = "netstack_fsync_duration_seconds"
    d = drilldown(
        FSYNC_UID,
        "fsync",
        "One node's fdatasync latency, measured by the exporter's probe the way etcd's WAL "
        "syncs, per probed directory. Every window is $fsync_window (at least two probe intervals).",
    ).with_variable(label_filter("path", "path", f"{dur}_count", "Directory"))

    def quantile(q: float) -> str:
        return histogram_quantile(q, dur, "path", extra='path=~"$path"', window=FSYNC_RATE)

    d = (
        d.with_row(dash_b.Row("Latency"))
        .with_panel(
            stat(
                "p99 over the window",
                "From the histogram over $fsync_window; etcd wants under 10 ms (NetstackFsyncSlow).",
                "s",
                f"max({quantile(0.99)})",
                [(None, "green"), (0.005, "orange"), (0.01, "red")],
                width=8,
            )
        )
        .with_panel(
            stat(
                "Last probe p99",
                "The 0.99 quantile of the last completed probe, worst directory.",
                "s",
                f'max(netstack_fsync_probe_quantile_seconds{{{path},q="0.99"}})',
                [(None, "green"), (0.005, "orange"), (0.01, "red")],
                width=8,
            )
        )
        .with_panel(
            stat(
                "Since the last success",
                "Seconds since a probe last finished without error, oldest directory "
                "(NetstackFsyncProbeStale above 600 s).",
                "s",
                f"time() - min(netstack_fsync_probe_last_success_timestamp_seconds{{{path}}})",
                [(None, "green"), (300, "orange"), (600, "red")],
                width=8,
            )
        )
        .with_panel(
            heatmap(
                "fdatasync latency",
                "Every timed fdatasync of the selected directories in the window.",
                f"sum by (le) (increase({dur}_bucket{{{path}}}[{FSYNC_RATE}]))",
            )
        )
        .with_panel(
            timeseries(
                "p50 / p90 / p99 per directory",
                "From the histogram; the red line is etcd's 10 ms.",
                "s",
                (quantile(0.5), "p50 {{path}}"),
                (quantile(0.9), "p90 {{path}}"),
                (quantile(0.99), "p99 {{path}}"),
                threshold=0.01,
            )
        )
        .with_panel(
            timeseries(
                "Last probe quantiles",
                "Nearest-rank quantiles of the last completed probe (q=1 is its maximum).",
                "s",
                (f"netstack_fsync_probe_quantile_seconds{{{path}}}", "{{path}} q{{q}}"),
            )
        )
        .with_panel(
            timeseries(
                "Mean latency and syncs per second",
                "Average fdatasync time over the window, and how many the probe timed.",
                "s",
                (
                    f"sum by (path) (rate({dur}_sum{{{path}}}[{FSYNC_RATE}]))"
                    f" / sum by (path) (rate({dur}_count{{{path}}}[{FSYNC_RATE}]))",
                    "mean {{path}}",
                ),
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Probe health"))
        .with_panel(
            timeseries(
                "Probe errors by reason",
                "Failed probes over the window (NetstackFsyncProbeFailing): no_space, "
                "read_only, timeout, permission_denied...",
                "none",
                (
                    f"increase(netstack_fsync_probe_errors_total{{{path}}}[{FSYNC_RATE}])",
                    "{{path}} {{reason}}",
                ),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Probes skipped",
                "Rounds skipped because the previous probe had not returned from the kernel: "
                "a disk stalled longer than the interval.",
                "none",
                (f"increase(netstack_fsync_probes_skipped_total{{{path}}}[{FSYNC_RATE}])", "{{path}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Bytes written by the probe",
                "What the probe costs the disk (application bytes).",
                "Bps",
                (f"rate(netstack_fsync_written_bytes_total{{{path}}}[{FSYNC_RATE}])", "{{path}}"),
                width=8,
            )
        )
    )
    return d


def bgp_dashboard() -> dash_b.Dashboard:
    peer = NODE + ',peer=~"$peer"'
    d = drilldown(
        BGP_UID,
        "BGP",
        "One node's BIRD (Calico): whether it answers, every BGP peer's state, last change and "
        "BIRD's reason, and the routes exchanged.",
    ).with_variable(label_filter("peer", "peer", "netstack_bgp_peer_up", "Peer"))
    d = (
        d.with_row(dash_b.Row("Daemon and peers"))
        .with_panel(
            stat(
                "Peers not Established",
                "NetstackBGPPeerNotEstablished fires after 5 minutes.",
                "none",
                f'sum(netstack_bgp_peers{{{NODE},state!="Established"}})',
                [(None, "green"), (1, "red")],
                width=8,
            )
        )
        .with_panel(
            stat(
                "BIRD answering",
                "1 when every BIRD control socket answers (bird.ctl, bird6.ctl).",
                "none",
                f"min(netstack_bird_up{{{NODE}}})",
                [(None, "red"), (1, "green")],
                width=8,
            )
        )
        .with_panel(
            stat(
                "Per-peer series capped",
                "1 when there are more peers than --collector.bgp.max-peers: only the counts "
                "by state are exported.",
                "none",
                f"netstack_bgp_peer_series_capped{{{NODE}}}",
                [(None, "green"), (1, "orange")],
                width=8,
            )
        )
        .with_panel(table("BIRD", "Version per address family's daemon.", f"netstack_bird_info{{{NODE}}}"))
        .with_panel(
            table(
                "Peers",
                "Every peer's BGP state and BIRD's info text (the last error, e.g. Connection refused).",
                f"netstack_bgp_peer_info{{{peer}}}",
            )
        )
        .with_panel(
            timeseries(
                "Peers by state",
                "Peers per BGP state and type (mesh, node-specific, global).",
                "none",
                (f"sum by (state, type) (netstack_bgp_peers{{{NODE}}}) > 0", "{{type}} {{state}}"),
                stacked=True,
            )
        )
        .with_panel(
            timeseries(
                "Session up",
                "1 while the session is Established.",
                "none",
                (f"netstack_bgp_peer_up{{{peer}}}", "{{peer}} {{family}}"),
            )
        )
    )
    d = (
        d.with_row(dash_b.Row("Routes and changes"))
        .with_panel(
            timeseries(
                "Routes imported",
                "Routes learned from each peer: a drop to 0 with the session up is a peer "
                "that stopped advertising (its export filter, its own IPAM blocks).",
                "none",
                (f"netstack_bgp_peer_imported_routes{{{peer}}}", "{{peer}} {{family}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Routes exported",
                "Routes sent to each peer.",
                "none",
                (f"netstack_bgp_peer_exported_routes{{{peer}}}", "{{peer}} {{family}}"),
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Since the last state change",
                "Seconds since each session last changed state: a flapping peer keeps this low.",
                "s",
                (
                    f"time() - netstack_bgp_peer_last_change_timestamp_seconds{{{peer}}}",
                    "{{peer}} {{family}}",
                ),
                width=8,
            )
        )
    )
    return d


def drops_dashboard() -> dash_b.Dashboard:
    reason = NODE + ',reason=~"$reason"'
    d = drilldown(
        DROPS_UID,
        "eBPF drops",
        "Packets the kernel dropped on one node, by the kernel's own drop reason (ebpf_drops, "
        "skb:kfree_skb, all network namespaces), beside the counters that see the same drops.",
    ).with_variable(label_filter("reason", "reason", "netstack_skb_drops_total", "Reason"))
    d = (
        d.with_row(dash_b.Row("Drops by kernel reason"))
        .with_panel(
            stat(
                "Drops per second",
                "All selected reasons. Empty when ebpf_drops is off.",
                "pps",
                f"sum(rate(netstack_skb_drops_total{{{reason}}}[{RATE}]))",
                [(None, "blue")],
                width=8,
            )
        )
        .with_panel(
            stat(
                "Collector",
                "1 when ebpf_drops is enabled and its program is attached; 0: unavailable "
                "(the exporter's landing page says why).",
                "none",
                f'netstack_collector_available{{{NODE},collector="ebpf_drops"}}',
                [(None, "red"), (1, "green")],
                width=8,
            )
        )
        .with_panel(
            stat(
                "Reasons seen",
                "Distinct drop reasons with drops in the window.",
                "none",
                f"count(rate(netstack_skb_drops_total{{{reason}}}[{RATE}]) > 0) or vector(0)",
                [(None, "blue")],
                width=8,
            )
        )
        .with_panel(
            timeseries(
                "Top reasons",
                "The ten reasons with the most drops (NOT_SPECIFIED: callers that give none).",
                "pps",
                (
                    f"topk(10, sum by (reason) (rate(netstack_skb_drops_total{{{reason}}}[{RATE}])))",
                    "{{reason}}",
                ),
                stacked=True,
                width=16,
            )
        )
        .with_panel(
            table_b.Panel()
            .title("Drops over the time range")
            .description("Every selected reason, most drops first, over the dashboard's time range.")
            .datasource(DATASOURCE)
            .span(8)
            .height(8)
            .with_target(
                query(
                    f"sort_desc(sum by (reason) (increase(netstack_skb_drops_total{{{reason}}}[$__range])))"
                )
                .instant()
                .format(prom_b.prometheus.PromQueryFormat.TABLE)
            )
            .with_transformation(
                dash_m.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
            )
        )
    )
    d = d.with_row(dash_b.Row("The same drops, as other counters see them")).with_panel(
        timeseries(
            "Drop counters of the other collectors",
            "Backlog drops (softnet), conntrack drops, tunnel drops and UDP buffer errors: "
            "the reasons above tell which of them, or what else, dropped.",
            "pps",
            (f"sum(rate(netstack_softnet_dropped_total{{{NODE}}}[{RATE}]))", "softnet backlog"),
            (f"sum(rate(netstack_conntrack_drop_total{{{NODE}}}[{RATE}]))", "conntrack"),
            (
                f"sum(rate(netstack_overlay_receive_dropped_total{{{NODE}}}[{RATE}]))"
                f" + sum(rate(netstack_overlay_transmit_dropped_total{{{NODE}}}[{RATE}]))",
                "tunnels",
            ),
            (f"sum(rate(netstack_udp_receive_buffer_errors_total{{{NODE}}}[{RATE}]))", "udp rcvbuf"),
            width=24,
        )
    )
    return d


DASHBOARDS = {
    "netstack-node.json": node_dashboard,
    "netstack-fleet.json": fleet_dashboard,
    "netstack-cpu.json": cpu_dashboard,
    "netstack-conntrack.json": conntrack_dashboard,
    "netstack-overlay.json": overlay_dashboard,
    "netstack-ipvs.json": ipvs_dashboard,
    "netstack-fsync.json": fsync_dashboard,
    "netstack-bgp.json": bgp_dashboard,
    "netstack-drops.json": drops_dashboard,
}


def encode(builder) -> dict:
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def link_panels_to_areas(model: dict) -> None:
    """On the node dashboard every panel links to the drill-down of its row's area (the row
    builder cannot take links for the panels it holds, so they are added here)."""
    row = ""
    for panel in model["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        targets = [(uid, title) for uid, (title, rows) in AREAS.items() if row.startswith(rows)]
        if targets:
            panel["links"] = [encode(link(f"{title} (drill-down)", uid)) for uid, title in targets]


def render(builder: dash_b.Dashboard) -> str:
    model = encode(builder)
    # The builder leaves ids unset or 0; Grafana needs them unique to link, edit and view panels.
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
    if model["uid"] == NODE_UID:
        link_panels_to_areas(model)
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def outputs() -> dict[Path, str]:
    out = {}
    for name, make in DASHBOARDS.items():
        text = render(make())
        out[ROOT / "dashboards" / name] = text
        out[CHART_FILES / "dashboards" / name] = text
    out[CHART_FILES / "netstack.rules.yml"] = (ROOT / "alerts" / "netstack.rules.yml").read_text()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run dashboards/generate.py): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
