"""bgp: Calico's BGP sessions, as BIRD reports them on its control socket.

This is what `calicoctl node status` does: connect to BIRD's control socket (bird.ctl for IPv4,
bird6.ctl for IPv6), read the greeting, send `show protocols all` (`show protocols` in counts
mode) and read BIRD's numbered reply lines:

    0001 BIRD 1.6.8 ready.                      greeting
    2002-name     proto    table    state  since       info      table heading
    1002-Mesh_198_18_0_2 BGP  master up  09:50:02  Established  first row
     Node_198_18_0_9 BGP  master start 09:50:00 Connect ...      rows continue with a space
    1006-  Description:    Connection to BGP peer               details (`all` only)
    0000                                                        end of the reply

A line whose four-digit code is followed by a space ends the reply; codes 8000 and above are
errors. Calico names its BGP protocols Mesh_<ip> (node-to-node mesh), Node_<ip> (node-specific
peer), Global_<ip> (global peer) and Local_Workload_<ip>, with '_' for the address separators
and _port_<n> when the peer listens on another port.

BIRD prints times in its own local time zone, as a time of day for changes in the last 20 hours
and as a date before that; see parse_since.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import socket
import stat
import time
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.contract import Collector, Option, ParseError, SourceUnavailable
from exporter.metrics import GaugeMetricFamily, Metric

DEFAULT_SOCKETS = (
    "/var/run/calico/bird.ctl",
    "/var/run/calico/bird6.ctl",
    "/var/run/bird/bird.ctl",
    "/var/run/bird/bird6.ctl",
)
FAMILIES = ("ipv4", "ipv6")
# BGP states as BIRD names them (RFC 4271 plus BIRD's Passive and Close; Down = disabled).
BGP_STATES = (
    "Idle",
    "Connect",
    "Active",
    "Passive",
    "OpenSent",
    "OpenConfirm",
    "Established",
    "Close",
    "Down",
)
PEER_TYPES = {"Mesh": "mesh", "Node": "node", "Global": "global", "Local_Workload": "local_workload"}
OTHER = "other"
MAX_REPLY_BYTES = 32 << 20  # `show protocols all`: ~1.7 KB per Established BIRD 2 peer
DEFAULT_MAX_PEERS = 1000

_CALICO_NAME = re.compile(r"(Mesh|Node|Global|Local_Workload)_([0-9A-Fa-f_]+?)(?:_port_(\d+))?")
_IPV4_NAME = re.compile(r"\d{1,3}_\d{1,3}_\d{1,3}_\d{1,3}")
_LINE = re.compile(rb"\d{4}[ -]")
_BANNER = re.compile(r"BIRD (\S+) ready\.")
_ROUTES = re.compile(r"(\d+) (imported|filtered|exported|preferred)")
_TIME_OF_DAY = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)")
_DETAIL = re.compile(r" *(Routes|Neighbor address|BGP state|Last error|State): *(.*)")


class BirdError(Exception):
    """BIRD answered the command with an error (codes 8000-9999)."""


# --- reply format (pure) ----------------------------------------------------------------------


def reply_lines(text: str, source: str = "bird") -> list[tuple[int, str]]:
    """[(code, text)] of one complete reply; continuation lines carry the code before them.
    Raises BirdError for an error reply, ParseError for anything that is not BIRD's format."""
    out: list[tuple[int, str]] = []
    code = -1
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        if line.startswith(" "):
            if code < 0:
                raise ParseError(f"{source}:{lineno}: continuation line before any numbered line")
            out.append((code, line[1:]))
            continue
        if len(line) < 5 or not line[:4].isdigit() or line[4] not in " -":
            raise ParseError(f"{source}:{lineno}: not a BIRD reply line")
        code = int(line[:4])
        if code >= 8000:
            raise BirdError(f"{source}: BIRD answered {line[:200]!r}")
        out.append((code, line[5:]))
        if line[4] == " ":
            if lineno != len(lines):
                raise ParseError(f"{source}:{lineno}: text after the end of the reply")
            return out
    raise ParseError(f"{source}: reply has no final line (a code followed by a space)")


