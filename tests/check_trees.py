"""Fixture host trees for `netstack-exporter check` and the landing page: a copy of
tests/fixtures/host (see its README) that tests change between two readings, each change written
in the kernel's exact format, so that one tree describes one failure mode.

    tree = HostTree(tmp_path)
    tree.healthy()                       # nothing wrong, counters moving as on a quiet node
    def between():                       # what happens during --check.duration
        tree.tick(steal={3: 0.9})        # one vCPU loses 90 % to the hypervisor
    status, report = run_check(tree, between=between)
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.helpers import FIXTURES

USER_HZ = os.sysconf("SC_CLK_TCK")  # /proc/stat counts ticks of this
# /proc/stat per-CPU columns, in the kernel's order (fs/proc/stat.c)
STAT_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
OS_RELEASE = "6.18.0-netstack-check"
# The tests' --check.duration: short, so a dozen trees take seconds; tick() passes as much CPU time.
DURATION = 0.2


class HostTree:
    """proc/ and sys/ of the fixture host (CPUs 0, 1 and 3 online, 4 possible), copied to root."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copytree(FIXTURES / "host", root, dirs_exist_ok=True)
        self.proc = root / "proc"
        self.sys = root / "sys"
        self.modules_dir = root / "lib" / "modules"
        self._stat_other, self._total, self._cpus = self._read_stat()

    def args(self, *collectors: str) -> list[str]:
        """Flags that keep the collectors to this tree (overlay reads rtnetlink, bgp a socket:
        not from files, so they are not on unless named)."""
        names = collectors or ("cpu", "softirq", "conntrack", "ipvs", "strict_arp", "virtualization")
        out = [
            "--collector.disable-defaults",
            f"--path.procfs={self.proc}",
            f"--path.sysfs={self.sys}",
            "--collector.conntrack.source=procfs",
            "--collector.ipvs.source=procfs",
            f"--collector.virtualization.modules-path={self.modules_dir}",
        ]
        return out + [f"--collector.{name}" for name in names]

    # --- /proc/stat -----------------------------------------------------------------------------

    def _read_stat(self) -> tuple[list[str], list[int], dict[str, list[int]]]:
        other, total, cpus = [], [], {}
        for line in (self.proc / "stat").read_text().splitlines():
            name, *fields = line.split()
            if name == "cpu":
                total = [int(f) for f in fields]
            elif name.startswith("cpu"):
                cpus[name[3:]] = [int(f) for f in fields]
            else:
                other.append(line)
        return other, total, cpus

    def _write_stat(self) -> None:
        # The first line sums over the possible CPUs, offline CPU 2's past time included.
        lines = ["cpu  " + " ".join(map(str, self._total))]
        lines += [f"cpu{cpu} " + " ".join(map(str, ticks)) for cpu, ticks in self._cpus.items()]
        _write(self.proc / "stat", "\n".join(lines + self._stat_other) + "\n")

    def tick(
        self,
        seconds: float = DURATION,
        steal: dict[int, float] | None = None,
        softirq: dict[int, float] | None = None,
        user: float = 0.2,
    ) -> None:
        """`seconds` of CPU time on every online CPU: the given fractions as steal and softirq
        (per CPU), `user` as user time, the rest idle."""
        for cpu, ticks in self._cpus.items():
            budget = round(seconds * USER_HZ)
            parts = {
                "steal": (steal or {}).get(int(cpu), 0.0),
                "softirq": (softirq or {}).get(int(cpu), 0.01),
                "user": user,
            }
            spent = 0
            for mode, fraction in parts.items():
                n = round(budget * fraction)
                ticks[STAT_MODES.index(mode)] += n
                self._total[STAT_MODES.index(mode)] += n
                spent += n
            ticks[STAT_MODES.index("idle")] += max(0, budget - spent)
            self._total[STAT_MODES.index("idle")] += max(0, budget - spent)
        self._write_stat()

    # --- /proc/net/softnet_stat ----------------------------------------------------------------

    def softnet(self, cpu: int, processed: int = 0, dropped: int = 0, squeezed: int = 0) -> None:
        """Add to one CPU's row (15 hex columns as on 6.x; column 13 is the CPU)."""
        path = self.proc / "net" / "softnet_stat"
        rows = [[int(c, 16) for c in line.split()] for line in path.read_text().splitlines()]
        (row,) = [r for r in rows if r[12] == cpu]
        row[0] += processed
        row[1] += dropped
        row[2] += squeezed
        _write(path, "".join(" ".join(f"{c & 0xFFFFFFFF:08x}" for c in r) + "\n" for r in rows))

    # --- conntrack -----------------------------------------------------------------------------

    def conntrack(
        self, entries: int | None = None, limit: int | None = None, cpu: int = 0, **add: int
    ) -> None:
        """Set the entry count (nf_conntrack_count and the stat file's entries column) and/or
        nf_conntrack_max; add to one CPU's row of /proc/net/stat/nf_conntrack by column name
        (insert_failed=, drop=, early_drop=)."""
        netfilter = self.proc / "sys" / "net" / "netfilter"
        if limit is not None:
            _write(netfilter / "nf_conntrack_max", f"{limit}\n")
        if entries is not None:
            _write(netfilter / "nf_conntrack_count", f"{entries}\n")
        path = self.proc / "net" / "stat" / "nf_conntrack"
        header, *lines = path.read_text().splitlines()
        columns = header.split()
        rows = [[int(c, 16) for c in line.split()] for line in lines]
        for i, row in enumerate(rows):
            if entries is not None:
                row[columns.index("entries")] = entries  # every row repeats the count
            if i == cpu:
                for name, n in add.items():
                    row[columns.index(name)] += n
        body = "".join(_conntrack_row(r) for r in rows)
        _write(path, header + "\n" + body)

    # --- IPVS ----------------------------------------------------------------------------------

    def _ipvs_blocks(self) -> tuple[list[str], list[list[str]]]:
        header, blocks = [], []
        for line in (self.proc / "net" / "ip_vs").read_text().splitlines():
            if line.startswith(("TCP", "UDP", "FWM")):
                blocks.append([line])
            elif line.startswith("  ->") and blocks:
                blocks[-1].append(line)
            else:
                header.append(line)
        return header, blocks

    def _write_ipvs(self, header: list[str], blocks: list[list[str]]) -> None:
        _write(self.proc / "net" / "ip_vs", "\n".join(header + [x for b in blocks for x in b]) + "\n")

    def ipvs_all_backed(self) -> None:
        """The fixture's table without its services that have no real server."""
        header, blocks = self._ipvs_blocks()
        self._write_ipvs(header, [b for b in blocks if len(b) > 1])

    def ipvs_drop_backends(self, service_prefix: str) -> None:
        """Remove every real server of the service whose line starts with service_prefix
        (e.g. 'TCP  0A600001:01BB'): its endpoints went away, the virtual service stayed."""
        header, blocks = self._ipvs_blocks()
        (block,) = [b for b in blocks if b[0].startswith(service_prefix)]
        del block[1:]
        self._write_ipvs(header, blocks)

    # --- node ----------------------------------------------------------------------------------

    def own_kernel_with_modules(self) -> None:
        """A kernel release with its module tree, so modules can be loaded."""
        _write(self.proc / "sys" / "kernel" / "osrelease", OS_RELEASE + "\n")
        (self.modules_dir / OS_RELEASE).mkdir(parents=True, exist_ok=True)

    def openvz_container(self) -> None:
        """/proc/vz without /proc/bc: an OpenVZ/Virtuozzo container sharing its host's kernel."""
        (self.proc / "vz").mkdir(exist_ok=True)

    def healthy(self) -> None:
        """Nothing wrong: every IPVS service backed, modules loadable, conntrack at 0.2 %."""
        self.ipvs_all_backed()
        self.own_kernel_with_modules()

    def quiet_interval(self) -> None:
        """What a healthy node does during the check: CPU time passes, packets are processed."""
        self.tick()
        for cpu in self._cpus:
            self.softnet(int(cpu), processed=1000)


