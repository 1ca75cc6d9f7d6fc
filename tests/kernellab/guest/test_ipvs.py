"""The IPVS collector against the real IPVS of Debian's 6.1 kernel: a table built with ipvsadm
(TCP, UDP, SCTP; rr, wrr, sh, lc; persistence; IPv6; firewall marks for IPv4 and IPv6; a black
hole; weight 0; masq, route and tunnel backends), traffic through NAT to local listeners, and
every series compared with ipvsadm's own `-Ln --exact` and `-Ln --stats --exact` output, for
each source. Then the series cap, another network namespace, and ip_vs unloaded and loaded
again under a running exporter. The tests run in file order: the last one unloads ip_vs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from collectors import ipvs
from exporter.contract import Context, Paths
from tests.helpers import Netns, run, samples, value
from tests.kernellab.guest import ipvsadm
from tests.kernellab.guest.conftest import GuestExporter, loaded_modules, start_all

RULES = Path(__file__).with_name("table.rules")
DEVICE = "nselab0"  # like kube-proxy's kube-ipvs0: a dummy link holding the virtual addresses
LOCAL_V4 = ["198.18.0.1"] + [f"198.18.1.{i}" for i in (1, 2, 3, 4, 5, 6, 7, 10, 11, 13, 14, 20)]
LOCAL_V6 = [f"2001:db8:18::{i}" for i in (1, 2, 3, 4, 10, 11, 20)]
TCP_LISTENERS = [
    ("198.18.0.1", 8081),
    ("198.18.0.1", 8082),
    ("127.0.0.1", 8082),
    ("2001:db8:18::10", 8083),
    ("2001:db8:18::11", 8083),
]
UDP_LISTENERS = [("198.18.0.1", 5353), ("127.0.0.1", 5354), ("2001:db8:18::10", 5355)]
# Firewall-mark services see traffic marked on output (as kube-proxy's iptables rules do).
NFT_MARKS = """
table inet nselab {
  chain out {
    type route hook output priority mangle;
    ip daddr 198.18.1.20 meta mark set 1
    ip6 daddr 2001:db8:18::20 meta mark set 1
  }
}
"""
SERVICE_TRAFFIC = ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes")
SERIES_NAMES = (
    "netstack_ipvs_service_backends",
    "netstack_ipvs_service_connections_active",
    "netstack_ipvs_service_connections_inactive",
)
BACKEND_NAMES = (
    "netstack_ipvs_backend_connections_active",
    "netstack_ipvs_backend_connections_inactive",
    "netstack_ipvs_backend_weight",
)


def family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class Listeners:
    """TCP servers that answer one line and close, UDP servers that echo: threads of this
    process, so they cost no interpreter start-up in the slow guest."""

    def __init__(self):
        self.sockets: list[socket.socket] = []
        for address, port in TCP_LISTENERS:
            s = self._bind(address, port, socket.SOCK_STREAM)
            s.listen(64)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        for address, port in UDP_LISTENERS:
            s = self._bind(address, port, socket.SOCK_DGRAM)
            threading.Thread(target=self._echo, args=(s,), daemon=True).start()

    def _bind(self, address: str, port: int, kind: int) -> socket.socket:
        s = socket.socket(family(address), kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        self.sockets.append(s)
        return s

    @staticmethod
    def _accept(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = s.accept()
                with conn:
                    conn.settimeout(5)
                    data = conn.recv(64)
                    if data != b"hold\n":
                        conn.sendall(b"ok " + data)
                    else:  # held open: the connection stays established (ActiveConn)
                        conn.sendall(b"held\n")
                        threading.Thread(target=_drain, args=(conn.detach(),), daemon=True).start()

    @staticmethod
    def _echo(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, peer = s.recvfrom(512)
                if peer is None:  # shut down
                    return
                s.sendto(data, peer)

    def close(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _drain(fd: int) -> None:
    with socket.socket(fileno=fd) as conn, contextlib.suppress(OSError):
        conn.settimeout(None)
        while conn.recv(64):
            pass


def tcp_exchange(address: str, port: int, payload: bytes = b"hello\n") -> bytes:
    with socket.create_connection((address, port), timeout=10) as c:
        c.sendall(payload)
        return c.recv(64)


def udp_exchange(address: str, port: int, payload: bytes) -> bytes:
    with socket.socket(family(address), socket.SOCK_DGRAM) as u:
        u.settimeout(10)
        u.sendto(payload, (address, port))
        return u.recv(512)


def send_traffic() -> list[socket.socket]:
    """Connections through IPVS NAT to the local listeners; returns the ones held open."""
    for vip in ("198.18.1.1", "198.18.1.2", "198.18.1.4", "2001:db8:18::1", "198.18.1.20", "2001:db8:18::20"):
        for i in range(4):
            assert tcp_exchange(vip, 80, b"req %d\n" % i) == b"ok req %d\n" % i, vip
    for vip in ("198.18.1.10", "2001:db8:18::3"):
        for i in range(3):
            assert udp_exchange(vip, 53, b"query %d" % i) == b"query %d" % i, vip
    held = []
    for vip in ("198.18.1.3", "2001:db8:18::2"):
        for _ in range(2):
            c = socket.create_connection((vip, 443), timeout=10)
            c.sendall(b"hold\n")
            assert c.recv(64) == b"held\n"
            held.append(c)
    return held


def remove_ip_vs() -> None:
    """Unload ip_vs and every module that uses it (schedulers first)."""
    users = sorted(m for m in loaded_modules() if m.startswith("ip_vs_"))
    run(["modprobe", "-r", *users, "ip_vs"])
    assert not {m for m in loaded_modules() if m.startswith("ip_vs")}


@pytest.fixture(scope="module")
def lab(default_exporter):
    """The table, its listeners and traffic, and one exporter per source (started together;
    the traffic is sent after they are up, so that no IPVS connection expires before the
    comparison: TIME_WAIT lasts 120 s)."""
    run(["modprobe", "ip_vs"])
    run(["ip", "link", "add", DEVICE, "type", "dummy"])
    run(["ip", "link", "set", DEVICE, "up"])
    for address in LOCAL_V4:
        run(["ip", "addr", "add", f"{address}/32", "dev", DEVICE])
    for address in LOCAL_V6:
        run(["ip", "addr", "add", f"{address}/128", "dev", DEVICE, "nodad"])
    run(["nft", "-f", "-"], input=NFT_MARKS)
    run(["ipvsadm", "-C"])
    run(["ipvsadm", "-R"], input=RULES.read_text())
    run(["ipvsadm", "--set", "900", "900", "900"])  # established, FIN_WAIT and UDP timeouts
    listeners = Listeners()
    exporters = {
        "netlink": GuestExporter(
            "--collector.disable-defaults",
            "--collector.ipvs",
            "--collector.ipvs.backends",
            "--collector.ipvs.source=netlink",
        ),
        "procfs": GuestExporter(
            "--collector.disable-defaults",
            "--collector.ipvs",
            "--collector.ipvs.backends",
            "--collector.ipvs.source=procfs",
        ),
        "auto": GuestExporter("--collector.disable-defaults", "--collector.ipvs"),
    }
    start_all(*exporters.values())
    held = send_traffic()
    try:
        yield exporters
    finally:
        for c in held:
            c.close()
        for e in exporters.values():
            e.__exit__(None, None, None)
        listeners.close()
        run(["ipvsadm", "-C"], check=False)
        run(["nft", "delete", "table", "inet", "nselab"], check=False)
        run(["ip", "link", "del", DEVICE], check=False)


def stable_table_and_scrape(exporter: GuestExporter):
    """ipvsadm's table and a scrape taken between two identical ipvsadm readings."""
    for _ in range(5):
        before = ipvsadm.table()
        metrics = exporter.scrape()
        if ipvsadm.table() == before:
            return before, metrics
    raise AssertionError("the IPVS table kept changing during the scrape")


