"""overlay collector against the real kernel: two network namespaces joined by a veth pair, vxlan on
top, the exporter running inside a namespace. Traffic is UDP sent by a Python one-liner inside the
namespaces (addresses 198.18.0.0/15 only). IPv6 is switched off in the namespaces so no background
traffic (router solicitations, MLD) moves the counters while they are compared."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from collectors import netstat, overlay
from tests.helpers import ROOT, Exporter, Netns, need_tool, samples, value

pytestmark = pytest.mark.root

A_UL, B_UL = "198.18.0.1", "198.18.0.2"  # underlay addresses
MAC_A, MAC_B = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
# netstat too: the host-wide IP/UDP counters show what a wrong tunnel MTU or a downed device causes
ARGS = ("--collector.disable-defaults", "--collector.overlay", "--collector.netstat")


def overlay_exporter(ns: Netns, *args: str) -> Exporter:
    """The exporter with the overlay and netstat collectors, running (and scraped) inside ns."""
    return Exporter(*ARGS, *args, netns=ns)


SEND = textwrap.dedent("""
    import socket, sys
    dst, size, count, df = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "df"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 10, 2 if df else 0)  # IP_MTU_DISCOVER: IP_PMTUDISC_DO / DONT
    for _ in range(count):
        s.sendto(b"x" * size, (dst, 9))
""")


def send_udp(ns: Netns, dst: str, size: int, count: int, df: bool = True) -> None:
    ns.exec(sys.executable, "-c", SEND, dst, str(size), str(count), "df" if df else "nodf")


def quiet(ns: Netns) -> None:
    need_tool("sysctl", "procps")
    ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


@contextlib.contextmanager
def two_hosts(mtu_a: int = 1500, mtu_b: int = 1500):
    """Namespaces a and b, underlay veth ula (198.18.0.1) <-> ulb (198.18.0.2)."""
    with Netns("ova") as a, Netns("ovb") as b:
        quiet(a)
        quiet(b)
        a.ip("link", "add", "ula", "type", "veth", "peer", "name", "ulb", "netns", b.name)
        a.ip("link", "set", "ula", "mtu", str(mtu_a), "up")
        b.ip("link", "set", "ulb", "mtu", str(mtu_b), "up")
        a.ip("addr", "add", f"{A_UL}/24", "dev", "ula")
        b.ip("addr", "add", f"{B_UL}/24", "dev", "ulb")
        yield a, b


def add_vxlan(
    ns: Netns,
    name: str,
    vni: int,
    *,
    remote: str | None = None,
    local: str | None = None,
    dev: str | None = None,
    mtu: int | None = None,
    port: int = 4789,
    mac: str | None = None,
    addr: str | None = None,
) -> None:
    args = ["link", "add", name]
    if mtu:
        args += ["mtu", str(mtu)]
    if mac:
        args += ["address", mac]
    args += ["type", "vxlan", "id", str(vni), "dstport", str(port)]
    for key, val in (("remote", remote), ("local", local), ("dev", dev)):
        if val:
            args += [key, val]
    ns.ip(*args)
    if addr:
        ns.ip("addr", "add", addr, "dev", name)
    ns.ip("link", "set", name, "up")


def overlay_pair(a: Netns, b: Netns, mtu: int | None = None, dev: bool = True) -> None:
    """vx0 on both sides (VNI 42), overlay 198.19.0.1 <-> 198.19.0.2, static neighbours so every
    datagram is exactly one frame (no ARP retries to count)."""
    add_vxlan(
        a,
        "vx0",
        42,
        remote=B_UL,
        local=A_UL,
        dev="ula" if dev else None,
        mtu=mtu,
        mac=MAC_A,
        addr="198.19.0.1/24",
    )
    add_vxlan(
        b,
        "vx0",
        42,
        remote=A_UL,
        local=B_UL,
        dev="ulb" if dev else None,
        mtu=mtu,
        mac=MAC_B,
        addr="198.19.0.2/24",
    )
    a.ip("neigh", "add", "198.19.0.2", "lladdr", MAC_B, "dev", "vx0", "nud", "permanent")
    b.ip("neigh", "add", "198.19.0.1", "lladdr", MAC_A, "dev", "vx0", "nud", "permanent")


def kernel_stats(ns: Netns, dev: str) -> dict[str, int]:
    """The kernel's counters for dev, from sysfs as seen inside the namespace."""
    out = ns.exec("sh", "-c", f"cd /sys/class/net/{dev}/statistics && grep -H . *").stdout
    return {name: int(v) for name, v in (line.split(":", 1) for line in out.split())}


