"""docs/metrics.md: every metric the exporter can emit, with its type, labels and help, per collector.

Written by `.venv/bin/python -m tests.e2e.test_golden --regenerate`; tests/e2e/test_golden.py fails
when it is stale. The entries come from three places, all of them the exporter's own output:

1. the exporter's scrape of the fixture host tree (tests/fixtures/host, the golden test's run):
   every collector that can run from files, and the exporter's own families;
2. tests/fixtures/golden/live.prom: what only a live kernel produces, captured by scraping the
   exporter in a network namespace this script sets up (root only; LIVE_COLLECTORS below), one
   block per collector. tests/e2e/test_live_families.py checks (as root) that a live scrape still
   has exactly these families, types, help texts and label names;
3. families whose source does not exist on the kernel the tests run on at all (IPVS netlink: no
   IPVS in the test kernel), built by the collector's own code from a hand-made table
   (SOURCELESS below).

Adding a collector: a tree collector is one line in tests/e2e/test_golden.py TREE_COLLECTORS; a
live-only one is one line in LIVE_COLLECTORS (its exporter flags and, when it needs devices or
traffic in the namespace, a setup function). Then regenerate.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
LIVE = ROOT / "tests" / "fixtures" / "golden" / "live.prom"
BLOCK = re.compile(r"^# collector: (\S+)$", re.MULTILINE)
# The exporter's families about itself: they are in every scrape, documented once from the tree.
OWN = (
    "netstack_scrape_collector_",
    "netstack_collector_available",
    "netstack_build_info",
    "process_",
    "python_",
)
SUFFIX_LABELS = {"histogram": {"le"}, "summary": {"quantile"}}


# --- what the fixture tree cannot give ----------------------------------------------------------


def _vxlan_pair(ns) -> None:
    """A veth underlay with a vxlan device on it, so the overlay collector has a tunnel."""
    peer = f"{ns.name[:8]}p"
    ns.ip("link", "add", "ul0", "type", "veth", "peer", "name", peer)
    ns.ip("link", "set", "ul0", "up")
    ns.ip("link", "set", peer, "up")
    ns.ip("addr", "add", "198.18.7.1/24", "dev", "ul0")
    ns.ip(
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "4789",
        "remote",
        "198.18.7.2",
        "local",
        "198.18.7.1",
        "dev",
        "ul0",
    )
    ns.ip("link", "set", "vx0", "up")


def _tracked_connection(ns) -> None:
    """One conntrack entry in the namespace's table, for the by-state dump."""
    ns.exec(
        "conntrack",
        "-I",
        "-p",
        "tcp",
        "-s",
        "198.18.7.1",
        "-d",
        "198.18.7.2",
        "--sport",
        "41001",
        "--dport",
        "443",
        "--state",
        "ESTABLISHED",
        "-t",
        "600",
        "-u",
        "ASSURED,SEEN_REPLY",
    )


@dataclass(frozen=True)
class Live:
    args: tuple[str, ...]
    setup: Callable | None = None
    ready: str = ""  # a family name that must have samples before the scrape is taken
    netns: bool = True  # False: eBPF; tracepoints are host-wide, and `ip netns exec` hides tracefs


# collector -> how to make it produce every family it has. {tmp} is a scratch directory.
def _kube_ipvs0(ns) -> None:
    """kube-proxy's device with one service address (a bridge: not every kernel has dummy)."""
    ns.ip("link", "add", "kube-ipvs0", "type", "bridge")
    ns.ip("addr", "add", "198.18.7.10/32", "dev", "kube-ipvs0")


LIVE_COLLECTORS: dict[str, Live] = {
    "strict_arp": Live((), _kube_ipvs0, "netstack_ipvs_kube_ipvs0_addresses"),
    "overlay": Live((), _vxlan_pair, "netstack_overlay_info"),
    "conntrack": Live(
        ("--collector.conntrack.source=netlink", "--collector.conntrack.by-state"),
        _tracked_connection,
        "netstack_conntrack_entries_by_state",
    ),
    "fsync": Live(
        ("--collector.fsync.directory={tmp}", "--collector.fsync.writes=8", "--collector.fsync.interval=1s"),
        None,
        "netstack_fsync_probe_quantile_seconds",
    ),
    "ebpf_softirq": Live(  # sampled, so that netstack_softirq_sample_every is listed too
        ("--collector.ebpf_softirq.backend=libbpf", "--collector.ebpf_softirq.sample-every=2"),
        None,
        "netstack_softirq_wait_seconds",
        netns=False,
    ),
    "ebpf_drops": Live(
        ("--collector.ebpf_drops.backend=libbpf", "--collector.ebpf_drops.all-reasons"),
        None,
        "netstack_skb_drops",
        netns=False,
    ),
}


