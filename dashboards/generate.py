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
        .link(
            dash_b.DashboardLink("Fleet overview")
            .type(dash_m.DashboardLinkType.LINK)
            .url(f"/d/{FLEET_UID}?var-datasource=${{datasource}}&var-job=${{job}}")
        )
    )
    d = common_variables(d).with_variable(
        dash_b.QueryVariable("node")
        .label("Node")
        .datasource(DATASOURCE)
        .query(f"label_values(netstack_scrape_collector_success{{{JOB}}}, instance)")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
    )

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
)


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
            ],
        )
    return panel


def top(title: str, description: str, unit: str, expr: str, threshold: float | None = None) -> ts_b.Panel:
    """Ten worst nodes over time; a click on a series opens that node's dashboard."""
    link = (
        f"/d/{NODE_UID}?var-datasource=${{datasource}}&var-job=${{job}}&var-node=${{__field.labels.instance}}"
    )
    return timeseries(
        title, description, unit, (f"topk(10, {expr})", "{{instance}}"), threshold=threshold
    ).data_links([dash_b.DashboardLink("Node dashboard").url(link)])


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


DASHBOARDS = {"netstack-node.json": node_dashboard, "netstack-fleet.json": fleet_dashboard}


def render(builder: dash_b.Dashboard) -> str:
    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    # The builder leaves ids unset or 0; Grafana needs them unique to link, edit and view panels.
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
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
