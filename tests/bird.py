"""Real BIRD daemons in network namespaces, configured the way Calico configures its BIRD.

BIRD 1.6 (Debian `bird`, the base of Calico's fork) and BIRD 2 (Debian `bird2`) cannot be
installed together (bird2 Conflicts: bird): scripts/test.sh installs bird2 and extracts bird's
package into .tools/bird1 (dpkg-deb -x). Each daemon runs in the foreground (-f) as a child of
the test, with its control socket at a path the test chooses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.helpers import ROOT, Netns, need, need_root, need_tool, run, stop_process

BIRD1_ROOT = Path(os.environ.get("NETSTACK_TEST_BIRD1_ROOT", ROOT / ".tools" / "bird1"))
AS_NUMBER = 64512


def bird_binary(version: int, v6: bool = False) -> str:
    """Path of BIRD 1.6's bird/bird6 or BIRD 2's bird; skips (fails in CI) when absent."""
    if version == 1:
        path = BIRD1_ROOT / "usr" / "sbin" / ("bird6" if v6 else "bird")
        need(
            path.exists(),
            f"needs BIRD 1.6 at {path} (scripts/test.sh extracts Debian's bird "
            f"there: bird2 conflicts with it as a package)",
        )
        return str(path)
    path = need_tool("bird", "bird2")
    out = run([path, "--version"], check=False)
    need((out.stdout + out.stderr).startswith("BIRD version 2."), f"{path} is not BIRD 2")
    return path


def birdc_binary(version: int) -> str:
    if version == 1:
        return str(BIRD1_ROOT / "usr" / "sbin" / "birdc")
    return need_tool("birdc", "bird2")


def mesh_name(address: str) -> str:
    """Calico's protocol name for a node-to-node mesh peer: Mesh_198_18_0_2, Mesh_fd00__2."""
    return "Mesh_" + address.replace(".", "_").replace(":", "_")