def parse_banner(text: str, source: str = "bird") -> str:
    """BIRD's version from its greeting '0001 BIRD 2.0.12 ready.'."""
    lines = reply_lines(text, source)
    m = _BANNER.fullmatch(lines[0][1].strip()) if lines[0][0] == 1 else None
    if m is None:
        raise ParseError(f"{source}: not a BIRD greeting")
    return m.group(1)


@dataclass
class Protocol:
    name: str
    proto: str  # BGP, Kernel, Device, Static, ...
    table: str
    state: str  # up, start, down, ...
    since: str
    info: str
    details: dict[str, str] = field(default_factory=dict)  # `show protocols all`
    channels: dict[str, dict[str, str]] = field(default_factory=dict)  # BIRD 2 channels


def _split_row(text: str, source: str) -> Protocol:
    fields = text.split(None, 4)
    if len(fields) < 5:
        raise ParseError(f"{source}: protocol row with fewer than 5 columns")
    name, proto, table, state, rest = fields
    since, _, info = rest.partition(" ")
    info = info.strip()
    # `timeformat protocol iso long` prints '2026-12-01 09:50:02': two words.
    if _DATE.fullmatch(since) and _TIME_OF_DAY.match(info):
        clock, _, info = info.partition(" ")
        since, info = f"{since} {clock}", info.strip()
    return Protocol(name, proto, table, state, since, info)


def parse_protocols(text: str, source: str = "bird") -> list[Protocol]:
    """The rows of a `show protocols [all]` reply, with the details of `all` when present."""
    protocols: list[Protocol] = []
    channel: dict[str, str] | None = None
    for code, line in reply_lines(text, source):
        if code == 1002:
            protocols.append(_split_row(line, source))
            channel = None
        elif code == 1006:
            if not protocols:
                raise ParseError(f"{source}: protocol details before any protocol row")
            # Only a few detail lines are kept (BIRD 2 prints ~60 per BGP peer): an indent of at
            # most 2 ends a channel section, '  Channel ipv4' starts one.
            if line[:3] != "   ":
                channel = None
                if line.startswith("  Channel "):
                    channel = protocols[-1].channels.setdefault(line[10:].strip(), {})
                    continue
            m = _DETAIL.match(line)
            if m:
                target = channel if channel is not None else protocols[-1].details
                target.setdefault(m[1], m[2].strip())
        elif code in (0, 2002):
            continue
        else:
            raise ParseError(f"{source}: unexpected reply code {code:04d} in show protocols")
    return protocols


def calico_peer(name: str) -> tuple[str, str] | None:
    """(type, peer) for a protocol named the way Calico names BGP peers, else None.
    peer is the address ('198.18.0.2', 'fd00::2'), with ':port' ('[fd00::2]:1790') when named."""
    m = _CALICO_NAME.fullmatch(name)
    if m is None:
        return None
    prefix, encoded, port = m.groups()
    text = encoded.replace("_", "." if _IPV4_NAME.fullmatch(encoded) else ":")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    peer = str(address)
    if port:
        peer = f"[{peer}]:{port}" if address.version == 6 else f"{peer}:{port}"
    return PEER_TYPES[prefix], peer


def peer_family(peer: str) -> str | None:
    """ipv4 or ipv6 for a peer label made by calico_peer or a neighbor address, else None."""
    if peer.startswith("["):
        peer = peer[1:].partition("]")[0]
    elif peer.count(":") == 1:
        peer = peer.partition(":")[0]
    try:
        return f"ipv{ipaddress.ip_address(peer).version}"
    except ValueError:
        return None


def bgp_state(p: Protocol) -> tuple[str, str]:
    """(BGP state, the rest of BIRD's info text). A protocol that is down (disabled, or stopped
    after an error) has no BGP state in its info column, only the last error: BIRD calls it Down."""
    if p.state == "down":
        return "Down", p.info
    state, _, rest = p.info.partition(" ")
    return (state or "Down"), rest.strip()


