"""The exporter as a subprocess on one fixture host tree, tests/fixtures/host/{proc,sys}, with every
collector that can run from files reading only that tree. Its /metrics must equal the committed
golden file (tests/fixtures/golden/host.prom) except for the families that describe the running
process rather than the tree; promtool must accept every metric; docs/metrics.md must be what the
generator (scripts/gen_metrics_doc.py) makes of this output and of the live-only families.

Regenerate the golden file and docs/metrics.md after an intended change:
    .venv/bin/python -m tests.e2e.test_golden --regenerate
(as root it also recaptures tests/fixtures/golden/live.prom, see scripts/gen_metrics_doc.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import FIXTURES, ROOT, Exporter, need_tool, parse_metrics, value

TREE = FIXTURES / "host"
GOLDEN = FIXTURES / "golden" / "host.prom"
METRICS_DOC = ROOT / "docs" / "metrics.md"
REGENERATE = ".venv/bin/python -m tests.e2e.test_golden --regenerate"

# Every collector that can run from files, with the options that keep it to the tree. Adding one:
# its files under tests/fixtures/host/ in the kernel's format, one line here, then regenerate.
# Not here: overlay (rtnetlink only), strict_arp (kube-ipvs0 over rtnetlink), fsync (times a real
# disk), ebpf_* (BPF on live tracepoints), bgp (BIRD's control socket); their families come from
# tests/fixtures/golden/live.prom or the collectors' code (scripts/gen_metrics_doc.py).
TREE_COLLECTORS: dict[str, tuple[str, ...]] = {
    "cpu": (),
    "softirq": (),
    "conntrack": ("--collector.conntrack.source=procfs",),
    "ipvs": ("--collector.ipvs.source=procfs", "--collector.ipvs.backends"),
    "netstat": (),
    "virtualization": (f"--collector.virtualization.modules-path={TREE / 'lib' / 'modules'}",),
}
# Families whose values depend on the running process or Python, not on the tree.
VOLATILE = ("process_", "python_", "netstack_build_info", "netstack_scrape_collector_duration_seconds")


def tree_args() -> list[str]:
    args = ["--collector.disable-defaults", f"--path.procfs={TREE / 'proc'}", f"--path.sysfs={TREE / 'sys'}"]
    for name, options in TREE_COLLECTORS.items():
        args += [f"--collector.{name}", *options]
    return args


def scrape_tree() -> str:
    with Exporter(*tree_args()) as exp:
        return exp.scrape_text()


def stable_lines(text: str) -> str:
    kept = []
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("# ") else line
        if not name.startswith(VOLATILE):
            kept.append(line)
    return "\n".join(kept) + "\n"


@pytest.fixture(scope="module")
def scraped() -> str:
    return scrape_tree()


def test_golden_output(scraped):
    assert stable_lines(scraped) == GOLDEN.read_text(), f"output changed; regenerate: {REGENERATE}"


def test_every_tree_collector_read_the_tree(scraped):
    m = parse_metrics(scraped)
    for name in TREE_COLLECTORS:
        assert value(m, "netstack_collector_available", collector=name) == 1, name
        assert value(m, "netstack_scrape_collector_success", collector=name) == 1, name
    # sources that would otherwise come from the running kernel say they came from the tree
    assert value(m, "netstack_conntrack_source_info", source="procfs") == 1
    assert value(m, "netstack_ipvs_source_info", source="procfs") == 1


def promtool_check(text: str) -> None:
    promtool = need_tool("promtool", "prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_promtool_accepts_the_tree_output(scraped):
    promtool_check(scraped)


def test_promtool_accepts_the_live_only_families():
    from scripts.gen_metrics_doc import live_only_text

    promtool_check(live_only_text())


def test_metrics_doc_is_current(scraped):
    from scripts.gen_metrics_doc import render

    assert render(scraped) == METRICS_DOC.read_text(), f"docs/metrics.md is stale; regenerate: {REGENERATE}"


def regenerate() -> None:
    from scripts.gen_metrics_doc import capture_live, render

    text = scrape_tree()
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(stable_lines(text))
    print(f"wrote {GOLDEN.relative_to(ROOT)}")
    capture_live()
    METRICS_DOC.write_text(render(text))
    print(f"wrote {METRICS_DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: {REGENERATE}")
    regenerate()


def test_every_collector_is_in_the_reference():
    """A collector missing here has no entry in docs/metrics.md: add it to TREE_COLLECTORS (it can
    run from files) or to LIVE_COLLECTORS / SOURCELESS in scripts/gen_metrics_doc.py."""
    from collectors import MODULES
    from scripts.gen_metrics_doc import LIVE_COLLECTORS, SOURCELESS

    covered = set(TREE_COLLECTORS) | set(LIVE_COLLECTORS) | set(SOURCELESS)
    assert [m for m in MODULES if m not in covered] == [], f"then regenerate: {REGENERATE}"
