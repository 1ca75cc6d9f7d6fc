"""The field guide as verdicts: one check per failure mode, over two readings of the collectors.

`netstack-exporter check` and the landing page both take two collections some seconds apart and
hand them to evaluate(). A check reads the metrics of its collectors (by name, as the exporter
serves them), compares them with a threshold and says ok / warn / fail, or skip with the reason
when its collectors are off, unavailable or failing. The thresholds are those of the alert rules
(alerts/netstack.rules.yml): THRESHOLDS names the rule each one comes from, and a test holds the
two together. Checks without a rule say so (alert None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .metrics import Metric

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)

Series = list[tuple[dict[str, str], float]]


@dataclass(frozen=True)
class Threshold:
    alert: str | None  # the alert rule with the same threshold; None for a check-only threshold
    value: float
    crossed: str  # the status when the threshold is crossed: warn or fail (the rule's severity)
    op: str = ">"  # the rule's comparison: ">" (value above the threshold) or "==" (a 0/1 state)

    def is_crossed(self, value: float) -> bool:
        return value > self.value if self.op == ">" else value == self.value


# Severity of the rule -> status of the check: critical fails, warning and info warn.
# tests/unit/test_check_thresholds.py holds each entry to its rule in alerts/netstack.rules.yml.
THRESHOLDS: dict[str, Threshold] = {
    "steal_node": Threshold("NetstackCPUStealHigh", 0.10, WARN),
    "steal_cpu": Threshold("NetstackCPUStealHighPerCPU", 0.25, WARN),
    "softirq_share": Threshold(None, 0.50, WARN),
    "softnet_dropped": Threshold("NetstackSoftnetDropping", 0, WARN),
    "softnet_squeezed": Threshold("NetstackSoftnetSqueezed", 1, WARN),
    "conntrack_fill": Threshold("NetstackConntrackTableNearlyFull", 0.90, WARN),
    "conntrack_insert_failed": Threshold("NetstackConntrackInsertFailed", 0, WARN),
    "conntrack_dropping": Threshold("NetstackConntrackDropping", 0, FAIL),
    "ipvs_without_backends": Threshold("NetstackIPVSServicesWithoutBackends", 0, WARN),
    "strict_arp_off": Threshold("NetstackIPVSStrictARPOff", 0, WARN, "=="),
    "overlay_mtu_mismatch": Threshold("NetstackOverlayMTUMismatch", 1, WARN, "=="),
    "overlay_dropping": Threshold("NetstackOverlayDropping", 0, WARN),
    "fsync_p99": Threshold("NetstackFsyncSlow", 0.010, WARN),
    "bgp_peer_down": Threshold("NetstackBGPPeerNotEstablished", 0, WARN, "=="),
    "shared_kernel": Threshold("NetstackSharedKernelNode", 1, WARN, "=="),
    "collector_failing": Threshold("NetstackCollectorFailing", 0, WARN, "=="),
    "softirq_wait_p99": Threshold("NetstackNetRxSoftirqWaitHigh", 0.001, WARN),
}


@dataclass
class Verdict:
    check: str  # stable id, e.g. "cpu.steal_per_cpu"
    title: str
    status: str
    value: str = ""  # what was measured, for people
    threshold: str = ""
    why: str = ""  # why it matters
    action: str = ""  # what to do
    details: list[str] = field(default_factory=list)  # e.g. every CPU over the threshold

    def as_dict(self) -> dict:
        return {
            "check": self.check,
            "title": self.title,
            "status": self.status,
            "value": self.value,
            "threshold": self.threshold,
            "why": self.why,
            "action": self.action,
            "details": self.details,
        }


# The metric families the checks read (family names, without _total/_bucket): a running exporter
# keeps only these from its recent collections for the landing page.
FAMILIES = frozenset(
    {
        "netstack_cpu_seconds",
        "netstack_softnet_dropped",
        "netstack_softnet_times_squeezed",
        "netstack_conntrack_entries",
        "netstack_conntrack_entries_limit",
        "netstack_conntrack_drop",
        "netstack_conntrack_insert_failed",
        "netstack_conntrack_early_drop",
        "netstack_ipvs_services",
        "netstack_ipvs_services_without_backends",
        "netstack_kernel_module_loaded",
        "netstack_ipvs_sysctl",
        "netstack_ipvs_strict_arp",
        "netstack_ipvs_kube_ipvs0_present",
        "netstack_overlay_mtu_mismatch",
        "netstack_overlay_receive_dropped",
        "netstack_overlay_transmit_dropped",
        "netstack_fsync_probe_quantile_seconds",
        "netstack_bgp_peer_up",
        "netstack_bgp_peers",
        "netstack_virtualization_info",
        "netstack_kernel_modules_loadable",
        "netstack_softirq_wait_seconds",
        "netstack_softirq_service_seconds",
    }
)


def flatten(families: Iterable[Metric], only: frozenset[str] | None = None) -> dict[str, Series]:
    """Sample name -> [(labels, value)] of a collection's families (those named in `only`)."""
    out: dict[str, Series] = {}
    for family in families:
        if only is not None and family.name not in only:
            continue
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


