"""strict_arp collector on sysctl trees and an RTM_GETADDR dump captured from a network namespace
(tests/fixtures/strict_arp/README.md)."""

from __future__ import annotations

import errno
import struct

import pytest

from collectors.strict_arp import StrictArpCollector, count_addresses, strict_arp
from exporter.contract import Context, ParseError, Paths, SourceUnavailable
from tests.helpers import FIXTURES

ARP = FIXTURES / "strict_arp"


def collect(tree, **options) -> dict:
    c = StrictArpCollector(Context(Paths(procfs=str(tree)), options))
    c.probe()
    return {f.name: {tuple(s.labels.items()): s.value for s in f.samples} for f in c.collect()}


def test_strict_state_as_kube_proxy_sets_it():
    got = collect(ARP / "strict" / "proc")
    assert got["netstack_ipvs_strict_arp"] == {(): 1}
    assert got["netstack_arp_ignore"] == {(("device", "all"),): 1, (("device", "eth0"),): 0}
    assert got["netstack_arp_announce"] == {(("device", "all"),): 2, (("device", "eth0"),): 0}
    assert got["netstack_ipvs_kube_ipvs0_present"] == {(): 1}


def test_kernel_defaults_are_not_strict():
    got = collect(ARP / "defaults" / "proc")
    assert got["netstack_ipvs_strict_arp"] == {(): 0}
    assert got["netstack_arp_ignore"][(("device", "all"),)] == 0


def test_device_filters():
    import re

    got = collect(
        ARP / "strict" / "proc",
        **{"device-exclude": re.compile("^$"), "device-include": re.compile("^(eth|cali)")},
    )
    assert set(got["netstack_arp_ignore"]) == {(("device", d),) for d in ("all", "eth0", "cali1a2b3c4d5e6")}


@pytest.mark.parametrize(
    "ignore, announce, strict",
    [
        (1, 2, True),
        (2, 2, True),
        (8, 2, True),
        (0, 2, False),
        (3, 2, False),
        (4, 2, False),
        (1, 1, False),
        (1, 0, False),
    ],
)
def test_strict_values(ignore, announce, strict):
    assert strict_arp(ignore, announce) is strict


def test_captured_address_dump_counts_kube_ipvs0():
    dump = (ARP / "rtm-getaddr-dump.bin").read_bytes()
    ifindex = int((ARP / "rtm-getaddr-dump.ifindex").read_text())
    assert count_addresses([dump], ifindex) == {"ipv4": 3, "ipv6": 1}
    assert count_addresses([dump], 1) == {"ipv4": 1, "ipv6": 1}  # lo: 127.0.0.1 and ::1


def test_dump_errors():
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    with pytest.raises(OSError) as e:
        count_addresses([error], 4)
    assert e.value.errno == errno.EPERM
    short = struct.pack("=IHHII", 20, 20, 2, 1, 0) + b"\0" * 4
    with pytest.raises(ParseError, match="too short"):
        count_addresses([short], 4)
    # an interrupted dump (NLM_F_DUMP_INTR) is retried by the shared client: tests/unit/test_netlink.py


def test_addresses_of_this_namespace_through_the_shared_client():
    from collectors.strict_arp import dump_addresses

    assert dump_addresses(1)["ipv4"] >= 1  # lo has 127.0.0.1 wherever this runs


def test_unavailable_without_ipv4_sysctls(tmp_path):
    with pytest.raises(SourceUnavailable, match="arp_ignore does not exist"):
        StrictArpCollector(Context(Paths(procfs=str(tmp_path)))).probe()


def test_garbage_sysctl(tmp_path):
    conf = tmp_path / "sys/net/ipv4/conf/all"
    conf.mkdir(parents=True)
    (conf / "arp_ignore").write_text("one\n")
    (conf / "arp_announce").write_text("2\n")
    c = StrictArpCollector(Context(Paths(procfs=str(tmp_path))))
    with pytest.raises(ParseError, match="arp_ignore: expected an integer"):
        list(c.collect())
