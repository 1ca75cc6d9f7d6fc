"""bgp collector against real BIRD: Debian's bird (1.6.8, the base of Calico's fork) and bird2
(2.0.12) in two network namespaces joined by a veth pair, with real BGP sessions between them,
protocols named the way Calico names them, and each daemon's control socket at a path passed to
the exporter with --collector.bgp.socket."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from tests.bird import TwoNodes, config, mesh_name
from tests.helpers import Exporter, samples, value

ABSENT_PEER = "198.18.0.9"  # configured, never answers: stays Connect/Active


def exporter_for(*sockets: str, args: tuple[str, ...] = ()) -> Exporter:
    return Exporter(
        "--collector.disable-defaults",
        "--collector.bgp",
        "--collector.cpu",
        *(f"--collector.bgp.socket={s}" for s in sockets),
        *args,
    )


def peer_up(metrics: dict, peer: str, family: str = "ipv4") -> float:
    return value(metrics, "netstack_bgp_peer_up", peer=peer, family=family)


def peer_state(metrics: dict, peer: str) -> str:
    (key,) = samples(metrics, "netstack_bgp_peer_info", peer=peer)
    return dict(key[1])["state"]


@pytest.fixture
def mesh():
    """Node A runs BIRD 1.6, node B BIRD 2; A also has a node-specific peer that is absent."""
    with TwoNodes() as nodes:
        a_peers = {
            mesh_name(nodes.B4): (nodes.B4, nodes.A4),
            "Node_" + ABSENT_PEER.replace(".", "_"): (ABSENT_PEER, nodes.A4),
        }
        nodes.bird_a = nodes.add(nodes.a, 1, config(1, nodes.A4, a_peers, ("198.19.1.0/24",)), "a")
        b_peers = {mesh_name(nodes.A4): (nodes.A4, nodes.B4)}
        nodes.bird_b = nodes.add(
            nodes.b, 2, config(2, nodes.B4, b_peers, ("198.19.2.0/24", "198.19.3.0/24")), "b"
        )
        nodes.bird_a.wait_for(mesh_name(nodes.B4), "Established")
        nodes.bird_b.wait_for(mesh_name(nodes.A4), "Established")
        yield nodes


def test_established_sessions_between_bird_1_6_and_bird_2(mesh):
    with exporter_for(mesh.bird_a.socket_path) as ea, exporter_for(mesh.bird_b.socket_path) as eb:
        a, b = ea.scrape(), eb.scrape()
    assert value(a, "netstack_bird_up", family="ipv4") == 1
    assert value(a, "netstack_bird_info", version="1.6.8") == 1
    assert value(b, "netstack_bird_info", version="2.0.12") == 1
    assert peer_up(a, mesh.B4) == 1 and peer_up(b, mesh.A4) == 1
    assert value(a, "netstack_bgp_peer_up", peer=mesh.B4, type="mesh") == 1
    assert peer_up(a, ABSENT_PEER) == 0
    assert peer_state(a, ABSENT_PEER) in ("Connect", "Active")
    # B's two static routes reach A, A's one reaches B
    assert value(a, "netstack_bgp_peer_imported_routes", peer=mesh.B4) >= 2
    assert value(b, "netstack_bgp_peer_imported_routes", peer=mesh.A4) >= 1
    assert value(a, "netstack_bgp_peers", type="mesh", state="Established") == 1
    since = value(a, "netstack_bgp_peer_last_change_timestamp_seconds", peer=mesh.B4)
    assert time.time() - 120 < since <= time.time() + 1
    assert value(a, "netstack_scrape_collector_success", collector="bgp") == 1


def test_counts_mode_on_real_bird(mesh):
    """--collector.bgp.peer-series=counts (large meshes): `show protocols` to both daemons, only
    the per-state counts, no per-peer series."""
    counts = ("--collector.bgp.peer-series=counts",)
    ea, eb = (
        exporter_for(mesh.bird_a.socket_path, args=counts),
        exporter_for(mesh.bird_b.socket_path, args=counts),
    )
    with ea, eb:
        a, b = ea.scrape(), eb.scrape()
    for m in (a, b):
        assert value(m, "netstack_bgp_peers", type="mesh", state="Established") == 1
        assert not samples(m, "netstack_bgp_peer_up") and not samples(m, "netstack_bgp_peer_info")
        assert value(m, "netstack_scrape_collector_success", collector="bgp") == 1
    assert value(a, "netstack_bgp_peers", type="node", state="Established") == 0
    assert sum(value(a, "netstack_bgp_peers", type="node", state=s) for s in ("Connect", "Active")) == 1


def test_disabled_peer_is_not_established_within_one_scrape(mesh):
    name_on_a, name_on_b = mesh_name(mesh.B4), mesh_name(mesh.A4)
    with exporter_for(mesh.bird_a.socket_path) as ea, exporter_for(mesh.bird_b.socket_path) as eb:
        before = value(ea.scrape(), "netstack_bgp_peer_last_change_timestamp_seconds", peer=mesh.B4)
        assert "disabled" in mesh.bird_a.birdc("disable", name_on_a)
        a = ea.scrape()  # the very next scrape
        assert peer_up(a, mesh.B4) == 0 and peer_state(a, mesh.B4) == "Down"
        mesh.bird_b.wait_for(name_on_b, "start")  # B has seen the shutdown notification
        b = eb.scrape()
        assert peer_up(b, mesh.A4) == 0
        assert "Administrative shutdown" in dict(next(iter(samples(b, "netstack_bgp_peer_info")))[1])["info"]

        mesh.bird_a.birdc("enable", name_on_a)
        mesh.bird_a.wait_for(name_on_a, "Established")
        a = ea.scrape()
        assert peer_up(a, mesh.B4) == 1
        assert value(a, "netstack_bgp_peer_last_change_timestamp_seconds", peer=mesh.B4) >= before


def test_stopped_daemon(mesh):
    name_on_a = mesh_name(mesh.B4)
    with exporter_for(mesh.bird_a.socket_path) as ea, exporter_for(mesh.bird_b.socket_path) as eb:
        assert peer_up(ea.scrape(), mesh.B4) == 1
        assert value(eb.scrape(), "netstack_bird_up", family="ipv4") == 1
        mesh.bird_b.stop()
        mesh.bird_a.wait_for(name_on_a, "Active")
        a = ea.scrape()
        assert peer_up(a, mesh.B4) == 0
        b = eb.scrape()
        # BIRD removes its socket on exit: BIRD is down, which is a measurement, not a failure
        assert value(b, "netstack_bird_up", family="ipv4") == 0
        assert value(b, "netstack_scrape_collector_success", collector="bgp") == 1
        assert not samples(b, "netstack_bgp_peer_up")


def test_bird6_ipv6_session_and_two_sockets_in_one_exporter():
    """Calico runs bird (IPv4) and bird6 (IPv6) side by side: one exporter reads both sockets."""
    with TwoNodes() as nodes:
        a4 = nodes.add(nodes.a, 1, config(1, nodes.A4, {mesh_name(nodes.B4): (nodes.B4, nodes.A4)}), "a4")
        a6 = nodes.add(
            nodes.a, 1, config(1, nodes.A4, {mesh_name(nodes.B6): (nodes.B6, nodes.A6)}), "a6", v6=True
        )
        b = nodes.add(
            nodes.b,
            2,
            config(
                2,
                nodes.B4,
                {mesh_name(nodes.A4): (nodes.A4, nodes.B4), mesh_name(nodes.A6): (nodes.A6, nodes.B6)},
            ),
            "b",
        )
        a4.wait_for(mesh_name(nodes.B4), "Established")
        a6.wait_for(mesh_name(nodes.B6), "Established")
        b.wait_for(mesh_name(nodes.A6), "Established")
        with exporter_for(a4.socket_path, a6.socket_path) as ea, exporter_for(b.socket_path) as eb:
            m, mb = ea.scrape(), eb.scrape()
    assert value(m, "netstack_bird_up", family="ipv4") == 1
    assert value(m, "netstack_bird_up", family="ipv6") == 1
    assert peer_up(m, nodes.B4, "ipv4") == 1
    assert peer_up(m, nodes.B6, "ipv6") == 1
    # one BIRD 2 socket, two families: each peer labelled by its address
    assert peer_up(mb, nodes.A4, "ipv4") == 1 and peer_up(mb, nodes.A6, "ipv6") == 1


class _Misbehaving:
    """A socket where BIRD's would be, that accepts and then misbehaves (real BIRD does not do
    this on purpose, so a small server stands in for a hung or broken daemon)."""

    def __init__(self, path: str, mode: str):
        self.path, self.mode = path, mode
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(8)
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "garbage":
                conn.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n")
            elif self.mode == "close-mid-reply":
                conn.sendall(b"0001 BIRD 1.6.8 ready.\n")
                conn.recv(100)
                conn.sendall(b"2002-name     proto    table    state  since       info\n1002-kernel1  Ker")
                conn.close()
            # silent: accept and never answer

    def close(self):
        self.stop.set()
        self.server.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("silent", "no complete answer within 1s"),
        ("garbage", "not a BIRD reply line"),
        ("close-mid-reply", "connection closed after"),
    ],
)
def test_misbehaving_socket_fails_the_bgp_collector_alone(tmp_path, mode, reason):
    path = str(tmp_path / "bird.ctl")
    server = _Misbehaving(path, mode)
    try:
        with exporter_for(path, args=("--collector.bgp.timeout=1s",)) as e:
            start = time.monotonic()
            m = e.scrape()
            elapsed = time.monotonic() - start
            with e.get("/") as r:
                landing = r.read().decode()
            log = e.log()
    finally:
        server.close()
    assert elapsed < 3
    assert value(m, "netstack_scrape_collector_success", collector="bgp") == 0
    assert value(m, "netstack_scrape_collector_success", collector="cpu") == 1
    assert reason in landing and reason in log