def labels_of(metrics: dict, name: str) -> set[tuple]:
    return {k[1] for k in samples(metrics, name)}


def series(metrics: dict, name: str, labels: dict[str, str]) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def backend_labels(svc: ipvsadm.Service, dest: ipvsadm.Dest) -> dict[str, str]:
    base = {k: v for k, v in svc.labels.items() if k != "scheduler"}
    return {**base, "backend_address": dest.address, "backend_port": str(dest.port), "forward": dest.forward}


def proc_ip_vs_stats() -> tuple[int, ...]:
    return tuple(int(v, 16) for v in Path("/proc/net/ip_vs_stats").read_text().splitlines()[2].split())


@pytest.mark.parametrize("source", ["netlink", "procfs", "auto"])
def test_every_series_matches_ipvsadm(lab, source):
    table, m = stable_table_and_scrape(lab[source])
    services = ipvsadm.merged(table)
    dests = [d for svc in table.values() for d in svc.dests]
    # auto, as root: traffic from one netlink service dump, backends from /proc/net/ip_vs
    read_from = {"netlink": "netlink", "procfs": "procfs", "auto": "netlink+procfs"}[source]
    assert value(m, "netstack_ipvs_source_info", source=read_from) == 1
    assert value(m, "netstack_scrape_collector_success", collector="ipvs") == 1

    # the table's shape: 19 services, 26 backends, as ipvsadm lists them
    assert len(table) == 19 and len(dests) == 26
    assert value(m, "netstack_ipvs_services") == len(table)
    assert value(m, "netstack_ipvs_backends") == len(dests)
    assert (
        value(m, "netstack_ipvs_services_without_backends")
        == sum(not svc.dests for svc in table.values())
        == 2
    )
    assert (
        value(m, "netstack_ipvs_services_without_weighted_backends")
        == sum(bool(svc.dests) and all(d.weight == 0 for d in svc.dests) for svc in table.values())
        == 1
    )
    assert value(m, "netstack_ipvs_backends_weight_zero") == sum(d.weight == 0 for d in dests) == 3
    assert value(m, "netstack_ipvs_series_capped") == 0

    # per service: the same label sets, backends and connection counts
    for name in SERIES_NAMES:
        assert labels_of(m, name) == {tuple(sorted(s.labels.items())) for s in services}, name
    for svc in services:
        assert series(m, "netstack_ipvs_service_backends", svc.labels) == len(svc.dests)
        assert series(m, "netstack_ipvs_service_connections_active", svc.labels) == sum(
            d.active for d in svc.dests
        ), svc.labels
        assert series(m, "netstack_ipvs_service_connections_inactive", svc.labels) == sum(
            d.inactive for d in svc.dests
        ), svc.labels
        if source != "procfs":
            for name, want in zip(SERVICE_TRAFFIC, svc.stats):
                assert series(m, f"netstack_ipvs_service_{name}_total", svc.labels) == want, (
                    name,
                    svc.labels,
                )
    if source == "procfs":  # /proc/net/ip_vs has no per-service traffic
        assert not samples(m, "netstack_ipvs_service_connections_total")

    # per backend, only when asked for (--collector.ipvs.backends)
    if source == "auto":
        for name in BACKEND_NAMES:
            assert not samples(m, name), f"{name} without --collector.ipvs.backends"
    else:
        for name in BACKEND_NAMES:
            assert len(samples(m, name)) == len(dests), name
        for svc in services:
            for d in svc.dests:
                labels = backend_labels(svc, d)
                assert series(m, "netstack_ipvs_backend_weight", labels) == d.weight, labels
                assert series(m, "netstack_ipvs_backend_connections_active", labels) == d.active
                assert series(m, "netstack_ipvs_backend_connections_inactive", labels) == d.inactive

    # global totals: /proc/net/ip_vs_stats, which is every service's traffic summed
    totals = proc_ip_vs_stats()
    sums = tuple(sum(svc.stats[i] for svc in table.values()) for i in range(5))
    assert totals == sums
    for name, want in zip(SERVICE_TRAFFIC, totals):
        assert value(m, f"netstack_ipvs_{name}_total") == want, name

    # the prerequisites kube-proxy's IPVS mode needs
    loaded = loaded_modules()
    for module in ipvs.DEFAULT_MODULES:
        assert value(m, "netstack_kernel_module_loaded", module=module) == (module in loaded)
    for sysctl in ipvs.SYSCTLS:
        want = int(Path("/proc/sys", *sysctl.split(".")).read_text())
        assert value(m, "netstack_ipvs_sysctl", sysctl=sysctl) == want


