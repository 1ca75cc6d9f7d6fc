"""bgp collector: BIRD's reply format on replies captured from the real daemons (BIRD 1.6.8 and
2.0.12, see tests/fixtures/bgp/README.md), and the socket conversation against sockets that
misbehave the ways a hung or broken BIRD can."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
import zoneinfo
from pathlib import Path

import pytest

from collectors.bgp import (
    BgpCollector,
    BirdError,
    BirdSocketError,
    bird_command,
    calico_peer,
    parse_banner,
    parse_protocols,
    parse_since,
    peers_from,
    reply_lines,
    route_counts,
    socket_family,
)
from exporter.contract import Context, ParseError, SourceUnavailable
from tests.helpers import FIXTURES

BGP = FIXTURES / "bgp"
UTC = dt.UTC
# 2026-12-01 10:00:00 UTC, shortly after the fixtures were captured (09:50-09:52 UTC).
NOW = dt.datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC).timestamp()


def fixture(name: str) -> tuple[str, str]:
    """(greeting, reply) of a captured conversation."""
    text = (BGP / name).read_text()
    greeting, _, reply = text.partition("\n")
    return greeting + "\n", reply


def peers(name: str, family: str = "ipv4", routes: bool = True):
    _, reply = fixture(name)
    return {p.protocol: p for p in peers_from(parse_protocols(reply, name), family, NOW, UTC, routes)}


# --- reply format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, version", [("bird1-show-protocols.txt", "1.6.8"), ("bird2-show-protocols.txt", "2.0.12")]
)
def test_greeting_gives_the_version(name, version):
    assert parse_banner(fixture(name)[0]) == version


def test_bird1_rows_with_calico_names():
    got = peers("bird1-show-protocols-all.txt")
    assert set(got) == {"Mesh_198_18_0_2", "Node_198_18_0_9", "Global_198_18_0_10_port_1790"}
    mesh = got["Mesh_198_18_0_2"]
    assert (mesh.peer, mesh.type, mesh.family, mesh.state, mesh.info) == (
        "198.18.0.2",
        "mesh",
        "ipv4",
        "Established",
        "",
    )
    assert (mesh.imported, mesh.exported) == (3, 2)
    assert mesh.since == dt.datetime(2026, 12, 1, 9, 50, 2, tzinfo=UTC).timestamp()
    node = got["Node_198_18_0_9"]
    assert (node.peer, node.type, node.state, node.info) == (
        "198.18.0.9",
        "node",
        "Connect",
        "Socket: No route to host",
    )
    glob = got["Global_198_18_0_10_port_1790"]
    assert (glob.peer, glob.type) == ("198.18.0.10:1790", "global")


def test_kernel_device_direct_static_rows_are_not_peers():
    _, reply = fixture("bird2-show-protocols.txt")
    protocols = parse_protocols(reply)
    assert [p.proto for p in protocols] == ["Device", "Direct", "Kernel", "Static", "BGP"]
    assert [p.protocol for p in peers_from(protocols, "ipv4", NOW, UTC, False)] == ["Mesh_198_18_0_1"]


def test_bird2_channels_and_millisecond_times():
    mesh = peers("bird2-show-protocols-all.txt")["Mesh_198_18_0_1"]
    assert (mesh.state, mesh.imported, mesh.exported) == ("Established", 2, 3)
    assert mesh.since == pytest.approx(dt.datetime(2026, 12, 1, 9, 50, 2, 68000, tzinfo=UTC).timestamp())


def test_bird2_dual_stack_on_one_socket_labels_each_peer_by_its_address():
    got = peers("bird2-isolong-dualstack-all.txt", family="ipv4")
    v6 = got["Mesh_fd00_198_18__1"]
    assert (v6.peer, v6.family, v6.imported, v6.exported) == ("fd00:198:18::1", "ipv6", 1, 1)
    v4 = got["Mesh_198_18_0_1"]
    assert (v4.family, v4.imported, v4.exported) == ("ipv4", 2, 3)
    # iso long: date and time, two words in the since column, not part of the info text
    assert v4.since == dt.datetime(2026, 12, 1, 9, 51, 39, tzinfo=UTC).timestamp() and v4.info == ""


def test_bird6_date_only_times_mean_midnight():
    mesh = peers("bird6-dateformat-show-protocols-all.txt", family="ipv6")["Mesh_fd00_198_18__2"]
    assert (mesh.peer, mesh.family, mesh.state) == ("fd00:198:18::2", "ipv6", "Established")
    assert mesh.since == dt.datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def test_disabled_peer_is_down_and_its_neighbor_sees_the_shutdown():
    down = peers("bird1-disabled-all.txt")["Mesh_198_18_0_2"]
    assert (down.state, down.info, down.imported) == ("Down", "", 0)
    other_side = peers("bird2-peer-disabled-all.txt")["Mesh_198_18_0_1"]
    assert (other_side.state, other_side.info) == ("Passive", "Received: Administrative shutdown")


def test_stopped_peer_daemon_shows_as_active_with_the_socket_error():
    mesh = peers("bird1-peer-stopped-all.txt")["Mesh_198_18_0_2"]
    assert (mesh.state, mesh.info) == ("Active", "Socket: Connection refused")


@pytest.mark.parametrize("name", ["bird1-syntax-error.txt", "bird2-no-match.txt"])
def test_error_replies_raise_bird_error(name):
    with pytest.raises(BirdError, match="BIRD answered '900"):
        parse_protocols(fixture(name)[1], name)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no final line"),
        ("2002-name proto\n1002-kernel1 Kernel master up 09:50:00\n", "no final line"),
        ("HTTP/1.1 400 Bad Request\n", "not a BIRD reply line"),
        (" continuation first\n0000 \n", "continuation line before"),
        ("0000 \n1002-late row\n", "text after the end"),
        ("1002-kernel1 Kernel\n0000 \n", "fewer than 5 columns"),
        ("1006-  Preference: 10\n0000 \n", "details before any protocol row"),
        ("1007-  something else\n0000 \n", "unexpected reply code 1007"),
        ("2002-name\x00\n", "no final line"),
    ],
)
def test_malformed_replies_raise_parse_error(text, message):
    with pytest.raises(ParseError, match=message):
        parse_protocols(text)


def test_not_a_greeting():
    with pytest.raises(ParseError, match="not a BIRD greeting"):
        parse_banner("0001 Welcome to something else\n")


def test_reply_lines_keep_the_code_of_continued_rows():
    _, reply = fixture("bird1-show-protocols.txt")
    codes = [code for code, _ in reply_lines(reply)]
    assert codes[0] == 2002 and set(codes[1:-1]) == {1002} and codes[-1] == 0


def test_route_counts_with_filtered_routes_and_channel_choice():
    from collectors.bgp import Protocol

    p = Protocol(
        "x",
        "BGP",
        "---",
        "up",
        "",
        "",
        channels={
            "ipv4": {"Routes": "5 imported, 2 filtered, 4 exported, 5 preferred"},
            "ipv6": {"Routes": "1 imported, 1 exported, 1 preferred"},
        },
    )
    assert route_counts(p, "ipv4") == (5, 4)
    assert route_counts(p, "ipv6") == (1, 1)
    assert route_counts(p, "other") == (6, 5)
    assert route_counts(Protocol("y", "BGP", "master", "down", "", ""), "ipv4") == (0, 0)


# --- Calico names, times, socket specs ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Mesh_198_18_0_2", ("mesh", "198.18.0.2")),
        ("Node_10_0_0_1", ("node", "10.0.0.1")),
        ("Global_192_0_2_1", ("global", "192.0.2.1")),
        ("Global_192_0_2_1_port_1790", ("global", "192.0.2.1:1790")),
        ("Local_Workload_10_65_0_7", ("local_workload", "10.65.0.7")),
        ("Mesh_fd00_198_18__2", ("mesh", "fd00:198:18::2")),
        ("Node_2001_db8__1_port_179", ("node", "[2001:db8::1]:179")),
        ("Mesh_300_1_1_1", None),  # not an address
        ("Mesh_", None),
        ("uplink0", None),
        ("Mesh_198_18_0_2_extra", None),
    ],
)
def test_calico_peer_names(name, expected):
    assert calico_peer(name) == expected


def test_other_bgp_protocols_use_the_neighbor_address():
    text = (
        "2002-name proto table state since info\n"
        "1002-uplink0 BGP master up 09:50:02 Established\n"
        "1006-  BGP state:          Established\n"
        "     Neighbor address: 198.18.5.1\n"
        "0000 \n"
    )
    (p,) = peers_from(parse_protocols(text), "ipv4", NOW, UTC, True)
    assert (p.peer, p.type, p.family) == ("198.18.5.1", "other", "ipv4")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("09:50:02", dt.datetime(2026, 12, 1, 9, 50, 2, tzinfo=UTC)),
        ("09:50:02.068", dt.datetime(2026, 12, 1, 9, 50, 2, 68000, tzinfo=UTC)),
        ("10:00:30", dt.datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)),  # clocks a little apart
        ("23:10:00", dt.datetime(2026, 11, 30, 23, 10, 0, tzinfo=UTC)),  # later than now: yesterday
        ("2026-11-02", dt.datetime(2026, 11, 2, tzinfo=UTC)),
        ("2026-11-02 17:01:02", dt.datetime(2026, 11, 2, 17, 1, 2, tzinfo=UTC)),
        ("2026-11-02 17:01:02.5", dt.datetime(2026, 11, 2, 17, 1, 2, 500000, tzinfo=UTC)),
    ],
)
def test_since_forms(text, expected):
    assert parse_since(text, NOW, UTC) == pytest.approx(expected.timestamp())


@pytest.mark.parametrize("text", ["", "01-12", "yesterday", "2026-13-01", "25:00:00", "2026-11-02 x"])
def test_since_other_formats_give_no_time(text):
    assert parse_since(text, NOW, UTC) is None


def test_since_in_birds_time_zone():
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")  # UTC+1 in December
    assert parse_since("10:50:02", NOW, berlin) == dt.datetime(2026, 12, 1, 9, 50, 2, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("/var/run/calico/bird.ctl", ("ipv4", "/var/run/calico/bird.ctl")),
        ("/var/run/calico/bird6.ctl", ("ipv6", "/var/run/calico/bird6.ctl")),
        ("ipv6=/run/x.ctl", ("ipv6", "/run/x.ctl")),
    ],
)
def test_socket_specs(spec, expected):
    assert socket_family(spec) == expected


@pytest.mark.parametrize("values", [["ipv5=/x"], ["relative/bird.ctl"]])
def test_bad_socket_option_values(values):
    option = next(o for o in BgpCollector.options if o.name == "socket")
    with pytest.raises(ValueError):
        option.check(values)


def test_bad_time_zone_option():
    option = next(o for o in BgpCollector.options if o.name == "time-zone")
    with pytest.raises(ValueError, match="unknown time zone"):
        option.check("Mars/Olympus")


# --- the conversation on a socket ---------------------------------------------------------------


class FakeSocket:
    """A Unix socket server standing in for BIRD where real BIRD cannot misbehave: it answers
    with a captured conversation, or hangs, closes early, or sends garbage."""

    def __init__(self, path: Path, mode: str = "replay", fixture_name: str = "bird1-show-protocols-all.txt"):
        self.path, self.mode = str(path), mode
        self.greeting, self.reply = fixture(fixture_name)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(8)
        self.stop = threading.Event()
        self.commands: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        if self.mode == "silent":
            self.stop.wait(10)
            return
        if self.mode == "garbage":
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            self.stop.wait(10)
            return
        conn.sendall(self.greeting.encode())
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            self.commands.append(conn.recv(100))
        if self.mode == "no-reply":
            self.stop.wait(10)
        elif self.mode == "close-mid-reply":
            conn.sendall(self.reply.encode()[:300])
        elif self.mode == "garbage-reply":
            conn.sendall(self.reply.encode()[:200] + b"\n<html>oops</html>\n")
            self.stop.wait(10)
        else:
            conn.sendall(self.reply.encode())

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@pytest.fixture
def fake(tmp_path):
    servers = []

    def make(mode="replay", name="bird1-show-protocols-all.txt", sock="bird.ctl"):
        server = FakeSocket(tmp_path / sock, mode, name)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.close()


def test_command_reads_greeting_and_reply(fake):
    server = fake()
    version, reply = bird_command(server.path, "show protocols all", 2)
    assert version == "1.6.8" and reply.endswith("0000 \n")
    assert server.commands == [b"show protocols all\n"]


@pytest.mark.parametrize(
    "mode, message, fast",
    [
        ("silent", "no complete answer within 0.5s .0 bytes of the greeting", False),
        ("no-reply", "no complete answer within 0.5s .* of the reply to 'show protocols all'", False),
        ("close-mid-reply", "connection closed after .* before the end of the reply", True),
        ("garbage", "not a BIRD reply line in the greeting", True),
        ("garbage-reply", "not a BIRD reply line in the reply", True),
    ],
)
def test_misbehaving_socket_fails_within_the_timeout_with_a_reason(fake, mode, message, fast):
    server = fake(mode)
    start = time.monotonic()
    with pytest.raises((BirdSocketError, ParseError), match=message):
        bird_command(server.path, "show protocols all", 0.5)
    elapsed = time.monotonic() - start
    assert elapsed < (0.3 if fast else 0.9)


def test_reply_size_is_bounded(fake):
    server = fake()
    with pytest.raises(BirdSocketError, match="larger than 1000 bytes"):
        bird_command(server.path, "show protocols all", 2, max_bytes=1000)


def collector(tmp_path, **options) -> BgpCollector:
    return BgpCollector(Context(options={"socket": [str(tmp_path / "bird.ctl")], **options}))


def families(c: BgpCollector) -> dict:
    return {f.name: {tuple(s.labels.items()): s.value for s in f.samples} for f in c.collect()}


def test_collector_unavailable_without_a_socket(tmp_path):
    with pytest.raises(SourceUnavailable, match=r"no BIRD control socket at .*bird\.ctl"):
        collector(tmp_path).probe()


def test_collector_per_peer_series(fake, tmp_path):
    fake()
    c = collector(tmp_path)
    c.probe()
    got = families(c)
    assert got["netstack_bird_up"] == {(("family", "ipv4"),): 1}
    assert got["netstack_bird_info"] == {(("family", "ipv4"), ("version", "1.6.8")): 1}
    mesh = (("peer", "198.18.0.2"), ("type", "mesh"), ("family", "ipv4"))
    assert got["netstack_bgp_peer_up"][mesh] == 1
    assert got["netstack_bgp_peer_up"][(("peer", "198.18.0.9"), ("type", "node"), ("family", "ipv4"))] == 0
    assert got["netstack_bgp_peer_imported_routes"][mesh] == 3
    assert got["netstack_bgp_peer_exported_routes"][mesh] == 2
    info = got["netstack_bgp_peer_info"]
    assert info[(*mesh, ("protocol", "Mesh_198_18_0_2"), ("state", "Established"), ("info", ""))] == 1
    assert got["netstack_bgp_peers"][(("family", "ipv4"), ("type", "node"), ("state", "Connect"))] == 1
    assert got["netstack_bgp_peers"][(("family", "ipv4"), ("type", "mesh"), ("state", "Active"))] == 0
    assert got["netstack_bgp_peer_series_capped"] == {(): 0}
    assert len(got["netstack_bgp_peer_last_change_timestamp_seconds"]) == 3


def test_collector_counts_mode_sends_show_protocols_and_exports_no_peer_series(fake, tmp_path):
    server = fake(name="bird1-show-protocols.txt")
    c = collector(tmp_path, **{"peer-series": "counts"})
    got = families(c)
    assert server.commands == [b"show protocols\n"]
    assert "netstack_bgp_peer_up" not in got and "netstack_bgp_peer_series_capped" not in got
    assert got["netstack_bgp_peers"][(("family", "ipv4"), ("type", "mesh"), ("state", "Established"))] == 1


def test_collector_caps_per_peer_series(fake, tmp_path):
    fake()
    got = families(collector(tmp_path, **{"max-peers": 2}))
    assert got["netstack_bgp_peer_series_capped"] == {(): 1}
    assert "netstack_bgp_peer_up" not in got
    assert sum(got["netstack_bgp_peers"].values()) == 3


def test_collector_reports_bird_down_once_its_socket_was_seen(fake, tmp_path):
    server = fake()
    c = collector(tmp_path)
    c.probe()
    families(c)
    server.close()  # BIRD stopped: its socket is gone
    assert families(c)["netstack_bird_up"] == {(("family", "ipv4"),): 0}
    c.probe()  # still available: BIRD being down is what we report


def test_collector_stale_socket_is_bird_down(tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "bird.ctl"))  # bound, never listening: connect is refused
    try:
        assert families(collector(tmp_path))["netstack_bird_up"] == {(("family", "ipv4"),): 0}
    finally:
        stale.close()


def test_collector_fails_on_a_silent_socket(fake, tmp_path):
    fake("no-reply")
    with pytest.raises(BirdSocketError, match=r"no complete answer within 0\.2s"):
        families(collector(tmp_path, timeout=0.2))


def test_collector_falls_back_to_the_next_path_of_a_family(fake, tmp_path):
    fake(name="bird2-show-protocols-all.txt", sock="fallback.ctl")
    c = BgpCollector(
        Context(options={"socket": [str(tmp_path / "bird.ctl"), "ipv4=" + str(tmp_path / "fallback.ctl")]})
    )
    got = families(c)
    assert got["netstack_bird_info"] == {(("family", "ipv4"), ("version", "2.0.12")): 1}


def test_duplicate_peer_labels_fall_back_to_protocol_names(fake, tmp_path):
    text = (
        "0001 BIRD 2.0.12 ready.\n"
        "2002-Name Proto Table State Since Info\n"
        "1002-up_a BGP --- up 09:50:02.068 Established\n"
        "1006-  BGP state:          Established\n"
        "     Neighbor address: 198.18.5.1\n"
        "1002-up_b BGP --- up 09:50:02.068 Established\n"
        "1006-  BGP state:          Established\n"
        "     Neighbor address: 198.18.5.1\n"
        "0000 \n"
    )
    path = tmp_path / "dup.txt"
    path.write_text(text)
    server = FakeSocket(tmp_path / "bird.ctl", "replay", str(path))
    try:
        got = families(collector(tmp_path))
    finally:
        server.close()
    assert {dict(k)["peer"] for k in got["netstack_bgp_peer_up"]} == {"198.18.5.1", "up_b"}