def route_counts(p: Protocol, family: str) -> tuple[int, int]:
    """(imported, exported) routes: BIRD 1.6 has one Routes line; BIRD 2 one per channel, of
    which the channel of the peer's family is taken (else the sum). Absent (down) = 0."""
    if p.channels:
        rows = [p.channels[family]] if family in p.channels else list(p.channels.values())
    else:
        rows = [p.details]
    imported = exported = 0
    for row in rows:
        counts = {kind: int(n) for n, kind in _ROUTES.findall(row.get("Routes", ""))}
        imported += counts.get("imported", 0)
        exported += counts.get("exported", 0)
    return imported, exported


def parse_since(text: str, now: float, tz: dt.tzinfo | None) -> float | None:
    """The Unix time of BIRD's 'since' column, read in time zone tz (None: the local one).

    Forms: '09:50:02' and '09:50:02.068' (BIRD 1.6 and 2 defaults, for changes less than 20 hours
    ago: today, or yesterday when that would lie in the future), '2026-12-01' (older changes:
    midnight, a day's precision), '2026-12-01 09:50:02[.068]' (iso long). None for other
    `timeformat protocol` settings."""
    date_part, _, clock_part = text.strip().partition(" ")
    day = _DATE.fullmatch(date_part)
    clock = _TIME_OF_DAY.fullmatch(clock_part if day else date_part)
    if (day and clock_part and not clock) or (not day and (clock_part or not clock)):
        return None
    if day:
        year, month, mday = int(day[1]), int(day[2]), int(day[3])
    else:
        today = dt.datetime.fromtimestamp(now, tz)
        year, month, mday = today.year, today.month, today.day
    h = m = s = micro = 0
    if clock:
        h, m, s = int(clock[1]), int(clock[2]), int(clock[3])
        micro = int((clock[4] or "0").ljust(6, "0"))
    try:
        when = dt.datetime(year, month, mday, h, m, s, micro, tzinfo=tz)
    except ValueError:  # 2026-13-01, 25:00:00
        return None
    stamp = when.timestamp()
    if not day and stamp > now + 60:  # a time of day later than now: it was yesterday
        stamp = (when - dt.timedelta(days=1)).timestamp()
    return stamp


def socket_family(spec: str) -> tuple[str, str]:
    """(family, path) of a --collector.bgp.socket value: 'ipv6=/path' or a path, whose family is
    ipv6 when the file is called bird6*, else ipv4."""
    family, sep, path = spec.partition("=")
    if not sep:
        path = spec
        family = "ipv6" if os.path.basename(spec).startswith("bird6") else "ipv4"
    return family, path


def _check_sockets(specs: list[str]) -> None:
    for spec in specs:
        family, path = socket_family(spec)
        if family not in FAMILIES:
            raise ValueError(f"invalid family {family!r} in {spec!r} (ipv4=PATH or ipv6=PATH)")
        if not os.path.isabs(path):
            raise ValueError(f"socket path must be absolute, got {path!r}")


def _check_time_zone(name: str) -> None:
    if name:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} (an IANA name such as UTC or Europe/Berlin)"
            ) from None


# --- the socket conversation ------------------------------------------------------------------


class BirdSocketError(Exception):
    """The socket accepted but did not behave like BIRD (silent, closed early, too much)."""