def test_the_table_has_traffic_where_it_was_sent(lab):
    """The comparison above means something only if traffic and connections are in it."""
    table = ipvsadm.table()
    by_vip = {k[1] if k[0] != "FWM" else f"fwm{k[1]}{k[2]}": svc for k, svc in table.items()}
    for vip in ("198.18.1.1", "198.18.1.2", "198.18.1.4", "2001:db8:18::1", "fwm1", "fwm1IPv6"):
        assert by_vip[vip].stats[0] == 4 and by_vip[vip].stats[1] > 0, vip
    assert by_vip["198.18.1.10"].stats[:2] == (3, 3)
    assert sum(d.active for d in by_vip["198.18.1.3"].dests) == 2
    assert sum(d.active for d in by_vip["2001:db8:18::2"].dests) == 2
    forwards = {d.forward for svc in table.values() for d in svc.dests}
    assert forwards == {"masq", "route", "tunnel"}


def test_sources_agree(lab):
    """netlink and /proc/net/ip_vs give the same table, and auto (both) the same again."""
    scraped = {source: e.scrape() for source, e in lab.items()}
    shape = [
        *SERIES_NAMES,
        "netstack_ipvs_services",
        "netstack_ipvs_backends",
        "netstack_ipvs_services_without_backends",
        "netstack_ipvs_backends_weight_zero",
    ]
    for name in shape:
        assert (
            samples(scraped["netlink"], name)
            == samples(scraped["procfs"], name)
            == samples(scraped["auto"], name)
        ), name
    for name in BACKEND_NAMES:
        assert samples(scraped["netlink"], name) == samples(scraped["procfs"], name), name
    traffic = "netstack_ipvs_service_connections_total"
    assert samples(scraped["auto"], traffic) == samples(scraped["netlink"], traffic)