@dataclass
class Readings:
    """Two readings `seconds` apart, and the state of each collector in the second one."""

    before: dict[str, Series]
    after: dict[str, Series]
    seconds: float
    # collector -> "" when its last collection succeeded, else why not (disabled, unavailable, failing)
    problems: dict[str, str]
    # the check's own etcd-pattern fsync probe (path, syncs, p50, p99, max), when one ran
    fsync: dict | None = None

    def latest(self, name: str) -> Series:
        return self.after.get(name, [])

    def value(self, name: str, **labels: str) -> float | None:
        for have, value in self.latest(name):
            if all(have.get(k) == v for k, v in labels.items()):
                return value
        return None

    def rates(self, name: str) -> Series:
        """Per-second increase of each series present in both readings (a reset counts from 0)."""
        if self.seconds <= 0:
            return []
        before = {_key(labels): value for labels, value in self.before.get(name, [])}
        out = []
        for labels, value in self.after.get(name, []):
            old = before.get(_key(labels))
            if old is not None:
                out.append((labels, (value - old if value >= old else value) / self.seconds))
        return out

    def rate_by(self, name: str, label: str) -> dict[str, float]:
        summed: dict[str, float] = {}
        for labels, rate in self.rates(name):
            summed[labels.get(label, "")] = summed.get(labels.get(label, ""), 0.0) + rate
        return summed


def _key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


class Skip(Exception):
    """A check cannot say anything here; the message says why."""


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    collector: str
    why: str
    action: str
    run: Callable[[Readings], tuple[str, str, str, list[str]]]  # status, value, threshold, details
    # Runs while its collector is unavailable (what is absent is the answer: no IPVS table).
    when_unavailable: bool = False


CHECKS: list[Check] = []


def check(id: str, title: str, collector: str, why: str, action: str, when_unavailable: bool = False):
    def register(fn):
        CHECKS.append(Check(id, title, collector, why, action, fn, when_unavailable))
        return fn

    return register


def evaluate(readings: Readings) -> list[Verdict]:
    """One verdict per check; a check whose collector is off, unavailable or failing is skip,
    with the reason as its value."""
    verdicts = []
    for c in CHECKS:
        verdict = Verdict(c.id, c.title, SKIP, why=c.why, action=c.action)
        problem = readings.problems.get(c.collector, f"collector {c.collector} not enabled")
        if problem and not (c.when_unavailable and problem.startswith("unavailable")):
            verdict.value = f"{c.collector}: {problem}"
        else:
            try:
                verdict.status, verdict.value, verdict.threshold, verdict.details = c.run(readings)
            except Skip as e:
                verdict.value = str(e) if readings.seconds > 0 else "waiting for a second collection"
        verdicts.append(verdict)
    return verdicts


