"""The exporter as a subprocess on the committed fixture tree, compared with a committed golden
file and linted by promtool.

Regenerate the golden file after an intended change:
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/e2e/test_golden.py
"""

import os
import subprocess

from tests.helpers import FIXTURES, Exporter, need_tool

GOLDEN = FIXTURES / "golden" / "core.prom"
ARGS = ("--collector.disable-defaults", "--collector.cpu", "--collector.softirq",
        f"--path.procfs={FIXTURES / 'procfs'}", f"--path.sysfs={FIXTURES / 'sysfs-empty'}")
# Families whose values depend on the running process or Python, not on the fixture tree.
VOLATILE = ("process_", "python_", "netstack_build_info", "netstack_scrape_collector_duration_seconds")


def stable_lines(text: str) -> str:
    kept = []
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("# ") else line
        if not name.startswith(VOLATILE):
            kept.append(line)
    return "\n".join(kept) + "\n"


def test_golden_output_and_promtool_lint():
    with Exporter(*ARGS) as exp:
        text = exp.scrape_text()
    got = stable_lines(text)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "output changed; see the module docstring to regenerate"

    promtool = need_tool("promtool", "prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
