"""overlay: tunnel devices (VXLAN, Geneve, WireGuard, IPIP, SIT, GRE, ip6tnl), the underlay each
one sends through, MTU mismatch between the two, and the devices' drop and error counters. The
host-wide IP fragmentation and UDP errors the same failures cause are the netstat collector's.

Cost model: the topology (which devices are tunnels, their VNI, port, underlay and MTUs) comes
from a link dump, redone only when a netlink event says something relevant changed (a tunnel or
an underlay appeared, changed or went away; a route or address changed while some underlay was
found by route), or every topology-refresh-interval at the latest. A scrape only drains the
event socket and asks RTM_GETSTATS for each tunnel and underlay device (one small message each).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from exporter.contract import Collector, Context, Option, ParseError, SourceUnavailable
from exporter.logs import log_event
from exporter.metrics import CounterMetricFamily, GaugeMetricFamily, Metric

from . import overlay_rtnl as rtnl
from .netlink import NetlinkDumpInterrupted

log = logging.getLogger("netstack.overlay")

UNKNOWN = "unknown"  # underlay label value when it cannot be determined (never a guess)

# Link kinds that encapsulate. The fallback devices the kernel creates per netns when a module
# loads (tunl0, sit0, gre0, ip6tnl0, ...) are included: Calico's IPIP mode uses tunl0.
TUNNEL_KINDS = frozenset(
    {
        "vxlan",
        "geneve",
        "wireguard",
        "ipip",
        "sit",
        "ip6tnl",
        "gre",
        "gretap",
        "ip6gre",
        "ip6gretap",
        "erspan",
        "ip6erspan",
        "bareudp",
        "vti",
        "vti6",
        "xfrm",
    }
)

ETH_HLEN = 14
IPV4_HLEN = 20
IPV6_HLEN = 40
UDP_HLEN = 8
IPV6_ENCAP_LIMIT_OPT = 8  # ip6tnl/ip6gre add a destination option unless encaplimit none
GRE_CSUM, GRE_KEY, GRE_SEQ = 0x8000, 0x2000, 0x1000
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1
ENCAP_FOU, ENCAP_GUE = 1, 2  # TUNNEL_ENCAP_* of ipip/sit/gre "encap fou|gue"
IFLA_INFO_DATA = 2
IFLA_GRE_OFLAGS = 3


# --- MTU arithmetic (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelConfig:
    """What the kernel told us about one tunnel device (decoded from IFLA_INFO_DATA)."""

    kind: str
    vni: str = ""
    port: str = ""
    link: int | None = None  # underlay ifindex when the device is bound to one (dev ...)
    remote: str | None = None  # peer or multicast group
    local: str | None = None
    outer_family: int | None = None  # 4 or 6 when known from remote/local, else None
    gre_oflags: int = 0
    encap_type: int = 0  # FOU/GUE UDP encapsulation of ipip/sit/gre
    ignore_encap_limit: bool = False
    no_inner_ethernet: bool = False  # VXLAN-GPE, Geneve inner_proto_inherit


def encapsulation_overhead(cfg: TunnelConfig) -> int | None:
    """Bytes the tunnel adds to a packet of the device's MTU; None when not fixed by config.

    An unknown outer family counts as IPv4, as the kernel does when it sizes a vxlan device
    without remote/local: the smaller overhead, so a reported mismatch is never a false alarm.
    """
    outer = IPV6_HLEN if cfg.outer_family == 6 else IPV4_HLEN
    inner_eth = 0 if cfg.no_inner_ethernet else ETH_HLEN
    kind = cfg.kind
    if kind == "vxlan":
        return outer + UDP_HLEN + 8 + inner_eth  # 50 / 70, VXLAN_HEADROOM / VXLAN6_HEADROOM
    if kind == "geneve":
        return outer + UDP_HLEN + 8 + inner_eth  # base header; options would add more
    if kind == "wireguard":
        return outer + UDP_HLEN + 16 + 16  # message header + Poly1305 tag: 60 / 80
    fou = {0: 0, ENCAP_FOU: UDP_HLEN, ENCAP_GUE: UDP_HLEN + 4}.get(cfg.encap_type)
    if fou is None:
        return None  # MPLS or an unknown encapsulation type
    if kind in ("ipip", "sit"):
        return IPV4_HLEN + fou
    if kind == "ip6tnl":
        return IPV6_HLEN + (0 if cfg.ignore_encap_limit else IPV6_ENCAP_LIMIT_OPT) + fou
    if kind in ("gre", "gretap", "ip6gre", "ip6gretap"):
        gre = 4 + sum(4 for flag in (GRE_CSUM, GRE_KEY, GRE_SEQ) if cfg.gre_oflags & flag)
        l2 = ETH_HLEN if kind.endswith("tap") else 0
        if kind.startswith("ip6"):
            limit = 0 if cfg.ignore_encap_limit else IPV6_ENCAP_LIMIT_OPT
            return IPV6_HLEN + limit + gre + l2 + fou
        return IPV4_HLEN + gre + l2 + fou
    return None  # erspan, bareudp, vti, xfrm: depends on more than the link config


def mtu_mismatch(mtu: int, overhead: int, underlay_mtu: int) -> bool:
    """A full-size packet on the tunnel does not fit the underlay once encapsulated."""
    return mtu + overhead > underlay_mtu


# --- topology ---------------------------------------------------------------------------------


def _family(address: str | None) -> int | None:
    return None if address is None else ipaddress.ip_address(address).version


def tunnel_config(link: rtnl.LinkSummary) -> TunnelConfig:
    """Decode IFLA_INFO_DATA of a tunnel device with pyroute2's per-kind tables; ParseError when
    the message does not decode (pyroute2 raises whatever its tables hit: struct.error,
    IndexError, ValueError from ipaddress...)."""
    try:
        return _tunnel_config(link)
    except ParseError:
        raise
    except Exception as e:
        raise ParseError(f"{link.name}: tunnel attributes do not decode ({type(e).__name__})") from None


def _tunnel_config(link: rtnl.LinkSummary) -> TunnelConfig:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # deferred: only when tunnels exist

    msg = ifinfmsg(link.message)
    msg.decode()
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    kind = link.kind or ""

    def get(name: str) -> Any:
        return data.get_attr(name) if data is not None and hasattr(data, "get_attr") else None

    if kind == "vxlan":
        remote = _addr(get("IFLA_VXLAN_GROUP") or get("IFLA_VXLAN_GROUP6"))
        local = _addr(get("IFLA_VXLAN_LOCAL") or get("IFLA_VXLAN_LOCAL6"))
        external = bool(get("IFLA_VXLAN_COLLECT_METADATA"))
        vni = get("IFLA_VXLAN_ID")
        port = get("IFLA_VXLAN_PORT")
        return TunnelConfig(
            kind,
            vni="external" if external else ("" if vni is None else str(vni)),
            port="" if port is None else str(port),
            link=get("IFLA_VXLAN_LINK") or None,
            remote=remote,
            local=local,
            outer_family=_family(remote) or _family(local),
            no_inner_ethernet=get("IFLA_VXLAN_GPE") is not None,
        )
    if kind == "geneve":
        remote = _addr(get("IFLA_GENEVE_REMOTE") or get("IFLA_GENEVE_REMOTE6"))
        external = get("IFLA_GENEVE_COLLECT_METADATA") is not None
        vni = get("IFLA_GENEVE_ID")
        port = get("IFLA_GENEVE_PORT")
        return TunnelConfig(
            kind,
            vni="external" if external else ("" if vni is None else str(vni)),
            port="" if port is None else str(port),
            remote=remote,
            outer_family=_family(remote),
            no_inner_ethernet=get("IFLA_GENEVE_INNER_PROTO_INHERIT") is not None,
        )
    if kind in ("ipip", "sit"):
        p = "IFLA_IPIP_" if kind == "ipip" else "IFLA_SIT_"
        return TunnelConfig(
            kind,
            link=get(p + "LINK") or None,
            remote=_addr(get(p + "REMOTE")),
            local=_addr(get(p + "LOCAL")),
            outer_family=4,
            encap_type=get(p + "ENCAP_TYPE") or 0,
        )
    if kind == "ip6tnl":
        return TunnelConfig(
            kind,
            link=get("IFLA_IP6TNL_LINK") or None,
            remote=_addr(get("IFLA_IP6TNL_REMOTE")),
            local=_addr(get("IFLA_IP6TNL_LOCAL")),
            outer_family=6,
            encap_type=get("IFLA_IP6TNL_ENCAP_TYPE") or 0,
            ignore_encap_limit=bool((get("IFLA_IP6TNL_FLAGS") or 0) & IP6_TNL_F_IGN_ENCAP_LIMIT),
        )
    if kind in ("gre", "gretap", "erspan"):
        return TunnelConfig(
            kind,
            link=get("IFLA_GRE_LINK") or None,
            remote=_addr(get("IFLA_GRE_REMOTE")),
            local=_addr(get("IFLA_GRE_LOCAL")),
            outer_family=4,
            gre_oflags=gre_oflags(link.message),
            encap_type=get("IFLA_GRE_ENCAP_TYPE") or 0,
        )
    if kind in ("ip6gre", "ip6gretap", "ip6erspan"):
        return TunnelConfig(
            kind,
            link=get("IFLA_IP6GRE_LINK") or None,
            remote=_addr(get("IFLA_IP6GRE_REMOTE")),
            local=_addr(get("IFLA_IP6GRE_LOCAL")),
            outer_family=6,
            gre_oflags=gre_oflags(link.message),
            encap_type=get("IFLA_IP6GRE_ENCAP_TYPE") or 0,
            ignore_encap_limit=bool((get("IFLA_IP6GRE_FLAGS") or 0) & IP6_TNL_F_IGN_ENCAP_LIMIT),
        )
    return TunnelConfig(kind)  # wireguard (peers live in generic netlink), bareudp, vti, xfrm


def gre_oflags(message: bytes) -> int:
    """IFLA_GRE_OFLAGS (big-endian GRE_CSUM/KEY/SEQ bits) read from the raw message: pyroute2
    0.9 decodes it for ip6gre in host byte order, which would swap the bits."""
    body = message[rtnl.NLMSGHDR.size + rtnl.IFINFOMSG.size :]
    for atype, payload in rtnl.iter_attrs(body):
        if atype != rtnl.IFLA_LINKINFO:
            continue
        for itype, ipayload in rtnl.iter_attrs(payload):
            if itype != IFLA_INFO_DATA:
                continue
            for dtype, dpayload in rtnl.iter_attrs(ipayload):
                if dtype == IFLA_GRE_OFLAGS and len(dpayload) >= 2:
                    return int.from_bytes(dpayload[:2], "big")
    return 0


def _addr(value: Any) -> str | None:
    """pyroute2 reports an unset tunnel endpoint as 0.0.0.0 / ::."""
    if not value or ipaddress.ip_address(value).is_unspecified:
        return None
    return value


@dataclass(frozen=True)
class Tunnel:
    index: int
    name: str
    config: TunnelConfig
    mtu: int | None
    underlay_index: int | None
    underlay: str  # device name or UNKNOWN
    underlay_mtu: int | None
    overhead: int | None
    via_route: bool  # the underlay was (or would be) found by route/address lookup


@dataclass(frozen=True)
class Topology:
    tunnels: tuple[Tunnel, ...] = ()
    built: float = 0.0  # time.monotonic() of the dump

    @property
    def watched(self) -> frozenset[int]:
        """ifindexes whose link events can change what we export."""
        return frozenset(
            {t.index for t in self.tunnels} | {t.underlay_index for t in self.tunnels if t.underlay_index}
        )

    @property
    def route_dependent(self) -> bool:
        return any(t.via_route for t in self.tunnels)


def build_topology(
    links: list[rtnl.LinkSummary],
    selected: Callable[[str], bool],
    route_oif: Callable[[str], int | None],
    address_owner: Callable[[str], int | None],
) -> Topology:
    by_index = {link.index: link for link in links}
    tunnels = []
    for link in links:
        if link.kind not in TUNNEL_KINDS or not selected(link.name):
            continue
        try:
            cfg = tunnel_config(link)
        except ParseError as e:
            # One device the kernel (or a newer kind) describes oddly: still a tunnel, with its
            # counters; its underlay and MTU check are unknown. Logged once per topology dump.
            log_event(log, logging.WARNING, "overlay cannot decode a tunnel", device=link.name, error=str(e))
            cfg = TunnelConfig(link.kind or "")
        underlay_index, via_route = None, False
        if link.link_netnsid is not None:
            pass  # the lower device lives in another namespace: we cannot see it
        elif cfg.link:
            underlay_index = cfg.link
        elif cfg.remote or cfg.local:
            via_route = True
            if cfg.remote:
                underlay_index = route_oif(cfg.remote)
            if underlay_index is None and cfg.local:
                underlay_index = address_owner(cfg.local)
        lower = by_index.get(underlay_index) if underlay_index else None
        tunnels.append(
            Tunnel(
                index=link.index,
                name=link.name,
                config=cfg,
                mtu=link.mtu,
                underlay_index=lower.index if lower else None,
                underlay=lower.name if lower else UNKNOWN,
                underlay_mtu=lower.mtu if lower else None,
                overhead=encapsulation_overhead(cfg),
                via_route=via_route,
            )
        )
    return Topology(tuple(sorted(tunnels, key=lambda t: t.name)), time.monotonic())


def needs_refresh(topology: Topology, events: Iterable[rtnl.Event]) -> bool:
    """Only events that can change the exported topology trigger a new link dump: a busy node
    creates and deletes pod veths all the time, and those are none of our business."""
    watched = topology.watched
    for event in events:
        if event.link is not None:
            if event.link.kind in TUNNEL_KINDS or event.link.index in watched:
                return True
        elif topology.route_dependent:
            return True  # route or address change, and some underlay was found by route
    return False


# --- the collector ----------------------------------------------------------------------------

# (metric suffix, rtnl_link_stats64 field, help)
DEVICE_COUNTERS = (
    ("receive_packets", "rx_packets", "Packets received on the tunnel device (decapsulated)."),
    ("transmit_packets", "tx_packets", "Packets sent into the tunnel device (before encapsulation)."),
    ("receive_bytes", "rx_bytes", "Bytes received on the tunnel device."),
    ("transmit_bytes", "tx_bytes", "Bytes sent into the tunnel device."),
    ("receive_dropped", "rx_dropped", "Received packets the tunnel device dropped."),
    (
        "transmit_dropped",
        "tx_dropped",
        "Packets the tunnel device dropped on transmit (vxlan: no forwarding entry for the destination).",
    ),
    ("receive_errors", "rx_errors", "Receive errors on the tunnel device."),
    (
        "transmit_errors",
        "tx_errors",
        "Transmit errors on the tunnel device (vxlan: no route to the remote, encapsulation failed).",
    ),
    ("receive_length_errors", "rx_length_errors", "Received packets with a bad length."),
    ("receive_over_errors", "rx_over_errors", "Receive ring buffer overruns."),
    ("receive_crc_errors", "rx_crc_errors", "Received packets with a bad CRC."),
    (
        "receive_frame_errors",
        "rx_frame_errors",
        "Receive frame errors (vxlan/geneve: malformed or unexpected encapsulation header).",
    ),
    ("receive_fifo_errors", "rx_fifo_errors", "Receive FIFO errors."),
    ("receive_missed_errors", "rx_missed_errors", "Packets missed for lack of receive resources."),
    ("transmit_aborted_errors", "tx_aborted_errors", "Transmissions aborted."),
    (
        "transmit_carrier_errors",
        "tx_carrier_errors",
        "Transmit carrier errors (vxlan, geneve, ip tunnels: no route to the remote endpoint).",
    ),
    ("transmit_fifo_errors", "tx_fifo_errors", "Transmit FIFO errors."),
    ("transmit_heartbeat_errors", "tx_heartbeat_errors", "Transmit heartbeat errors."),
    ("transmit_window_errors", "tx_window_errors", "Transmit window errors."),
)

UNDERLAY_COUNTERS = (
    (
        "receive_dropped",
        "rx_dropped",
        "Received packets the underlay device dropped (e.g. larger than its MTU), all traffic.",
    ),
    ("transmit_dropped", "tx_dropped", "Packets the underlay device dropped on transmit, all traffic."),
    ("receive_errors", "rx_errors", "Receive errors on the underlay device, all traffic."),
    ("transmit_errors", "tx_errors", "Transmit errors on the underlay device, all traffic."),
)


def _pattern(value: re.Pattern | None) -> re.Pattern | None:
    """An empty pattern (NETSTACK_..._DEVICE_EXCLUDE="") means no filter, not 'match all'."""
    return value if value is not None and value.pattern else None


class OverlayCollector(Collector):
    name = "overlay"
    default_enabled = True
    help = (
        "Tunnel devices (vxlan, geneve, wireguard, ipip, gre, ...): underlay, MTU mismatch, drops and errors."
    )
    options = (
        Option(
            "device-include", "Only tunnel devices whose name matches this regex (unanchored).", None, "regex"
        ),
        Option(
            "device-exclude", "Skip tunnel devices whose name matches this regex (unanchored).", None, "regex"
        ),
        Option(
            "topology-refresh-interval",
            "Re-read the tunnel topology at least this often even without link events.",
            60.0,
            "duration",
            min=1,
            max=86400,
        ),
    )

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._include = _pattern(self.option("device-include"))
        self._exclude = _pattern(self.option("device-exclude"))
        self._refresh_interval = self.option("topology-refresh-interval")
        self._lock = threading.Lock()
        self._rtnl: rtnl.RtnlSocket | None = None
        self._monitor: rtnl.LinkMonitor | None = None
        self._topology: Topology | None = None
        self._last_topology: Topology | None = None  # the last complete dump, for churn
        self.stale = False  # this scrape's topology is the previous one: the dump kept changing
        self.refreshes = 0  # link dumps done; the benchmark and tests read it

    def selected(self, name: str) -> bool:
        if self._include is not None and not self._include.search(name):
            return False
        return not (self._exclude is not None and self._exclude.search(name))

    def probe(self) -> None:
        try:
            sock = rtnl.RtnlSocket()
        except OSError as e:
            raise SourceUnavailable(f"rtnetlink socket: {e.strerror or e}") from None
        try:
            sock.dump_links()
        except OSError as e:
            raise SourceUnavailable(f"rtnetlink link dump: {e.strerror or e}") from None
        finally:
            sock.close()

    def close(self) -> None:
        with self._lock:
            for sock in (self._monitor, self._rtnl):
                if sock is not None:
                    sock.close()
            self._monitor = self._rtnl = None
            self._topology = None

    def topology(self) -> Topology:
        """The current topology, refreshed first if events or age call for it."""
        if self._rtnl is None:
            self._rtnl = rtnl.RtnlSocket()
        if self._monitor is None:
            self._monitor = rtnl.LinkMonitor()  # subscribe before the dump: no change slips by
            self._topology = None
        events, overflowed = self._monitor.drain()
        topo = self._topology
        if (
            topo is None
            or overflowed
            or needs_refresh(topo, events)
            or time.monotonic() - topo.built >= self._refresh_interval
        ):
            try:
                topo = self._topology = build_topology(
                    self._rtnl.dump_links(), self.selected, self._rtnl.route_oif, self._rtnl.address_owner
                )
            except NetlinkDumpInterrupted:
                # Links kept changing through every retry (pods churning). The previous topology
                # with fresh counters is better than no overlay metrics: served, and marked.
                if self._last_topology is None:
                    raise
                self._topology = None  # dump again next scrape
                self.stale = True
                return self._last_topology
            self._last_topology = topo
            self.refreshes += 1
        self.stale = False
        return topo

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            topo = self.topology()
            assert self._rtnl is not None  # topology() opened it
            stats: dict[int, dict[str, int] | None] = {}
            for index in sorted(
                {t.index for t in topo.tunnels} | {t.underlay_index for t in topo.tunnels if t.underlay_index}
            ):
                stats[index] = self._rtnl.link_stats(index)
            if any(s is None for s in stats.values()):
                self._topology = None  # something vanished under us: dump again next scrape

        # A tunnel that vanished between the dump and the stats request is left out entirely.
        tunnels = [t for t in topo.tunnels if stats.get(t.index) is not None]
        info = GaugeMetricFamily(
            "netstack_overlay_info",
            "Tunnel device (value 1): kind, VNI, UDP port and the underlay "
            "device it sends through ('unknown' when it cannot be determined).",
            labels=["device", "kind", "vni", "port", "underlay"],
        )
        mtu = GaugeMetricFamily("netstack_overlay_mtu_bytes", "MTU of the tunnel device.", labels=["device"])
        underlay_mtu = GaugeMetricFamily(
            "netstack_overlay_underlay_mtu_bytes",
            "MTU of the tunnel's underlay device (absent when the underlay is unknown).",
            labels=["device"],
        )
        overhead = GaugeMetricFamily(
            "netstack_overlay_encapsulation_overhead_bytes",
            "Bytes the tunnel adds to each packet (outer headers, inner Ethernet header where carried).",
            labels=["device"],
        )
        mismatch = GaugeMetricFamily(
            "netstack_overlay_mtu_mismatch",
            "1 when the tunnel MTU plus encapsulation overhead exceeds the "
            "underlay MTU: full-size packets are dropped or fragmented.",
            labels=["device"],
        )
        for t in tunnels:
            info.add_metric([t.name, t.config.kind, t.config.vni, t.config.port, t.underlay], 1)
            if t.mtu is not None:
                mtu.add_metric([t.name], t.mtu)
            if t.underlay_mtu is not None and t.underlay_index and stats.get(t.underlay_index) is not None:
                underlay_mtu.add_metric([t.name], t.underlay_mtu)
                if t.overhead is not None and t.mtu is not None:
                    mismatch.add_metric([t.name], int(mtu_mismatch(t.mtu, t.overhead, t.underlay_mtu)))
            if t.overhead is not None:
                overhead.add_metric([t.name], t.overhead)
        families: list[Metric] = [info, mtu, underlay_mtu, overhead, mismatch]

        for suffix, field, help_text in DEVICE_COUNTERS:
            family = CounterMetricFamily(f"netstack_overlay_{suffix}_total", help_text, labels=["device"])
            for t in tunnels:
                family.add_metric([t.name], (stats[t.index] or {}).get(field, 0))
            families.append(family)

        underlays = {
            t.underlay_index: t.underlay
            for t in tunnels
            if t.underlay_index and stats.get(t.underlay_index) is not None
        }
        for suffix, field, help_text in UNDERLAY_COUNTERS:
            family = CounterMetricFamily(
                f"netstack_overlay_underlay_{suffix}_total", help_text, labels=["device"]
            )
            for index, name in sorted(underlays.items(), key=lambda kv: kv[1]):
                family.add_metric([name], (stats[index] or {}).get(field, 0))
            families.append(family)
        stale = GaugeMetricFamily(
            "netstack_overlay_topology_stale",
            "1 when the link dump kept being interrupted by changes (pod churn) and this scrape's "
            "tunnel list is the previous one, with fresh counters.",
            value=int(self.stale),
        )
        # a host without tunnels gets no empty HELP/TYPE blocks, like node_exporter
        yield from (f for f in families if f.samples)
        if tunnels or self.stale:
            yield stale


COLLECTOR = OverlayCollector
