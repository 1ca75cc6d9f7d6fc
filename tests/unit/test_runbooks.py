"""Every alert's runbook_url points at a section of docs/runbooks.md that exists (GitHub's heading
anchors), and every section says what the alert means, how to confirm it and how to fix it."""

from __future__ import annotations

import re

from tests.helpers import ROOT
from tests.unit.test_alerts import alerting_rules

RUNBOOKS = ROOT / "docs" / "runbooks.md"
PREFIX = "docs/runbooks.md#"


def github_anchor(heading: str) -> str:
    """GitHub's rule: lower case, drop punctuation but hyphens and underscores, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def sections() -> dict[str, str]:
    """anchor -> the section's text, for every `## ` heading."""
    parts = re.split(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.M)
    return {github_anchor(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def test_github_anchor():
    assert github_anchor("NetstackCPUStealHigh") == "netstackcpustealhigh"
    assert github_anchor("Fsync: slow disks (etcd)") == "fsync-slow-disks-etcd"


def test_every_alert_links_its_runbook_section():
    anchors = sections()
    for rule in alerting_rules():
        url = rule["annotations"].get("runbook_url", "")
        assert url == PREFIX + github_anchor(rule["alert"]), (rule["alert"], url)
        assert url[len(PREFIX) :] in anchors, f"{rule['alert']}: no section {url} in docs/runbooks.md"


def test_every_section_means_confirm_fix():
    names = {github_anchor(rule["alert"]) for rule in alerting_rules()}
    for anchor, text in sections().items():
        assert anchor in names, f"docs/runbooks.md: section {anchor} has no alert"
        assert "**Means" in text and "**Confirm" in text, anchor
        assert re.search(r"\*\*(Fix|Causes and fixes)", text), anchor


def test_links_inside_the_runbooks_resolve():
    anchors = sections()
    for target in re.findall(r"\]\(#([^)]+)\)", RUNBOOKS.read_text()):
        assert target in anchors, target
