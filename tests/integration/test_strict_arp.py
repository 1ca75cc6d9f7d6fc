"""strict_arp collector against the real kernel: a network namespace with an underlay veth, a
kube-ipvs0 device holding Service addresses as kube-proxy binds them, and the ARP sysctls set
both ways, read by the exporter running inside the namespace.

kube-proxy makes kube-ipvs0 a dummy device. This test machine's kernel is built without
CONFIG_DUMMY, so here the device is a bridge of that name: the collector, like kube-proxy's own
check, goes by the name and the sysctls, not the kind. The kernel lab (Debian's 6.1 kernel, which
has the dummy module) runs it on a real dummy device: tests/kernellab/guest/test_l2_and_virtualization.py.
"""

from __future__ import annotations

import pytest

from tests.helpers import Exporter, Netns, value


def kube_ipvs0_kind(ns: Netns) -> str:
    done = ns.ip("link", "add", "kube-ipvs0", "type", "dummy", check=False)
    if done.returncode == 0:
        return "dummy"
    ns.ip("link", "add", "kube-ipvs0", "type", "bridge")
    return "bridge"


@pytest.fixture
def node():
    with Netns("nse-bgp-arp") as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "cali0a1b2c3d4e")
        ns.ip("addr", "add", "198.18.2.10/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.kind = kube_ipvs0_kind(ns)
        for address in ("198.18.100.1/32", "198.18.100.2/32", "198.18.101.7/32"):
            ns.ip("addr", "add", address, "dev", "kube-ipvs0")
        ns.ip("addr", "add", "fd00:198:18:100::1/128", "dev", "kube-ipvs0", "nodad")
        yield ns


def sysctl(ns: Netns, **values: int) -> None:
    ns.exec("sysctl", "-q", "-w", *(f"net.ipv4.conf.all.{k}={v}" for k, v in values.items()))


def test_strict_arp_both_ways(node):
    with Exporter("--collector.disable-defaults", "--collector.strict_arp", netns=node) as e:
        m = e.scrape()
        assert value(m, "netstack_ipvs_strict_arp") == 0
        assert value(m, "netstack_ipvs_kube_ipvs0_present") == 1
        assert value(m, "netstack_ipvs_kube_ipvs0_addresses", family="ipv4") == 3
        assert value(m, "netstack_ipvs_kube_ipvs0_addresses", family="ipv6") == 1
        assert value(m, "netstack_arp_ignore", device="eth0") == 0
        assert not [k for k in m if k[0] == "netstack_arp_ignore" and ("device", "cali0a1b2c3d4e") in k[1]]

        sysctl(node, arp_ignore=1, arp_announce=2)  # kube-proxy's strictARP
        m = e.scrape()
        assert value(m, "netstack_ipvs_strict_arp") == 1
        assert value(m, "netstack_arp_ignore", device="all") == 1
        assert value(m, "netstack_arp_announce", device="all") == 2

        sysctl(node, arp_ignore=1, arp_announce=0)  # half of it is not enough
        assert value(e.scrape(), "netstack_ipvs_strict_arp") == 0
        node.exec("sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_announce=2")
        m = e.scrape()
        assert value(m, "netstack_arp_announce", device="eth0") == 2
        assert value(m, "netstack_ipvs_strict_arp") == 0  # node-wide state is `all`'s

        node.ip("addr", "add", "198.18.101.8/32", "dev", "kube-ipvs0")
        assert value(e.scrape(), "netstack_ipvs_kube_ipvs0_addresses", family="ipv4") == 4
        node.ip("link", "del", "kube-ipvs0")
        m = e.scrape()
        assert value(m, "netstack_ipvs_kube_ipvs0_present") == 0
        assert value(m, "netstack_scrape_collector_success", collector="strict_arp") == 1