def _conntrack_row(values: list[int]) -> str:
    """One row as ct_cpu_seq_show prints it (6.x): two spaces after the first column and after
    the thirteenth, one between the others."""
    cols = [f"{v & 0xFFFFFFFF:08x}" for v in values]
    return cols[0] + "  " + " ".join(cols[1:13]) + "  " + " ".join(cols[13:]) + "\n"


def _write(path: Path, text: str) -> None:
    """Replace a file the way the kernel presents a fresh read: never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_check(
    tree: HostTree | None,
    *args: str,
    between: Callable[[], None] | None = None,
    datasync: Callable[[int], None] | None = None,
    collectors: tuple[str, ...] = (),
    duration: float = DURATION,
) -> tuple[int, dict]:
    """`netstack-exporter check --output json` in this process on the tree: (exit status, report)."""
    from exporter import check

    out = io.StringIO()
    argv = [
        *(tree.args(*collectors) if tree else []),
        f"--check.duration={round(duration * 1000)}ms",
        "--output=json",
        *args,
    ]
    kwargs = {"datasync": datasync} if datasync else {}
    status = check.main(argv, environ={}, out=out, between=between, **kwargs)
    report = json.loads(out.getvalue())
    assert report["exit_status"] == status
    return status, report


def verdict(report: dict, check_id: str) -> dict:
    (found,) = [c for c in report["checks"] if c["check"] == check_id]
    return found