def _family(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


def config(
    version: int,
    router_id: str,
    peers: dict[str, tuple[str, str]],
    statics: tuple[str, ...] = (),
    extra: str = "",
) -> str:
    """A BIRD configuration in the shape of Calico's bird.cfg template: kernel, device, direct,
    static routes to announce, a bgp_template, and one protocol per peer
    ({protocol name: (neighbor address, source address)}). BIRD 1.6 speaks one family per daemon
    (bird or bird6); BIRD 2 gets one channel per peer, so one daemon can be dual-stack."""
    common = f"""\
  description "Connection to BGP peer";
  local as {AS_NUMBER};
  graceful restart;
  connect delay time 1;
  connect retry time 1;
  error wait time 1,5;
"""
    routes = "".join(f"  route {r} blackhole;\n" for r in statics)
    lines = [f"router id {router_id};", extra, "protocol device { scan time 2; }"]
    if version == 1:
        lines += [
            "protocol kernel { learn; persist; scan time 2; import all; export none; }",
            'protocol direct { interface -"cali*", -"kube-ipvs*", "*"; }',
        ]
        if statics:
            lines.append("protocol static {\n" + routes + "}")
        lines.append(
            "template bgp bgp_template {\n"
            + common
            + "  gateway recursive;\n  import all;\n  export all;\n  add paths on;\n}"
        )
        for name, (neighbor, source) in peers.items():
            lines.append(
                f"protocol bgp {name} from bgp_template {{ neighbor {neighbor} as "
                f"{AS_NUMBER}; source address {source}; }}"
            )
        return "\n".join(lines) + "\n"
    families = sorted({_family(n) for n, _ in peers.values()} | {_family(r) for r in statics})
    for fam in families:
        lines += [
            f'protocol direct direct_{fam} {{ {fam}; interface -"cali*", -"kube-ipvs*", "*"; }}',
            f"protocol kernel kernel_{fam} {{ {fam} {{ import all; export none; }}; learn; "
            f"persist; scan time 2; }}",
        ]
        fam_routes = "".join(f"  route {r} blackhole;\n" for r in statics if _family(r) == fam)
        if fam_routes:
            lines.append(f"protocol static static_{fam} {{ {fam};\n{fam_routes}}}")
    lines.append("template bgp bgp_template {\n" + common + "}")
    for name, (neighbor, source) in peers.items():
        lines.append(
            f"protocol bgp {name} from bgp_template {{ neighbor {neighbor} as {AS_NUMBER}; "
            f"source address {source}; {_family(neighbor)} {{ gateway recursive; "
            f"import all; export all; add paths on; }}; }}"
        )
    return "\n".join(lines) + "\n"


class Bird:
    """One BIRD daemon in `netns`, its control socket at `socket_path`."""

    def __init__(
        self, netns: Netns, version: int, conf: str, workdir: Path, name: str = "bird", v6: bool = False
    ):
        self.netns, self.version, self.v6 = netns, version, v6
        self.binary = bird_binary(version, v6)
        self.workdir = workdir
        self.conf_path = workdir / f"{name}.conf"
        self.socket_path = str(workdir / ("bird6.ctl" if v6 else "bird.ctl"))
        self.conf_path.write_text(conf)
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{name}.log"

    def start(self, timeout: float = 10) -> Bird:
        with open(self.log, "ab") as log:
            self.proc = self.netns.popen(
                self.binary, "-f", "-c", str(self.conf_path), "-s", self.socket_path, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"BIRD exited {self.proc.returncode}: {self.log.read_text()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.socket_path)
                if s.recv(100).startswith(b"0001 BIRD"):
                    return self
            time.sleep(0.05)
        raise AssertionError(f"BIRD socket {self.socket_path} not up after {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def birdc(self, *command: str) -> str:
        """Run Debian's birdc (the matching version) against this daemon."""
        out = run([birdc_binary(self.version), "-s", self.socket_path, *command])
        return out.stdout

    def protocol_info(self, name: str) -> str:
        """The row of `show protocols` for one protocol, as birdc prints it."""
        for line in self.birdc("show", "protocols", name).splitlines():
            if line.startswith(name + " "):
                return line
        return ""

    def wait_for(self, name: str, word: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        row = ""
        while time.monotonic() < deadline:
            row = self.protocol_info(name)
            if word in row.split():
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} not {word} after {timeout}s: {row!r}\n{self.log.read_text()}")


class TwoNodes:
    """Two network namespaces joined by a veth pair: node A 198.18.0.1, node B 198.18.0.2
    (and fd00:198:18::1/::2), like two Calico nodes on one L2 segment. Daemons added with
    add() are stopped, and the namespaces and work directory deleted, on exit."""

    A4, B4 = "198.18.0.1", "198.18.0.2"
    A6, B6 = "fd00:198:18::1", "fd00:198:18::2"

    def __enter__(self) -> TwoNodes:
        need_root()
        self.workdir = Path(tempfile.mkdtemp(prefix="nse-bgp-"))
        os.chmod(self.workdir, 0o755)
        self.a = Netns("nse-bgp").__enter__()
        self.b = Netns("nse-bgp").__enter__()
        self.daemons: list[Bird] = []
        tag = uuid.uuid4().hex[:6]
        va, vb = f"nse-bgp-a{tag}", f"nse-bgp-b{tag}"
        run(
            [
                "ip",
                "link",
                "add",
                va,
                "netns",
                self.a.name,
                "type",
                "veth",
                "peer",
                "name",
                vb,
                "netns",
                self.b.name,
            ]
        )
        for ns, dev, v4, v6 in ((self.a, va, self.A4, self.A6), (self.b, vb, self.B4, self.B6)):
            ns.ip("addr", "add", f"{v4}/24", "dev", dev)
            ns.ip("addr", "add", f"{v6}/64", "dev", dev, "nodad")
            ns.ip("link", "set", dev, "up")
        return self

    def add(self, netns: Netns, version: int, conf: str, name: str, v6: bool = False) -> Bird:
        workdir = self.workdir / name
        workdir.mkdir()
        bird = Bird(netns, version, conf, workdir, name, v6)
        self.daemons.append(bird)
        return bird.start()

    def __exit__(self, *exc) -> None:
        for bird in self.daemons:
            bird.stop()
        self.b.__exit__(*exc)
        self.a.__exit__(*exc)
        shutil.rmtree(self.workdir, ignore_errors=True)
