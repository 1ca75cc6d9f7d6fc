"""strict_arp and virtualization on Debian's 6.1 kernel under qemu: a real dummy kube-ipvs0 (the
test machine's own kernel has no CONFIG_DUMMY, so its netns test uses a bridge of that name), and
the guest seen as what it is, a QEMU guest whose kernel can load modules."""

from __future__ import annotations

import json
import sys

from collectors.virtualization import detect, modules_loadable, read_facts
from exporter.contract import Paths
from tests.helpers import Netns, run

COLLECT = (
    "import json; from collectors.strict_arp import StrictArpCollector; "
    "from exporter.contract import Context; c = StrictArpCollector(Context()); c.probe(); "
    "print(json.dumps({f.name: {json.dumps(s.labels, sort_keys=True): s.value "
    "for s in f.samples} for f in c.collect()}))"
)


def collect_in(ns: Netns) -> dict:
    return json.loads(ns.exec(sys.executable, "-c", COLLECT).stdout)


def test_strict_arp_with_a_real_dummy_kube_ipvs0():
    run(["modprobe", "dummy"])
    with Netns("nse-bgp-lab") as ns:
        ns.ip("link", "add", "kube-ipvs0", "type", "dummy")
        assert "dummy" in ns.ip("-d", "link", "show", "kube-ipvs0").stdout
        for address in ("198.18.100.1/32", "198.18.100.2/32"):
            ns.ip("addr", "add", address, "dev", "kube-ipvs0")
        got = collect_in(ns)
        assert got["netstack_ipvs_kube_ipvs0_present"] == {"{}": 1}
        assert got["netstack_ipvs_kube_ipvs0_addresses"]['{"family": "ipv4"}'] == 2
        assert got["netstack_ipvs_strict_arp"] == {"{}": 0}
        ns.exec("sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
        assert collect_in(ns)["netstack_ipvs_strict_arp"] == {"{}": 1}


def test_a_qemu_guest_that_can_load_modules():
    kind, role, evidence = detect(read_facts(Paths()))
    assert (kind, role) in (("qemu", "guest"), ("kvm", "guest")), evidence
    assert modules_loadable(Paths(), role, "/lib/modules") == (True, "none")