def bird_command(
    path: str, command: str, timeout: float, max_bytes: int = MAX_REPLY_BYTES
) -> tuple[str, str]:
    """(BIRD version, reply text) of one command; the whole conversation within `timeout`.
    Connection errors (no socket, refused) propagate as OSError: BIRD is not running."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        reader = _ReplyReader(sock, path, deadline, timeout, max_bytes)
        version = parse_banner(reader.reply("the greeting"), path)
        sock.sendall(command.encode("ascii") + b"\n")
        return version, reader.reply(f"the reply to {command!r}")


class _ReplyReader:
    def __init__(self, sock: socket.socket, path: str, deadline: float, timeout: float, max_bytes: int):
        self.sock, self.path, self.deadline, self.timeout = sock, path, deadline, timeout
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.total = 0

    def reply(self, what: str) -> str:
        """Bytes up to and including the reply's final line. Each line is checked as it arrives,
        so garbage fails at once instead of at the timeout."""
        start = scanned = 0
        while True:
            while (nl := self.buf.find(b"\n", scanned)) >= 0:
                line = bytes(self.buf[scanned:nl])
                scanned = nl + 1
                if line.startswith(b" "):
                    continue
                if not _LINE.match(line):
                    raise ParseError(f"{self.path}: not a BIRD reply line in {what}")
                if line[4:5] == b" ":
                    text = self.buf[start:scanned].decode("utf-8", "replace")
                    del self.buf[:scanned]
                    return text
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise BirdSocketError(
                    f"{self.path}: no complete answer within {self.timeout:g}s "
                    f"({self.total} bytes of {what} received)"
                )
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                raise BirdSocketError(
                    f"{self.path}: no complete answer within {self.timeout:g}s "
                    f"({self.total} bytes of {what} received)"
                ) from None
            if not data:
                raise BirdSocketError(
                    f"{self.path}: connection closed after {self.total} bytes, before the end of {what}"
                )
            self.total += len(data)
            if self.total > self.max_bytes:
                raise BirdSocketError(f"{self.path}: {what} is larger than {self.max_bytes} bytes")
            self.buf += data


# --- the collector ----------------------------------------------------------------------------


@dataclass
class Peer:
    peer: str
    type: str
    family: str
    protocol: str
    state: str
    info: str
    since: float | None
    imported: int | None
    exported: int | None


def peers_from(
    protocols: list[Protocol], default_family: str, now: float, tz: dt.tzinfo | None, with_routes: bool
) -> list[Peer]:
    """The BGP protocols of one daemon as peers. The family is the peer address's (so a dual-stack
    BIRD 2 on one socket labels each peer right), else the socket's."""
    peers = []
    for p in protocols:
        if p.proto != "BGP":
            continue
        named = calico_peer(p.name)
        if named is not None:
            kind, peer = named
        else:
            kind, peer = OTHER, p.details.get("Neighbor address") or p.name
        family = peer_family(peer) or default_family
        state, info = bgp_state(p)
        imported = exported = None
        if with_routes:
            imported, exported = route_counts(p, family)
        peers.append(
            Peer(peer, kind, family, p.name, state, info, parse_since(p.since, now, tz), imported, exported)
        )
    return peers


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _existing_socket(paths: list[str]) -> str | None:
    for path in paths:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