def _crossed(key: str, value: float) -> str:
    t = THRESHOLDS[key]
    return t.crossed if t.is_crossed(value) else OK


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _worst_per(series: dict[str, float], key: str, unit: Callable[[float], str], subject: str):
    """Status, value and details of a per-CPU (or per-device) check: the worst one decides."""
    if not series:
        raise Skip("no data in both readings")
    worst = max(series, key=lambda k: series[k])
    over = [
        f"{subject} {k}: {unit(v)}"
        for k, v in sorted(series.items(), key=lambda kv: -kv[1])
        if THRESHOLDS[key].is_crossed(v)
    ]
    return (
        _crossed(key, series[worst]),
        f"worst {subject} {worst}: {unit(series[worst])}",
        f"> {unit(THRESHOLDS[key].value)}",
        over,
    )


# --- CPU ----------------------------------------------------------------------------------------


def _steal_by_cpu(r: Readings) -> dict[str, float]:
    return {
        labels["cpu"]: rate
        for labels, rate in r.rates("netstack_cpu_seconds_total")
        if labels.get("mode") == "steal"
    }


@check(
    "cpu.steal_node",
    "CPU steal, node average",
    "cpu",
    "Time the hypervisor ran other guests while this node had work: every latency on the node "
    "(softirq, kubelet, etcd) grows, and nothing inside the guest can fix it.",
    "Compare with softnet squeezes and fsync latency; ask the provider, or move the workload.",
)
def _steal_node(r: Readings):
    steal = _steal_by_cpu(r)
    if not steal:
        raise Skip("no CPU readings")
    mean = sum(steal.values()) / len(steal)
    return _crossed("steal_node", mean), _pct(mean), f"> {_pct(THRESHOLDS['steal_node'].value)}", []


@check(
    "cpu.steal_per_cpu",
    "CPU steal, per CPU",
    "cpu",
    "One starved vCPU that handles NIC interrupts or RPS delays NET_RX for every flow hashed to "
    "it, even when the node average looks fine.",
    "See which IRQs and RPS masks point at that CPU (/proc/interrupts, rps_cpus).",
)
def _steal_cpu(r: Readings):
    return _worst_per(_steal_by_cpu(r), "steal_cpu", _pct, "cpu")


@check(
    "softirq.share",
    "Softirq share of CPU time, per CPU",
    "cpu",
    "A CPU that spends most of its time in softirqs has little left for the processes on it, and "
    "more NET_RX work queues behind it.",
    "Spread receive work (RSS queues, RPS, irqbalance); look for a packet flood on that CPU.",
)
def _softirq_share(r: Readings):
    """NET_RX's own share where the eBPF softirq collector times it per CPU; else every
    softirq vector's (the kernel accounts softirq time per CPU only as one sum)."""
    per_cpu: dict[str, float] = {}
    total: dict[str, float] = {}
    for labels, rate in r.rates("netstack_cpu_seconds_total"):
        total[labels["cpu"]] = total.get(labels["cpu"], 0.0) + rate
        if labels.get("mode") == "softirq":
            per_cpu[labels["cpu"]] = rate
    net_rx = {
        labels["cpu"]: rate
        for labels, rate in r.rates("netstack_softirq_service_seconds_sum")
        if labels.get("vector") == "NET_RX" and "cpu" in labels
    }
    source = "all softirq vectors, /proc/stat"
    if net_rx:
        per_cpu, source = net_rx, "NET_RX, eBPF"
    share = {cpu: per_cpu.get(cpu, 0.0) / t for cpu, t in total.items() if t > 0}
    if total and not share:
        raise Skip("no CPU time counted between the two readings")
    status, value, threshold, details = _worst_per(share, "softirq_share", _pct, "cpu")
    return status, f"{value} ({source})", threshold, details


# --- softnet ------------------------------------------------------------------------------------


@check(
    "softnet.backlog_drops",
    "Packets dropped at the per-CPU input backlog",
    "softirq",
    "The backlog was full: real packet loss before any socket or firewall sees the packet.",
    "Raise net.core.netdev_max_backlog; check steal and softirq time on that CPU and how RX work is spread.",
)
def _backlog_drops(r: Readings):
    return _worst_per(
        r.rate_by("netstack_softnet_dropped_total", "cpu"), "softnet_dropped", lambda v: f"{v:.2f}/s", "cpu"
    )