def _ipvs_netlink_families() -> list:
    """The IPVS families only the netlink source has (per-service traffic), from build_metrics."""
    from collectors.ipvs import Service, Table, build_metrics

    svc = Service(
        "TCP",
        "10.96.0.1",
        443,
        0,
        "rr",
        stats=(1, 2, 3, 4, 5),
        dests=[("198.18.0.11", 6443, "Masq", 1, 12, 3)],
    )
    svc.add_backend(1, 12, 3)
    return build_metrics(Table("netlink", [svc], totals=(1, 2, 3, 4, 5)), True, 1000)


def _bgp_families() -> list:
    """The bgp families, from the collector reading a captured BIRD conversation replayed on a
    real unix socket (a live BIRD needs the namespaces of tests/integration/test_bgp.py)."""
    import socket
    import tempfile
    import threading

    from collectors.bgp import BgpCollector
    from exporter.contract import Context

    conversation = (ROOT / "tests/fixtures/bgp/bird1-show-protocols-all.txt").read_bytes()
    greeting, _, reply = conversation.partition(b"\n")
    with tempfile.TemporaryDirectory(prefix="nse-metrics-doc-") as tmp:
        path = os.path.join(tmp, "bird.ctl")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(greeting + b"\n")
                conn.recv(4096)  # the command
                conn.sendall(reply)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            collector = BgpCollector(Context(options={"socket": [f"ipv4={path}"]}))
            families = list(collector.collect())
        finally:
            thread.join(5)
            server.close()
    return families


# collector -> families of a source the test kernel does not have, built by the collector's code.
SOURCELESS: dict[str, Callable[[], Iterable]] = {
    "ipvs": _ipvs_netlink_families,
    "bgp": _bgp_families,
}


@contextlib.contextmanager
def tracefs_mounted():
    """tracefs for the eBPF collectors; mounted here (and unmounted after) only if it was not."""
    tracefs = "/sys/kernel/tracing"
    if any(os.path.isdir(f"{p}/events") for p in ("/sys/kernel/debug/tracing", tracefs)):
        yield
        return
    subprocess.run(["mount", "-t", "tracefs", "nodev", tracefs], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", tracefs], check=False)


def capture_live() -> None:
    """Scrape each LIVE_COLLECTORS collector alone in a fresh network namespace; write LIVE."""
    if os.geteuid() != 0:
        print(f"kept {LIVE.relative_to(ROOT)}: recapturing it needs root (network namespaces, BPF)")
        return
    blocks = [f"# collector: {name}\n{live_scrape(name)}" for name in LIVE_COLLECTORS]
    LIVE.write_text("".join(blocks))
    print(f"wrote {LIVE.relative_to(ROOT)}")


def live_scrape(name: str, timeout: float = 60.0) -> str:
    """The collector's own families from a live scrape: one sample per sample name and label set
    shape is kept (values are the kernel's and change every run; only the shape is checked)."""
    from tests.helpers import Exporter, Netns

    spec = LIVE_COLLECTORS[name]
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(Netns("nse-doc")) if spec.netns else None
        if not spec.netns:
            stack.enter_context(tracefs_mounted())
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="nse-doc-"))
        if spec.setup is not None:
            spec.setup(ns)
        args = [a.replace("{tmp}", tmp) for a in spec.args]
        with Exporter("--collector.disable-defaults", f"--collector.{name}", *args, netns=ns) as exp:
            deadline = time.monotonic() + timeout
            while True:
                text = exp.scrape_text()
                if any(f.name == spec.ready and f.samples for f in text_string_to_metric_families(text)):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name}: no {spec.ready} after {timeout:g}s:\n{exp.log()}")
                time.sleep(0.5)
    return shape_lines(text)


def shape_lines(text: str) -> str:
    """HELP and TYPE of the collector's families and the first sample of each sample name and set
    of label names."""
    out, seen = [], set()
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("# ") else re.split(r"[{ ]", line, maxsplit=1)[0]
        if name.startswith(OWN):
            continue
        if not line.startswith("#"):
            key = (name, tuple(sorted(re.findall(r'([a-zA-Z_]\w*)="', line.partition("{")[2]))))
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return "\n".join(out) + "\n"