class BgpCollector(Collector):
    name = "bgp"
    default_enabled = True
    help = "Calico's BGP sessions (BIRD 1.6 and 2) from BIRD's control socket: state per peer."
    options = (
        Option(
            "socket",
            "BIRD control socket (repeatable): ipv4=PATH, ipv6=PATH, or a PATH whose "
            "file name gives the family (bird6* = ipv6, else ipv4). Per family the first that "
            "exists is used.",
            list(DEFAULT_SOCKETS),
            "list",
            validate=_check_sockets,
        ),
        Option(
            "timeout",
            "Longest one conversation with one BIRD socket may take; a socket that "
            "is silent for longer fails the collection.",
            2.0,
            "duration",
            min=0.01,
            max=60,
        ),
        Option(
            "peer-series",
            "per-peer: series for each BGP peer (N-1 per node in a full mesh); "
            "counts: only netstack_bgp_peers per type and state, for large meshes",
            "per-peer",
            choices=("per-peer", "counts"),
        ),
        Option(
            "max-peers",
            "Above this many BGP peers only the per-state counts are exported and "
            "netstack_bgp_peer_series_capped is 1.",
            DEFAULT_MAX_PEERS,
            "int",
            min=0,
            max=1_000_000,
        ),
        Option(
            "time-zone",
            "Time zone BIRD prints its times in (IANA name, e.g. UTC); empty: the "
            "exporter's own local time zone.",
            "",
            validate=_check_time_zone,
        ),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self._sockets: dict[str, list[str]] = {}
        for spec in self.option("socket"):
            family, path = socket_family(spec)
            self._sockets.setdefault(family, []).append(path)
        zone = self.option("time-zone")
        self._tz = zoneinfo.ZoneInfo(zone) if zone else None
        self._per_peer = self.option("peer-series") == "per-peer"
        self._seen: set[str] = set()  # families whose socket existed once: report them as down

    def probe(self) -> None:
        if self._seen or any(_existing_socket(paths) for paths in self._sockets.values()):
            return
        listed = ", ".join(p for paths in self._sockets.values() for p in paths)
        raise SourceUnavailable(f"no BIRD control socket at {listed}")

    def collect(self) -> Iterable[Metric]:
        command = "show protocols all" if self._per_peer else "show protocols"
        bird_up = _gauge(
            "netstack_bird_up",
            "1 when BIRD answers on its control socket for this "
            "address family, 0 when its socket is gone or refuses connections.",
            ["family"],
        )
        bird_info = _gauge("netstack_bird_info", "BIRD's version, from its greeting.", ["family", "version"])
        peers: list[Peer] = []
        for family, paths in self._sockets.items():
            path = _existing_socket(paths)
            if path is None:
                if family in self._seen:
                    bird_up.add_metric([family], 0)
                continue
            self._seen.add(family)
            try:
                version, reply = bird_command(path, command, self.option("timeout"))
            except (FileNotFoundError, ConnectionRefusedError):
                bird_up.add_metric([family], 0)  # stopped, or a stale socket after a crash
                continue
            except PermissionError:
                raise BirdSocketError(
                    f"{path}: permission denied (connecting needs write access to the socket)"
                ) from None
            except OSError as e:
                if e.errno in (errno.ECONNRESET, errno.EPIPE):
                    raise BirdSocketError(f"{path}: connection reset by BIRD") from None
                raise
            bird_up.add_metric([family], 1)
            bird_info.add_metric([family, version], 1)
            peers += peers_from(
                parse_protocols(reply, path), family, time.time(), self._tz, with_routes=self._per_peer
            )
        return [bird_up, bird_info, *self._peer_families(peers)]

    def _peer_families(self, peers: list[Peer]) -> list[Metric]:
        counts = _gauge(
            "netstack_bgp_peers",
            "BGP peers by address family, type (mesh, node, global, local_workload, other) and BGP state.",
            ["family", "type", "state"],
        )
        tally: dict[tuple[str, str], dict[str, int]] = {}
        for p in peers:
            states = tally.setdefault((p.family, p.type), dict.fromkeys(BGP_STATES, 0))
            states[p.state] = states.get(p.state, 0) + 1
        for (family, kind), states in sorted(tally.items()):
            for state, n in states.items():
                counts.add_metric([family, kind, state], n)
        out: list[Metric] = [counts]
        if not self._per_peer:
            return out
        capped = len(peers) > self.option("max-peers")
        flag = _gauge(
            "netstack_bgp_peer_series_capped",
            "1 when there are more BGP peers than "
            "--collector.bgp.max-peers and only netstack_bgp_peers is exported.",
        )
        flag.add_metric([], int(capped))
        out.append(flag)
        if capped:
            return out
        labels = ["peer", "type", "family"]
        up = _gauge("netstack_bgp_peer_up", "1 when the BGP session with this peer is Established.", labels)
        info = _gauge(
            "netstack_bgp_peer_info",
            "BGP state and BIRD's info text (last error) of the session with this peer; always 1.",
            [*labels, "protocol", "state", "info"],
        )
        since = _gauge(
            "netstack_bgp_peer_last_change_timestamp_seconds",
            "When the session's state last changed (BIRD's 'since', read in --collector.bgp.time-zone).",
            labels,
        )
        imported = _gauge("netstack_bgp_peer_imported_routes", "Routes imported from this peer.", labels)
        exported = _gauge("netstack_bgp_peer_exported_routes", "Routes exported to this peer.", labels)
        taken: set[tuple[str, str, str]] = set()
        for p in peers:
            key = (p.peer, p.type, p.family)
            if key in taken:  # two protocols to one address (another port, a VRF): their names
                key = (p.protocol, p.type, p.family)
            taken.add(key)
            values = list(key)
            up.add_metric(values, int(p.state == "Established"))
            info.add_metric([*values, p.protocol, p.state, p.info], 1)
            if p.since is not None:
                since.add_metric(values, p.since)
            imported.add_metric(values, p.imported or 0)
            exported.add_metric(values, p.exported or 0)
        return [*out, up, info, since, imported, exported]


COLLECTOR = BgpCollector