def kernel_snmp(ns: Netns) -> dict[str, dict[str, int]]:
    return netstat.parse_snmp(ns.exec("cat", "/proc/net/snmp").stdout, "snmp")


def assert_device_counters_equal_kernel(m: dict, ns: Netns, dev: str) -> None:
    k = kernel_stats(ns, dev)
    for suffix, field, _ in overlay.DEVICE_COUNTERS:
        assert value(m, f"netstack_overlay_{suffix}_total", device=dev) == k[field], field


def assert_underlay_counters_equal_kernel(m: dict, ns: Netns, dev: str) -> None:
    k = kernel_stats(ns, dev)
    for suffix, field, _ in overlay.UNDERLAY_COUNTERS:
        assert value(m, f"netstack_overlay_underlay_{suffix}_total", device=dev) == k[field], field


def series_of(m: dict, device: str) -> list:
    return [key for key in m if ("device", device) in key[1]]


# --- topology and MTU -------------------------------------------------------------------------


def test_correct_configuration_reports_no_mismatch():
    with two_hosts() as (a, b), overlay_exporter(a) as exp:
        overlay_pair(a, b)  # with dev: the kernel sizes vx0 to 1500 - 50
        m = exp.scrape()
        assert value(m, "netstack_overlay_info", device="vx0") == 1
        info = samples(m, "netstack_overlay_info", device="vx0")
        labels = dict(next(iter(info))[1])
        assert labels == {"device": "vx0", "kind": "vxlan", "vni": "42", "port": "4789", "underlay": "ula"}
        assert value(m, "netstack_overlay_mtu_bytes", device="vx0") == 1450
        assert value(m, "netstack_overlay_underlay_mtu_bytes", device="vx0") == 1500
        assert value(m, "netstack_overlay_encapsulation_overhead_bytes", device="vx0") == 50
        assert value(m, "netstack_overlay_mtu_mismatch", device="vx0") == 0
        assert value(m, "netstack_scrape_collector_success", collector="overlay") == 1
        # the veth underlay is not itself a tunnel
        assert not samples(m, "netstack_overlay_info", device="ula")


def test_mismatch_vxlan_without_dev_over_1500_underlay():
    with two_hosts() as (a, b), overlay_exporter(a) as exp:
        overlay_pair(a, b, dev=False)  # no dev: the kernel leaves the MTU at 1500
        m = exp.scrape()
        info = dict(next(iter(samples(m, "netstack_overlay_info", device="vx0")))[1])
        assert info["underlay"] == "ula"  # found through the route to the remote
        assert value(m, "netstack_overlay_mtu_bytes", device="vx0") == 1500
        assert value(m, "netstack_overlay_underlay_mtu_bytes", device="vx0") == 1500
        assert value(m, "netstack_overlay_mtu_mismatch", device="vx0") == 1


def test_mismatch_when_underlay_lowered_after_creation():
    # An hour-long refresh interval: only the link event can make the change visible.
    with (
        two_hosts() as (a, b),
        overlay_exporter(a, "--collector.overlay.topology-refresh-interval=1h") as exp,
    ):
        overlay_pair(a, b)
        assert value(exp.scrape(), "netstack_overlay_mtu_mismatch", device="vx0") == 0
        a.ip("link", "set", "ula", "mtu", "1400")
        m = exp.scrape()
        assert value(m, "netstack_overlay_underlay_mtu_bytes", device="vx0") == 1400
        assert value(m, "netstack_overlay_mtu_bytes", device="vx0") == 1450  # kernel kept it
        assert value(m, "netstack_overlay_mtu_mismatch", device="vx0") == 1
        a.ip("link", "set", "vx0", "mtu", "1350")  # the fix is seen as promptly
        assert value(exp.scrape(), "netstack_overlay_mtu_mismatch", device="vx0") == 0


def test_kernel_clamps_vxlan_bound_to_a_device():
    # With dev, the kernel itself keeps MTU + 50 within the underlay at creation and refuses a
    # larger MTU later; a mismatch on such a device only arises when the underlay shrinks.
    with two_hosts(mtu_b=1400) as (_a, b), overlay_exporter(b) as exp:
        add_vxlan(b, "vx0", 42, remote=A_UL, dev="ulb", mtu=1450)
        assert b.ip("link", "set", "vx0", "mtu", "1450", check=False).returncode != 0
        m = exp.scrape()
        assert value(m, "netstack_overlay_mtu_bytes", device="vx0") == 1350
        assert value(m, "netstack_overlay_mtu_mismatch", device="vx0") == 0