def test_series_cap(lab):
    """--collector.ipvs.max-series: backends dropped first, then per-service series."""

    def collect(**options) -> dict:
        collector = ipvs.IpvsCollector(Context(paths=Paths(), options=options))
        collector.probe()
        try:
            families = {f.name: f for f in collector.collect()}
        finally:
            collector.close()
        return families

    services, label_sets = 19, 18  # the IPv4/IPv6 firewall-mark pair shares one label set
    per_service = 8  # 3 shape series + 5 traffic counters (netlink)
    full = collect(backends=True, **{"max-series": services * per_service + 3 * 26})
    assert full["netstack_ipvs_series_capped"].samples[0].value == 0
    assert len(full["netstack_ipvs_backend_weight"].rows) == 26

    no_backends = collect(backends=True, **{"max-series": services * per_service + 3 * 26 - 1})
    assert no_backends["netstack_ipvs_series_capped"].samples[0].value == 1
    assert "netstack_ipvs_backend_weight" not in no_backends
    assert len(no_backends["netstack_ipvs_service_backends"].rows) == label_sets

    none = collect(backends=True, **{"max-series": services * per_service - 1})
    assert none["netstack_ipvs_series_capped"].samples[0].value == 1
    assert "netstack_ipvs_service_backends" not in none
    assert none["netstack_ipvs_services"].samples[0].value == 19  # the totals stay


def test_exporter_in_another_network_namespace(lab):
    """IPVS tables are per network namespace: an exporter inside one sees that one only."""
    with Netns("nse-klab") as ns:
        ns.exec("ipvsadm", "-A", "-t", "198.18.5.1:80", "-s", "rr")
        ns.exec("ipvsadm", "-a", "-t", "198.18.5.1:80", "-r", "198.18.5.2:8080", "-m", "-w", "7")
        with GuestExporter(
            "--collector.disable-defaults", "--collector.ipvs", "--collector.ipvs.backends", netns=ns
        ) as inside:
            m = inside.scrape()
        assert value(m, "netstack_ipvs_source_info", source="netlink+procfs") == 1
        assert value(m, "netstack_ipvs_services") == 1
        assert (
            value(
                m,
                "netstack_ipvs_backend_weight",
                address="198.18.5.1",
                backend_address="198.18.5.2",
                backend_port="8080",
            )
            == 7
        )
    outside = lab["auto"].scrape()
    assert value(outside, "netstack_ipvs_services") == 19
    assert not samples(outside, "netstack_ipvs_service_backends", address="198.18.5.1")


def test_default_exporter_found_ip_vs_loaded_after_it_started(lab, default_exporter):
    """The exporter started before ip_vs existed (test_default_collectors) finds it on a later
    probe, as on a node where kube-proxy loads ip_vs after the exporter started."""
    m = default_exporter.scrape_until(
        lambda m: samples(m, "netstack_ipvs_services"), what="the ipvs collector available"
    )
    assert value(m, "netstack_collector_available", collector="ipvs") == 1
    assert value(m, "netstack_ipvs_services") == 19
    assert value(m, "netstack_ipvs_source_info", source="netlink+procfs") == 1


def test_ip_vs_unloaded_and_reloaded_under_a_running_exporter(lab):
    """Last: ip_vs goes away (the table with it) and comes back with a new family id."""
    exporter = lab["auto"]
    run(["ipvsadm", "-C"])
    run(["nft", "delete", "table", "inet", "nselab"])
    deadline = time.monotonic() + 120
    while True:  # connections of deleted services hold a reference until they expire
        try:
            remove_ip_vs()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    m = exporter.scrape_until(
        lambda m: value(m, "netstack_collector_available", collector="ipvs") == 0,
        what="ipvs unavailable after unloading ip_vs",
    )
    assert value(m, "netstack_kernel_module_loaded", module="ip_vs") == 0
    assert not samples(m, "netstack_ipvs_services")
    assert exporter.proc.poll() is None

    run(["modprobe", "ip_vs"])
    run(["ipvsadm", "-A", "-t", "198.18.1.1:80", "-s", "rr"])
    m = exporter.scrape_until(
        lambda m: samples(m, "netstack_ipvs_services"), what="ipvs available after loading ip_vs again"
    )
    assert value(m, "netstack_ipvs_services") == 1
    assert value(m, "netstack_ipvs_source_info", source="netlink+procfs") == 1
    assert value(m, "netstack_kernel_module_loaded", module="ip_vs") == 1
    assert "Traceback" not in exporter.log()
    run(["ipvsadm", "-C"])