@check(
    "softnet.squeezes",
    "NET_RX runs out of budget (time_squeeze)",
    "softirq",
    "net_rx_action stopped with work left: the budget (netdev_budget, netdev_budget_usecs) is too "
    "small for the load, or the CPU is starved. Packets wait in ring buffers meanwhile.",
    "Check steal on the node; raise netdev_budget / netdev_budget_usecs; NIC rx_missed errors.",
)
def _squeezes(r: Readings):
    return _worst_per(
        r.rate_by("netstack_softnet_times_squeezed_total", "cpu"),
        "softnet_squeezed",
        lambda v: f"{v:.2f}/s",
        "cpu",
    )


# --- conntrack ----------------------------------------------------------------------------------


@check(
    "conntrack.fill",
    "Conntrack table fill",
    "conntrack",
    "A full table drops new connections silently; they look like random timeouts.",
    "Find the dominant state (conntrack -L); raise nf_conntrack_max if the load is legitimate.",
)
def _conntrack_fill(r: Readings):
    entries = r.value("netstack_conntrack_entries")
    limit = r.value("netstack_conntrack_entries_limit")
    if entries is None or not limit:
        raise Skip("no conntrack count or limit")
    fill = entries / limit
    return (
        _crossed("conntrack_fill", fill),
        f"{_pct(fill)} ({entries:.0f} of {limit:.0f})",
        f"> {_pct(THRESHOLDS['conntrack_fill'].value)}",
        [],
    )


def _rate_sum(r: Readings, name: str) -> float | None:
    rates = r.rates(name)
    return sum(v for _, v in rates) if rates else None


@check(
    "conntrack.insert_failed",
    "Conntrack insert failures (the DNS 5 s race)",
    "conntrack",
    "Two packets of one new flow raced through NAT on different CPUs and the second was dropped: "
    "Kubernetes' 'DNS lookups take 5 seconds'.",
    "resolv.conf 'options single-request-reopen' or use-vc, NodeLocal DNSCache, a 5.0+ kernel.",
)
def _insert_failed(r: Readings):
    rate = _rate_sum(r, "netstack_conntrack_insert_failed_total")
    if rate is None:
        raise Skip("no insert_failed counter in both readings")
    return _crossed("conntrack_insert_failed", rate), f"{rate:.2f}/s", "> 0/s", []


@check(
    "conntrack.drops",
    "Conntrack drops because the table is full",
    "conntrack",
    "The table is full: new connections are refused, or unreplied entries are evicted early.",
    "Compare entries with nf_conntrack_max; raise it or shorten timeouts.",
)
def _conntrack_drops(r: Readings):
    # The kernel counts every insert_failed packet in drop too: those are the race, not a full table.
    drop = _rate_sum(r, "netstack_conntrack_drop_total")
    if drop is None:
        raise Skip("no drop counter in both readings")
    insert_failed = _rate_sum(r, "netstack_conntrack_insert_failed_total") or 0.0
    early = _rate_sum(r, "netstack_conntrack_early_drop_total") or 0.0
    full = max(0.0, drop - insert_failed) + early
    return (
        _crossed("conntrack_dropping", full),
        f"{full:.2f}/s",
        "> 0/s (drop − insert_failed + early_drop)",
        [],
    )


# --- IPVS (kube-proxy) --------------------------------------------------------------------------


def _ipvs_mode(r: Readings) -> bool:
    return (r.value("netstack_ipvs_services") or 0) > 0 or (
        r.value("netstack_ipvs_kube_ipvs0_present") or 0
    ) > 0


@check(
    "ipvs.mode",
    "kube-proxy mode",
    "ipvs",
    "IPVS mode needs the ip_vs modules and a few sysctls; iptables mode needs neither.",
    "Nothing to do: informational.",
    when_unavailable=True,
)
def _proxy_mode(r: Readings):
    if r.problems.get("ipvs"):
        return OK, "iptables or nftables mode (no IPVS table)", "", []
    services = r.value("netstack_ipvs_services") or 0
    return OK, f"IPVS, {services:.0f} virtual services", "", []