def test_mismatch_when_ends_have_different_underlay_mtus():
    # Both ends get the cluster-wide overlay MTU 1450 and find their underlay by route (no dev,
    # so the kernel does not clamp); b's underlay is only 1400: b is misconfigured, a is not.
    with (
        two_hosts(mtu_a=1500, mtu_b=1400) as (a, b),
        overlay_exporter(a) as exp_a,
        overlay_exporter(b) as exp_b,
    ):
        overlay_pair(a, b, mtu=1450, dev=False)
        m_a = exp_a.scrape()
        assert value(m_a, "netstack_overlay_underlay_mtu_bytes", device="vx0") == 1500
        assert value(m_a, "netstack_overlay_mtu_mismatch", device="vx0") == 0
        m_b = exp_b.scrape()
        assert dict(next(iter(samples(m_b, "netstack_overlay_info")))[1])["underlay"] == "ulb"
        assert value(m_b, "netstack_overlay_mtu_bytes", device="vx0") == 1450
        assert value(m_b, "netstack_overlay_underlay_mtu_bytes", device="vx0") == 1400
        assert value(m_b, "netstack_overlay_mtu_mismatch", device="vx0") == 1


# --- real drops, counted as the kernel counts them --------------------------------------------


def test_drops_at_receiver_with_smaller_underlay_mtu():
    with (
        two_hosts(mtu_a=1500, mtu_b=1400) as (a, b),
        overlay_exporter(a) as exp_a,
        overlay_exporter(b) as exp_b,
    ):
        overlay_pair(a, b, mtu=1450, dev=False)
        send_udp(a, "198.19.0.2", 100, 3)  # fits everywhere: delivered
        send_udp(a, "198.19.0.2", 1400, 5)  # 1428 inside, 1478 outside: b's veth (1400) drops it
        m_a, m_b = exp_a.scrape(), exp_b.scrape()
        # dropped as b's veth receives it; the kernel counts it on the veth's both ends and,
        # through the failed transmit, on the sending vxlan device
        assert value(m_b, "netstack_overlay_underlay_receive_dropped_total", device="ulb") >= 5
        assert value(m_a, "netstack_overlay_underlay_transmit_dropped_total", device="ula") >= 5
        assert value(m_a, "netstack_overlay_transmit_dropped_total", device="vx0") >= 5
        assert value(m_b, "netstack_overlay_receive_packets_total", device="vx0") >= 3
        for m, ns, ul in ((m_a, a, "ula"), (m_b, b, "ulb")):
            assert_device_counters_equal_kernel(m, ns, "vx0")
            assert_underlay_counters_equal_kernel(m, ns, ul)


def test_no_forwarding_entry_counts_transmit_drops():
    with two_hosts() as (a, _b), overlay_exporter(a) as exp:
        # no remote: no default forwarding entry, so vxlan has nowhere to send
        add_vxlan(a, "vx1", 43, dev="ula", addr="198.19.1.1/24")
        a.ip("neigh", "add", "198.19.1.2", "lladdr", MAC_B, "dev", "vx1", "nud", "permanent")
        send_udp(a, "198.19.1.2", 100, 4)
        m = exp.scrape()
        assert value(m, "netstack_overlay_transmit_dropped_total", device="vx1") == 4
        assert value(m, "netstack_overlay_transmit_packets_total", device="vx1") == 0
        assert_device_counters_equal_kernel(m, a, "vx1")


def test_unroutable_remote_counts_carrier_errors():
    with two_hosts() as (a, _b), overlay_exporter(a) as exp:
        add_vxlan(a, "vx2", 44, remote="198.18.9.9", addr="198.19.2.1/24")  # no route to it
        a.ip("neigh", "add", "198.19.2.2", "lladdr", MAC_B, "dev", "vx2", "nud", "permanent")
        send_udp(a, "198.19.2.2", 100, 4)
        m = exp.scrape()
        assert value(m, "netstack_overlay_transmit_carrier_errors_total", device="vx2") == 4
        assert value(m, "netstack_overlay_transmit_errors_total", device="vx2") == 4
        assert_device_counters_equal_kernel(m, a, "vx2")
        info = dict(next(iter(samples(m, "netstack_overlay_info", device="vx2")))[1])
        assert info["underlay"] == "unknown"  # said so, not guessed
        assert not samples(m, "netstack_overlay_mtu_mismatch", device="vx2")
        assert not samples(m, "netstack_overlay_underlay_mtu_bytes", device="vx2")


