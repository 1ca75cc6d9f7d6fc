"""strict_arp: is the node in the ARP state that MetalLB (layer 2) needs beside kube-proxy's IPVS
mode?

In IPVS mode kube-proxy binds every Service IP to the dummy device kube-ipvs0. With the kernel's
default ARP settings the node then answers ARP for all those addresses on every interface, and
in layer-2 mode each node claims every LoadBalancer IP that MetalLB announces from just one.
kube-proxy's `strictARP: true` sets net.ipv4.conf.all.arp_ignore=1 (answer only for addresses
of the interface the request came in on) and arp_announce=2 (use the best local source address
for the outgoing interface). The kernel applies the larger of the `all` value and the
interface's own, so `all` decides the node-wide state.

Sources: /proc/sys/net/ipv4/conf/*/arp_{ignore,announce} (of the exporter's network namespace:
the host's, with hostNetwork) and one rtnetlink address dump for kube-ipvs0's addresses.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

from exporter.contract import Collector, Option, ParseError, SourceUnavailable
from exporter.metrics import GaugeMetricFamily, Metric

from .common import read_text
from .netlink import NLMSGHDR, NetlinkSocket, data_messages

DEVICE = "kube-ipvs0"
# arp_ignore values under which a node does not answer for addresses of other interfaces
# (1: only the incoming interface's, 2: and in the sender's subnet, 8: never); 3 answers for
# global addresses and 4-7 are reserved (treated as 0).
STRICT_ARP_IGNORE = frozenset({1, 2, 8})
STRICT_ARP_ANNOUNCE = 2
# Pod, overlay and other virtual devices: not the underlay whose ARP answers matter.
DEFAULT_EXCLUDE = (
    r"^(lo|default|kube-ipvs0|cali.*|veth.*|tunl\d*|vxlan.*|flannel.*|cni.*|"
    r"docker.*|cilium_.*|lxc.*|kube-bridge|nodelocaldns|wg.*|genev.*|ip6tnl.*|"
    r"sit\d*|gre\d*|gretap\d*|erspan\d*|nerdctl.*|virbr.*|tap.*|tun\d*|dummy.*)$"
)

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


def parse_sysctl_int(text: str, path: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ParseError(f"{path}: expected an integer") from None


def strict_arp(arp_ignore: int, arp_announce: int) -> bool:
    """The node-wide values kube-proxy's strictARP sets (or stricter)."""
    return arp_ignore in STRICT_ARP_IGNORE and arp_announce == STRICT_ARP_ANNOUNCE


def count_addresses(chunks: Iterable[bytes], ifindex: int) -> dict[str, int]:
    """Addresses of interface ifindex, by family ({ipv4: n, ipv6: n}), in the datagrams of an
    RTM_GETADDR dump. A kernel error raises NetlinkKernelError (an OSError); a message too short
    for its header, ParseError."""
    counts = {"ipv4": 0, "ipv6": 0}
    for buf, _kind, start, end in data_messages(chunks, RTM_NEWADDR):
        if end - start < NLMSGHDR.size + IFADDRMSG.size:
            raise ParseError(f"RTM_NEWADDR of {end - start} bytes is too short")
        family, _plen, _flags, _scope, index = IFADDRMSG.unpack_from(buf, start + NLMSGHDR.size)
        if index == ifindex and family in FAMILY_NAMES:
            counts[FAMILY_NAMES[family]] += 1
    return counts


def dump_addresses(ifindex: int, timeout: float = 2.0) -> dict[str, int]:
    """Addresses of one interface, by family, from an rtnetlink dump of this network namespace
    (the shared client retries a dump that addresses changed under)."""
    sock = NetlinkSocket(NETLINK_ROUTE, timeout=timeout)
    try:
        body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return sock.dump(
            RTM_GETADDR, body, lambda chunks: count_addresses(chunks, ifindex), what="address dump"
        )
    finally:
        sock.close()


class StrictArpCollector(Collector):
    name = "strict_arp"
    default_enabled = True
    help = (
        "ARP settings MetalLB (layer 2) needs with kube-proxy's IPVS mode (strictARP), and "
        "kube-ipvs0's addresses."
    )
    options = (
        Option(
            "device-include",
            "Export arp_ignore/arp_announce only for interfaces matching this regex.",
            ".*",
            "regex",
        ),
        Option(
            "device-exclude",
            "Never export these interfaces (pod, overlay and other virtual devices by default).",
            DEFAULT_EXCLUDE,
            "regex",
        ),
    )

    def _conf(self, *parts: str) -> str:
        return self.paths.proc("sys", "net", "ipv4", "conf", *parts)

    def probe(self) -> None:
        path = self._conf("all", "arp_ignore")
        if not os.path.exists(path):
            raise SourceUnavailable(f"{path} does not exist (no IPv4 in this network namespace?)")

    def _read(self, device: str, name: str) -> int:
        path = self._conf(device, name)
        return parse_sysctl_int(read_text(path), path)

    def collect(self) -> Iterable[Metric]:
        all_ignore, all_announce = self._read("all", "arp_ignore"), self._read("all", "arp_announce")
        strict = GaugeMetricFamily(
            "netstack_ipvs_strict_arp",
            "1 when net.ipv4.conf.all has arp_ignore 1, 2 or 8 and "
            "arp_announce 2: kube-proxy's strictARP, needed by MetalLB layer 2 in IPVS mode.",
        )
        strict.add_metric([], int(strict_arp(all_ignore, all_announce)))
        ignore = GaugeMetricFamily(
            "netstack_arp_ignore",
            "net.ipv4.conf.<device>.arp_ignore (the kernel applies the larger of all and the device's).",
            labels=["device"],
        )
        announce = GaugeMetricFamily(
            "netstack_arp_announce",
            "net.ipv4.conf.<device>.arp_announce (the kernel applies the larger of all and the device's).",
            labels=["device"],
        )
        ignore.add_metric(["all"], all_ignore)
        announce.add_metric(["all"], all_announce)
        include, exclude = self.option("device-include"), self.option("device-exclude")
        try:
            devices = sorted(os.listdir(self._conf()))
        except OSError as e:
            raise SourceUnavailable(f"{self._conf()}: {e.strerror}") from None
        for device in devices:
            if device == "all" or not include.search(device) or exclude.search(device):
                continue
            try:
                values = self._read(device, "arp_ignore"), self._read(device, "arp_announce")
            except FileNotFoundError:  # the device went away while we read
                continue
            ignore.add_metric([device], values[0])
            announce.add_metric([device], values[1])
        present = GaugeMetricFamily(
            "netstack_ipvs_kube_ipvs0_present",
            "1 when kube-proxy's kube-ipvs0 dummy device exists (IPVS mode).",
        )
        addresses = GaugeMetricFamily(
            "netstack_ipvs_kube_ipvs0_addresses",
            "Addresses bound to kube-ipvs0 (one per Service IP kube-proxy serves).",
            labels=["family"],
        )
        exists = DEVICE in devices
        present.add_metric([], int(exists))
        if exists:
            try:
                ifindex = socket.if_nametoindex(DEVICE)
            except OSError:  # removed between the listing and the lookup
                ifindex = 0
            counts = dump_addresses(ifindex) if ifindex else {"ipv4": 0, "ipv6": 0}
            for family, n in counts.items():
                addresses.add_metric([family], n)
        return [strict, ignore, announce, present, addresses]


COLLECTOR = StrictArpCollector