@check(
    "ipvs.modules",
    "IPVS kernel modules",
    "ipvs",
    "Without ip_vs and its schedulers kube-proxy in IPVS mode cannot program services.",
    "Load ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh and nf_conntrack (modules-load.d).",
    when_unavailable=True,
)
def _ipvs_modules(r: Readings):
    modules = {labels.get("module", ""): v for labels, v in r.latest("netstack_kernel_module_loaded")}
    if not modules:
        raise Skip("module state not reported")
    missing = sorted(m for m, v in modules.items() if not v)
    if not missing:
        return OK, "all loaded: " + ", ".join(sorted(modules)), "all loaded in IPVS mode", []
    if not _ipvs_mode(r):
        return (
            OK,
            "not loaded: " + ", ".join(missing) + " (not needed: no IPVS in use)",
            "all loaded in IPVS mode",
            [],
        )
    return FAIL, "not loaded: " + ", ".join(missing), "all loaded in IPVS mode", []


# What kube-proxy's IPVS mode sets and needs (it writes them at start; a node tuned back by hand or
# by another agent breaks it): conntrack for the IPVS traffic it masquerades, and dropping the
# connections of a removed backend at once instead of letting clients hang on it.
IPVS_SYSCTLS = {"net.ipv4.vs.conntrack": 1, "net.ipv4.vs.expire_nodest_conn": 1}


@check(
    "ipvs.sysctls",
    "IPVS sysctls kube-proxy relies on",
    "ipvs",
    "Without net.ipv4.vs.conntrack=1 the traffic kube-proxy masquerades through IPVS is not "
    "tracked and replies are lost; without expire_nodest_conn=1 clients of a removed backend "
    "hang until their timeout.",
    "sysctl -w net.ipv4.vs.conntrack=1 net.ipv4.vs.expire_nodest_conn=1 (kube-proxy sets them at "
    "start: find what reset them).",
    when_unavailable=True,
)
def _ipvs_sysctls(r: Readings):
    wanted = ", ".join(f"{name}={value}" for name, value in IPVS_SYSCTLS.items())
    if not _ipvs_mode(r):
        return OK, "not needed: no IPVS in use", "", []
    values = {labels.get("sysctl", ""): v for labels, v in r.latest("netstack_ipvs_sysctl")}
    if not any(name in values for name in IPVS_SYSCTLS):
        raise Skip("IPVS sysctls not reported")
    wrong = [
        f"{name}={values[name]:.0f}"
        for name, want in IPVS_SYSCTLS.items()
        if name in values and values[name] != want
    ]
    return (WARN if wrong else OK), (", ".join(wrong) if wrong else "as kube-proxy sets them"), wanted, wrong


@check(
    "ipvs.without_backends",
    "IPVS services without backends (black holes)",
    "ipvs",
    "Traffic to a virtual service without a backend is dropped: a black hole for that Service.",
    "kubectl get endpoints for the service; check readiness probes of its pods.",
)
def _without_backends(r: Readings):
    n = r.value("netstack_ipvs_services_without_backends")
    if n is None:
        raise Skip("no IPVS table")
    total = r.value("netstack_ipvs_services")
    of = f" of {total:.0f}" if total is not None else ""
    return _crossed("ipvs_without_backends", n), f"{n:.0f}{of} virtual services", "> 0", []


@check(
    "ipvs.strict_arp",
    "Strict ARP for MetalLB layer 2 with IPVS",
    "strict_arp",
    "With kube-proxy in IPVS mode every node answers ARP for every service IP unless strictARP "
    "is on; MetalLB's layer-2 announcements then flap between nodes.",
    "Set strictARP: true in kube-proxy's configuration (arp_ignore=1, arp_announce=2).",
)
def _strict_arp(r: Readings):
    strict = r.value("netstack_ipvs_strict_arp")
    if strict is None:
        raise Skip("strict ARP state not reported")
    if not r.value("netstack_ipvs_kube_ipvs0_present"):
        return OK, "no kube-ipvs0 device (not IPVS mode)", "", []
    return _crossed("strict_arp_off", strict), ("on" if strict else "off"), "on when kube-ipvs0 exists", []