# --- host-wide signals ------------------------------------------------------------------------


def test_vxlan_to_a_down_device_counts_udp_no_ports():
    with two_hosts() as (a, b), overlay_exporter(b) as exp:
        overlay_pair(a, b)
        before = value(exp.scrape(), "netstack_udp_no_port_datagrams_total", family="ipv4")
        b.ip("link", "set", "vx0", "down")  # its UDP socket closes with it
        send_udp(a, "198.19.0.2", 100, 6)
        m = exp.scrape()
        after = value(m, "netstack_udp_no_port_datagrams_total", family="ipv4")
        assert after - before >= 6
        assert after == kernel_snmp(b)["Udp"]["NoPorts"]


def test_mtu_mismatch_without_df_fragments_and_is_counted():
    with two_hosts() as (a, b), overlay_exporter(a) as exp:
        overlay_pair(a, b, dev=False)  # MTU 1500 over a 1500 underlay: mismatch
        send_udp(a, "198.19.0.2", 1450, 5, df=False)  # inner 1478, outer 1528: fragmented
        m = exp.scrape()
        assert value(m, "netstack_overlay_mtu_mismatch", device="vx0") == 1
        created = value(m, "netstack_ip_fragments_created_total", family="ipv4")
        assert created >= 10
        k = kernel_snmp(a)["Ip"]
        assert created == k["FragCreates"]
        assert value(m, "netstack_ip_fragment_failures_total", family="ipv4") == k["FragFails"]


# --- churn, options, cost ---------------------------------------------------------------------


def test_devices_created_and_deleted_while_scraping():
    with (
        two_hosts() as (a, _b),
        overlay_exporter(a, "--collector.overlay.topology-refresh-interval=1h") as exp,
    ):
        stop = threading.Event()
        errors: list[str] = []
        scrapes = [0]

        def hammer():
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    m = exp.scrape()
                    if value(m, "netstack_scrape_collector_success", collector="overlay") != 1:
                        errors.append("collector failed during churn")
                    scrapes[0] += 1
                except Exception as e:
                    errors.append(repr(e))

        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        try:
            for i in range(15):
                name = f"vxc{i}"
                add_vxlan(a, name, 100 + i, dev="ula", port=5000 + i)
                m = exp.scrape()
                assert value(m, "netstack_overlay_info", device=name) == 1
                a.ip("link", "del", name)
                m = exp.scrape()
                assert series_of(m, name) == [], f"stale series for {name}"
        finally:
            stop.set()
            thread.join(10)
        assert not errors, errors[:3]
        assert scrapes[0] > 0
        assert exp.proc.poll() is None
        assert "Traceback" not in exp.log()


def test_device_include_and_exclude():
    with two_hosts() as (a, _b), overlay_exporter(a, "--collector.overlay.device-exclude=^skip") as exp:
        add_vxlan(a, "vxkeep", 50, dev="ula", port=4789)
        add_vxlan(a, "skipme", 51, dev="ula", port=4790)
        m = exp.scrape()
        assert value(m, "netstack_overlay_info", device="vxkeep") == 1
        assert series_of(m, "skipme") == []
    with Netns("ovi") as c, overlay_exporter(c, "--collector.overlay.device-include=flannel") as exp:
        add_vxlan(c, "flannel.1", 1, port=8472)
        add_vxlan(c, "vxother", 2, port=4789)
        m = exp.scrape()
        assert value(m, "netstack_overlay_info", device="flannel.1") == 1
        assert series_of(m, "vxother") == []


UNRELATED_CHURN = textwrap.dedent("""
    import subprocess, sys
    sys.path.insert(0, sys.argv[1])
    from exporter.contract import Context
    from collectors.overlay import OverlayCollector
    c = OverlayCollector(Context(options={"topology-refresh-interval": 3600.0}))
    list(c.collect())
    for i in range(20):  # pod-like churn: veth pairs come and go
        subprocess.run(["ip", "link", "add", f"pod{i}", "type", "veth", "peer", "name", f"pp{i}"],
                       check=True)
        list(c.collect())
    for i in range(20):
        subprocess.run(["ip", "link", "del", f"pod{i}"], check=True)
        list(c.collect())
    after_churn = c.refreshes
    subprocess.run(["ip", "link", "add", "vxnew", "type", "vxlan", "id", "9", "dstport", "4789"],
                   check=True)
    names = {s.labels["device"] for f in c.collect() if f.name == "netstack_overlay_info"
             for s in f.samples}
    print(after_churn, c.refreshes, sorted(names))
    c.close()
""")