def live_blocks(text: str | None = None) -> dict[str, str]:
    """{collector: exposition text} of live.prom."""
    parts = BLOCK.split(LIVE.read_text() if text is None else text)
    return dict(zip(parts[1::2], parts[2::2]))


def sourceless_text() -> dict[str, str]:
    from exporter.exposition import encode_text

    return {name: encode_text(build()).decode() for name, build in SOURCELESS.items()}


def live_only_text() -> str:
    """Every family that is not in the tree's output, as one exposition (for promtool)."""
    blocks = live_blocks()
    for name, text in sourceless_text().items():
        blocks[name] = blocks.get(name, "") + text
    return "".join(blocks.values())


# --- the document -------------------------------------------------------------------------------


@dataclass
class Entry:
    name: str  # as it appears in the exposition (counters with _total)
    type: str
    help: str
    labels: list[str] = field(default_factory=list)


def entries(text: str) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        entry = out.setdefault(name, Entry(name, family.type, family.documentation))
        hidden = SUFFIX_LABELS.get(family.type, set())
        for sample in family.samples:
            for label in sample.labels:
                if label not in hidden and label not in entry.labels:
                    entry.labels.append(label)
    return out


def tree_attribution() -> dict[str, str]:
    """{family: collector} for the tree's collectors, from running each of them in-process on the
    tree with the golden test's options."""
    from collectors import available_collectors
    from exporter.cli import parse_config
    from exporter.contract import Context, Paths
    from exporter.exposition import encode_text
    from tests.e2e.test_golden import tree_args

    classes = available_collectors()
    config = parse_config(tree_args(), {}, classes)
    owner = {}
    for cls in classes:
        if not config.enabled[cls.name]:
            continue
        collector = cls(Context(Paths(config.procfs, config.sysfs), config.collector_options[cls.name]))
        try:
            collector.probe()
            collector.start()
            for name in entries(encode_text(list(collector.collect())).decode()):
                owner[name] = cls.name
        finally:
            collector.close()
    return owner


def render(tree_text: str) -> str:
    from collectors import MODULES

    tree = entries(tree_text)
    owner = tree_attribution()
    sections: dict[str, dict[str, Entry]] = {}
    for name, entry in tree.items():
        sections.setdefault(owner.get(name, "exporter"), {})[name] = entry
    for collector, text in [*live_blocks().items(), *sourceless_text().items()]:
        section = sections.setdefault(collector, {})
        for name, entry in entries(text).items():
            known = section.setdefault(name, entry)
            known.labels += [label for label in entry.labels if label not in known.labels]

    lines = [
        "# Metrics reference",
        "",
        "Every metric netstack-exporter can emit, per collector. Generated by",
        "`.venv/bin/python -m tests.e2e.test_golden --regenerate` (see `scripts/gen_metrics_doc.py`)",
        "from the exporter's output on the fixture host tree (`tests/fixtures/host`), from a live",
        "scrape of what a fixture tree cannot produce (`tests/fixtures/golden/live.prom`: tunnels,",
        "the conntrack table dump, fsync probes, eBPF) and from the IPVS netlink-only families",
        "built by the collector's code. Do not edit by hand: `tests/e2e/test_golden.py` fails when",
        "this page is stale.",
        "",
        "Labels are those of the collector's default options plus the options named on its page",
        "(`--collector.ipvs.backends`, `--collector.conntrack.by-state`,",
        "`--collector.ebpf_drops.all-reasons`);",
        "`--collector.conntrack.per-cpu` and `--collector.ebpf_softirq.per-cpu` add a `cpu` label.",
        "Histograms also have `_bucket` (label `le`), `_sum` and `_count` series.",
    ]
    order = [m for m in MODULES if m in sections] + sorted(set(sections) - set(MODULES) - {"exporter"})
    for collector in [*order, "exporter"]:
        if collector not in sections:
            continue
        page = ROOT / "docs" / "collectors" / f"{collector}.md"
        title = f"[{collector}](collectors/{collector}.md)" if page.exists() else collector
        if collector == "exporter":
            title = "the exporter itself"
        lines += ["", f"## {title}", "", "| metric | type | labels | help |", "|---|---|---|---|"]
        for entry in sorted(sections[collector].values(), key=lambda e: e.name):
            labels = ", ".join(f"`{label}`" for label in entry.labels) or "—"
            help_text = entry.help.replace("|", "\\|")
            lines.append(f"| `{entry.name}` | {entry.type} | {labels} | {help_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit("run: .venv/bin/python -m tests.e2e.test_golden --regenerate")