# --- overlay ------------------------------------------------------------------------------------


@check(
    "overlay.mtu",
    "Overlay MTU fits its underlay",
    "overlay",
    "A tunnel MTU above the underlay's MTU minus the encapsulation overhead fragments or drops "
    "every large packet: small requests work, large responses hang.",
    "Lower the CNI's MTU (Calico veth_mtu, Flannel, Cilium) to underlay MTU minus the overhead.",
)
def _overlay_mtu(r: Readings):
    threshold = THRESHOLDS["overlay_mtu_mismatch"]
    mismatched = [
        labels.get("device", "")
        for labels, v in r.latest("netstack_overlay_mtu_mismatch")
        if threshold.is_crossed(v)
    ]
    devices = len(r.latest("netstack_overlay_mtu_mismatch"))
    if not devices:
        return OK, "no overlay devices", "", []
    status = threshold.crossed if mismatched else OK
    return (
        status,
        (f"mismatch on {', '.join(mismatched)}" if mismatched else f"{devices} devices fit"),
        "no mismatch",
        mismatched,
    )


@check(
    "overlay.drops",
    "Overlay devices dropping",
    "overlay",
    "Drops on a tunnel device are lost pod-to-pod packets.",
    "Check the underlay's counters and the MTU check above; ethtool -S on the underlay.",
)
def _overlay_drops(r: Readings):
    per_device: dict[str, float] = {}
    for name in ("netstack_overlay_receive_dropped_total", "netstack_overlay_transmit_dropped_total"):
        for device, rate in r.rate_by(name, "device").items():
            per_device[device] = per_device.get(device, 0.0) + rate
    if not per_device:
        return OK, "no overlay devices", "", []
    return _worst_per(per_device, "overlay_dropping", lambda v: f"{v:.2f}/s", "device")


# --- disk ---------------------------------------------------------------------------------------


@check(
    "fsync.p99",
    "fdatasync p99 in etcd's WAL pattern",
    "fsync",
    "etcd needs its WAL fdatasync p99 under 10 ms; slower disks cause leader elections and API timeouts.",
    "Move etcd (or the node's busy volumes) to a faster disk; look for noisy neighbours.",
)
def _fsync_p99(r: Readings):
    p99 = [(labels.get("path", ""), v) for labels, v in r.latest("netstack_check_fsync_p99_seconds")]
    if not p99:
        p99 = [
            (labels.get("path", ""), v)
            for labels, v in r.latest("netstack_fsync_probe_quantile_seconds")
            if labels.get("q") == "0.99"
        ]
    if not p99:
        raise Skip("no fsync probe result yet")
    path, worst = max(p99, key=lambda pv: pv[1])
    return (
        _crossed("fsync_p99", worst),
        f"{worst * 1e3:.2f} ms on {path}",
        f"> {THRESHOLDS['fsync_p99'].value * 1e3:.0f} ms",
        [],
    )


# --- BGP, virtualization, eBPF ------------------------------------------------------------------


@check(
    "bgp.peers",
    "Calico BGP peers Established",
    "bgp",
    "A BGP session that is not Established withdraws the routes to that node's pods.",
    "birdc show protocols all; check the peer's reachability (TCP 179) and its BIRD.",
)
def _bgp(r: Readings):
    peers = r.latest("netstack_bgp_peer_up")
    if not peers:
        counts = r.latest("netstack_bgp_peers")
        if not counts:
            raise Skip("BIRD answers no BGP peers")
        n = sum(v for labels, v in counts if labels.get("state") != "Established")
        return (
            (THRESHOLDS["bgp_peer_down"].crossed if n else OK),
            f"{n:.0f} not Established",
            "all Established",
            [],
        )
    down = [
        f"{labels.get('peer', '')} ({labels.get('family', '')})"
        for labels, v in peers
        if THRESHOLDS["bgp_peer_down"].is_crossed(v)
    ]
    return (
        (THRESHOLDS["bgp_peer_down"].crossed if down else OK),
        (f"{len(down)} of {len(peers)} not Established" if down else f"{len(peers)} Established"),
        "all Established",
        down,
    )


