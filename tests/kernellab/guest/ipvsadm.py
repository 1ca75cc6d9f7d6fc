"""ipvsadm's own view of the IPVS table (`ipvsadm -Ln --exact` and `ipvsadm -Ln --stats
--exact`), keyed the way the exporter labels services, to compare the two."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tests.helpers import run


@dataclass
class Dest:
    address: str
    port: int
    forward: str  # exporter spelling: masq, local, tunnel, route
    weight: int
    active: int
    inactive: int
    stats: tuple[int, ...] = ()


@dataclass
class Service:
    labels: dict[str, str]  # protocol/address/port or fwmark, and scheduler
    persistent: bool
    dests: list[Dest] = field(default_factory=list)
    stats: tuple[int, ...] = ()  # conns, in packets, out packets, in bytes, out bytes


def _address_port(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    return str(ipaddress.ip_address(address.strip("[]"))), int(port)


def _service_key(fields: list[str]) -> tuple[tuple, list[str]]:
    """("TCP", address, port) or ("FWM", mark, "IPv6"|""), and the fields after it."""
    if fields[0] == "FWM":
        v6 = len(fields) > 2 and fields[2] == "IPv6"
        return ("FWM", int(fields[1]), "IPv6" if v6 else ""), fields[3 if v6 else 2 :]
    address, port = _address_port(fields[1])
    return (fields[0], address, port), fields[2:]


def table() -> dict[tuple, Service]:
    """The table with each service's and backend's counters, from two ipvsadm calls."""
    services: dict[tuple, Service] = {}
    current = None
    for line in run(["ipvsadm", "-Ln", "--exact"]).stdout.splitlines()[3:]:
        fields = line.split()
        if line.startswith("  -> "):
            address, port = _address_port(fields[1])
            current.dests.append(Dest(address, port, fields[2].lower(), *map(int, fields[3:6])))
        elif fields:
            key, rest = _service_key(fields)
            scheduler = rest[0]
            if key[0] == "FWM":
                labels = {"fwmark": str(key[1]), "scheduler": scheduler}
            else:
                labels = {"protocol": key[0], "address": key[1], "port": str(key[2]), "scheduler": scheduler}
            current = services[key] = Service(labels, "persistent" in rest)
    current = None
    for line in run(["ipvsadm", "-Ln", "--stats", "--exact"]).stdout.splitlines()[3:]:
        fields = line.split()
        if line.startswith("  -> "):
            address, port = _address_port(fields[1])
            dest = next(d for d in current.dests if (d.address, d.port) == (address, port))
            dest.stats = tuple(map(int, fields[2:7]))
        elif fields:
            key, rest = _service_key(fields)
            current = services[key]
            current.stats = tuple(map(int, rest[:5]))
    return services


def merged(services: dict[tuple, Service]) -> list[Service]:
    """Services as the exporter lists them: IPv4 and IPv6 firewall-mark services with the same
    mark and scheduler share one label set, so their numbers are summed."""
    out: dict[tuple, Service] = {}
    for svc in services.values():
        key = tuple(sorted(svc.labels.items()))
        if key not in out:
            out[key] = Service(dict(svc.labels), svc.persistent, list(svc.dests), svc.stats)
        else:
            first = out[key]
            first.dests += svc.dests
            first.stats = tuple(a + b for a, b in zip(first.stats, svc.stats))
    return list(out.values())