def test_unrelated_link_churn_does_not_redump():
    with Netns("ovc") as ns:
        add_vxlan(ns, "vx0", 1, port=4789)
        out = ns.exec(sys.executable, "-c", UNRELATED_CHURN, str(ROOT)).stdout.split(maxsplit=2)
        after_churn, final, names = int(out[0]), int(out[1]), out[2]
        assert after_churn == 1  # only the first dump, despite the link events of 40 veths
        assert final == 2  # the new vxlan device triggered one
        assert "vxnew" in names and "vx0" in names


UNPRIVILEGED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from exporter.contract import Context
    from collectors.overlay import OverlayCollector
    c = OverlayCollector(Context())
    c.probe()
    families = {f.name: f for f in c.collect()}
    info = families["netstack_overlay_info"].samples[0].labels
    print(os.getuid(), info["device"], info["underlay"], len(families))
    c.close()
""")


@contextlib.contextmanager
def code_readable_by_anyone():
    """A directory uid 65534 can read holding the packages the unprivileged run imports: the
    checkout and its venv may sit below a directory only root may enter (CI clones into one)."""
    import prometheus_client
    import pyroute2

    import collectors
    import exporter

    dest = tempfile.mkdtemp(prefix="overlay-unprivileged-")
    try:
        os.chmod(dest, 0o755)
        for package in (collectors, exporter, prometheus_client, pyroute2):
            source = os.path.dirname(package.__file__)
            shutil.copytree(
                source,
                os.path.join(dest, os.path.basename(source)),
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_runs_without_privileges():
    setpriv = need_tool("setpriv", "util-linux")
    with two_hosts() as (a, b), code_readable_by_anyone() as code:
        overlay_pair(a, b)
        out = a.exec(
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            UNPRIVILEGED,
            code,
        ).stdout.split()
        assert out[:3] == ["65534", "vx0", "ula"]
        assert int(out[3]) > 20  # the tunnel and underlay families all came back


def test_host_without_tunnels_exports_no_overlay_series():
    with Netns("ovn") as ns, overlay_exporter(ns) as exp:
        ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        m = exp.scrape()
        assert not [k for k in m if k[0].startswith("netstack_overlay_")]
        assert value(m, "netstack_scrape_collector_success", collector="overlay") == 1


INTERRUPTED_DUMPS = textwrap.dedent("""
    import errno, sys
    sys.path.insert(0, sys.argv[1])
    from exporter.contract import Context
    from collectors.netlink import NetlinkDumpInterrupted
    from collectors.overlay import OverlayCollector

    def interrupted():
        raise NetlinkDumpInterrupted(errno.EAGAIN, "link dump interrupted 3 times in a row")

    def families(c):
        return {f.name: f for f in c.collect()}

    c = OverlayCollector(Context())
    first = families(c)
    c._rtnl.dump_links = interrupted   # links keep changing through every retry from now on
    c._topology = None                 # and a refresh is due
    during = families(c)
    print(first["netstack_overlay_topology_stale"].samples[0].value,
          during["netstack_overlay_topology_stale"].samples[0].value,
          [s.labels["device"] for s in during["netstack_overlay_info"].samples],
          len(during["netstack_overlay_receive_dropped"].samples))
    fresh = OverlayCollector(Context())
    fresh._rtnl = type(c._rtnl)()
    fresh._rtnl.dump_links = interrupted
    try:
        list(fresh.collect())
        print("no-error")
    except NetlinkDumpInterrupted:
        print("raised")
""")


def test_churn_serves_the_previous_topology_with_fresh_counters_marked_stale():
    """Issue 11: under constant link churn a scrape failed ('link dump interrupted three times');
    now it serves the last complete topology with fresh counters, marked, and only a collector
    that never had a complete dump fails."""
    with Netns("ovi") as ns:
        add_vxlan(ns, "vx0", 1, port=4789)
        out = ns.exec(sys.executable, "-c", INTERRUPTED_DUMPS, str(ROOT)).stdout.split("\n")
        first_stale, during_stale, rest = out[0].split(" ", 2)
        assert (first_stale, during_stale) == ("0", "1")
        assert "'vx0'" in rest and rest.endswith(" 1")  # the tunnel, with its counters
        assert out[1] == "raised"