@check(
    "virtualization.kernel",
    "Own kernel, modules loadable",
    "virtualization",
    "OpenVZ/LXC 'VPS' share the host's kernel, and some kernels cannot load modules: ip_vs, "
    "wireguard or vxlan are then missing and Kubernetes networking breaks in surprising ways.",
    "Shared kernel: run Kubernetes nodes on full VMs or bare metal. Modules: build in or load at "
    "boot what the node needs (ip_vs, vxlan, wireguard, br_netfilter).",
)
def _virtualization(r: Readings):
    info = r.latest("netstack_virtualization_info")
    if not info:
        raise Skip("virtualization not reported")
    labels = info[0][0]
    modules = r.latest("netstack_kernel_modules_loadable")
    text = f"{labels.get('type', '?')} ({labels.get('role', '?')})"
    if labels.get("role") == "container":
        return THRESHOLDS["shared_kernel"].crossed, text + ": shared kernel", "own kernel", []
    if modules and not modules[0][1]:
        reason = modules[0][0].get("reason", "?")
        return (
            WARN,
            f"{text}, modules cannot be loaded: {reason}",
            "own kernel, modules loadable",
            [MODULES_ADVICE.get(reason, reason)],
        )
    return OK, text, "own kernel, modules loadable", []


# What to do about a kernel of its own that cannot load modules, by netstack_kernel_modules_loadable's reason.
MODULES_ADVICE = {
    "no_module_support": "the kernel is built without loadable modules (CONFIG_MODULES=n): what "
    "kube-proxy and the CNI need (ip_vs, vxlan, wireguard, br_netfilter) must be built in",
    "modules_disabled": "kernel.modules_disabled=1: nothing more can be loaded until a reboot; "
    "load what the node needs at boot (modules-load.d) before that sysctl is set",
    "no_modules_directory": "no module tree for the running kernel under the modules path: install "
    "its modules package, or mount the host's /lib/modules (chart: virtualization.hostModulesDirectory)",
}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (le, count) pairs, +Inf last."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


@check(
    "ebpf.softirq_wait",
    "NET_RX softirq wait p99 (eBPF)",
    "ebpf_softirq",
    "Time from raising NET_RX to running it: a starved CPU shows here long before squeezes or drops do.",
    "Find what runs on that CPU (steal, real-time tasks, IRQ storms); move RX work elsewhere.",
)
def _softirq_wait(r: Readings):
    buckets: dict[float, float] = {}
    for labels, rate in r.rates("netstack_softirq_wait_seconds_bucket"):
        if labels.get("vector", "NET_RX") == "NET_RX":
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + rate
    p99 = histogram_quantile(0.99, list(buckets.items()))
    if p99 is None:
        raise Skip("no NET_RX softirqs between the two readings")
    return (
        _crossed("softirq_wait_p99", p99),
        f"{p99 * 1e6:.0f} µs",
        f"> {THRESHOLDS['softirq_wait_p99'].value * 1e6:.0f} µs",
        [],
    )


def collector_verdicts(problems: dict[str, str], enabled: Iterable[str]) -> list[Verdict]:
    """A row for the enabled collectors that gave no data, with each one's reason: never
    silently missing. A failing collector (its source exists) is a warning; an absent one is not."""
    missing = [(name, problems[name]) for name in enabled if problems.get(name)]
    failing = [name for name, problem in missing if not problem.startswith("unavailable")]
    return [
        Verdict(
            "collectors",
            "Collectors reporting",
            THRESHOLDS["collector_failing"].crossed if failing else OK,
            value=(
                f"{len(missing)} of {len(list(enabled))} without data"
                + (f", failing: {', '.join(failing)}" if failing else "")
            )
            if missing
            else "all",
            threshold="none failing",
            why="A failing collector hides the failure modes it watches.",
            action="Read each reason below (also on the exporter's / page).",
            details=[f"{name}: {problem}" for name, problem in missing],
        )
    ]
