"""netstat collector against the real kernel: two network namespaces joined by a veth pair with a
small MTU; UDP datagrams larger than it (DF unset) are fragmented by the sender and reassembled by
the receiver, where no socket listens (addresses 198.18.0.0/15 only). The exported counters must
equal the kernel's /proc/net/snmp inside the namespace."""

from __future__ import annotations

import sys
import textwrap

import pytest

from collectors.netstat import parse_snmp
from tests.helpers import Exporter, Netns, need_tool, parse_metrics, value

pytestmark = pytest.mark.root

A, B = "198.18.1.1", "198.18.1.2"
ARGS = ("--collector.disable-defaults", "--collector.netstat")

SEND = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: may fragment
    for _ in range(int(sys.argv[3])):
        s.sendto(b"x" * int(sys.argv[2]), (sys.argv[1], 9))
""")


def kernel_snmp(ns: Netns) -> dict[str, dict[str, int]]:
    return parse_snmp(ns.exec("cat", "/proc/net/snmp").stdout, "snmp")


def test_fragments_and_no_port_datagrams_equal_the_kernel():
    need_tool("sysctl", "procps")
    with Netns("nsta") as a, Netns("nstb") as b:
        for ns in (a, b):  # no IPv6 background traffic
            ns.exec(
                "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"
            )
        a.ip("link", "add", "nsa0", "type", "veth", "peer", "name", "nsb0", "netns", b.name)
        a.ip("link", "set", "nsa0", "mtu", "1280", "up")
        b.ip("link", "set", "nsb0", "mtu", "1280", "up")
        a.ip("addr", "add", f"{A}/24", "dev", "nsa0")
        b.ip("addr", "add", f"{B}/24", "dev", "nsb0")
        with Exporter(*ARGS, netns=a) as sender, Exporter(*ARGS, netns=b) as receiver:
            before = value(sender.scrape(), "netstack_ip_fragments_created_total", family="ipv4")
            a.exec(sys.executable, "-c", SEND, B, "3000", "5")  # 3 fragments each at MTU 1280
            sent, received = sender.scrape(), receiver.scrape()
            created = value(sent, "netstack_ip_fragments_created_total", family="ipv4")
            assert created - before == 15
            assert created == kernel_snmp(a)["Ip"]["FragCreates"]
            k = kernel_snmp(b)
            assert (
                value(received, "netstack_udp_no_port_datagrams_total", family="ipv4")
                == k["Udp"]["NoPorts"]
                >= 5
            )
            assert (
                value(received, "netstack_ip_reassembly_failures_total", family="ipv4")
                == k["Ip"]["ReasmFails"]
            )
            assert value(received, "netstack_scrape_collector_success", collector="netstat") == 1


def test_broken_snmp_fails_only_this_collector(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "snmp").write_text("Ip: Forwarding DefaultTTL\nIp: 1\n")
    with (
        Netns("nstp") as ns,
        Exporter(
            "--collector.disable-defaults",
            "--collector.netstat",
            "--collector.overlay",
            f"--path.procfs={tmp_path}",
            netns=ns,
        ) as exp,
    ):
        with exp.get() as r:
            status, m = r.status, parse_metrics(r.read().decode())
        assert status == 200
        assert value(m, "netstack_scrape_collector_success", collector="netstat") == 0
        # the overlay collector reads no file of the tree: unaffected
        assert value(m, "netstack_scrape_collector_success", collector="overlay") == 1
        exp.scrape()
        log = exp.log()
        failures = [line for line in log.splitlines() if "collector failed" in line]
        assert len(failures) == 1, log  # one line, not one per scrape
        assert "snmp:2: Ip has 2 names but 1 values" in failures[0]
        assert "Traceback" not in log
