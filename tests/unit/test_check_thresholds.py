"""One source of truth: every threshold of `netstack-exporter check` that names an alert rule is
that rule's threshold. The rule's expression is parsed (promql-parser, as in test_alerts.py), its
comparisons against a number collected, and the check's (operator, number) must be one of them
(the only one when the rule has one); the rule's severity decides the check's status. A rule
changed on its own (issue 18 will change some) fails here until field_guide.THRESHOLDS follows."""

from __future__ import annotations

import copy

import pytest
import yaml

from exporter import field_guide
from tests.helpers import ROOT, need

RULES = ROOT / "alerts" / "netstack.rules.yml"
SEVERITY_STATUS = {"critical": field_guide.FAIL, "warning": field_guide.WARN, "info": field_guide.WARN}
COMPARISONS = {">", "<", ">=", "<=", "==", "!="}


def _promql():
    try:
        import promql_parser
    except ImportError:
        need(False, "needs PyPI promql-parser (the test extra installs it)")
    return promql_parser


def rules_by_alert(doc: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def comparisons(expr: str) -> list[tuple[str, float]]:
    """(operator, number) of every comparison in expr whose right-hand side is a number literal,
    through and/or/unless and parentheses."""
    promql = _promql()
    found = []

    def walk(node) -> None:
        if isinstance(node, promql.ParenExpr):
            walk(node.expr)
        elif isinstance(node, promql.BinaryExpr):
            op = str(node.op)
            if op in COMPARISONS and isinstance(node.rhs, promql.NumberLiteral):
                found.append((op, float(node.rhs.val)))
            walk(node.lhs)
            walk(node.rhs)

    walk(promql.parse(expr))
    return found


def disagreements(doc: dict) -> list[str]:
    """What differs between THRESHOLDS and the rules in `doc` (empty when they agree)."""
    rules = rules_by_alert(doc)
    out = []
    for key, t in field_guide.THRESHOLDS.items():
        if t.alert is None:
            continue
        rule = rules.get(t.alert)
        if rule is None:
            out.append(f"{key}: no alert rule {t.alert}")
            continue
        found = comparisons(rule["expr"])
        if (t.op, float(t.value)) not in found:
            out.append(f"{key}: check says {t.op} {t.value}, {t.alert} compares {found}")
        severity = rule.get("labels", {}).get("severity")
        if SEVERITY_STATUS.get(severity) != t.crossed:
            out.append(f"{key}: check says {t.crossed}, {t.alert} is severity {severity}")
    return out


@pytest.fixture(scope="module")
def rules_doc() -> dict:
    return yaml.safe_load(RULES.read_text())


def test_every_threshold_is_its_alert_rules_threshold(rules_doc):
    assert disagreements(rules_doc) == []


def test_thresholds_name_alerts_that_exist_and_cover_the_field_guide(rules_doc):
    named = {t.alert for t in field_guide.THRESHOLDS.values() if t.alert}
    assert named <= set(rules_by_alert(rules_doc))
    # the alerts about what the checks look at all have their threshold here
    for alert in (
        "NetstackCPUStealHigh",
        "NetstackCPUStealHighPerCPU",
        "NetstackSoftnetDropping",
        "NetstackSoftnetSqueezed",
        "NetstackConntrackTableNearlyFull",
        "NetstackConntrackInsertFailed",
        "NetstackConntrackDropping",
        "NetstackIPVSServicesWithoutBackends",
        "NetstackOverlayMTUMismatch",
        "NetstackOverlayDropping",
        "NetstackFsyncSlow",
        "NetstackBGPPeerNotEstablished",
    ):
        assert alert in named, alert


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("x > 0.10", [(">", 0.1)]),
        ("x > 0.010", [(">", 0.01)]),
        ("histogram_quantile(0.99, sum by (le) (rate(x_bucket[10m]))) > 0.010", [(">", 0.01)]),
        ("sum by (instance) (rate(a[5m]) + rate(b[5m])) > 0", [(">", 0.0)]),
        ("a == 1 and on (job, instance) b == 0", [("==", 1.0), ("==", 0.0)]),
        ("(x > 1)", [(">", 1.0)]),
        ("time() - x > 600", [(">", 600.0)]),
        ("absent(up)", []),
    ],
)
def test_comparisons_are_parsed_not_pattern_matched(expr, expected):
    assert comparisons(expr) == expected


def _changed(doc: dict, alert: str, **change) -> dict:
    doc = copy.deepcopy(doc)
    rule = rules_by_alert(doc)[alert]
    if "expr" in change:
        rule["expr"] = change["expr"](rule["expr"])
    if "severity" in change:
        rule["labels"]["severity"] = change["severity"]
    return doc


@pytest.mark.parametrize(
    "alert, change, message",
    [
        ("NetstackCPUStealHigh", {"expr": lambda e: e.replace("> 0.10", "> 0.15")}, "steal_node"),
        ("NetstackFsyncSlow", {"expr": lambda e: e.replace("> 0.010", "> 0.1")}, "fsync_p99"),
        ("NetstackSoftnetSqueezed", {"expr": lambda e: e.replace("> 1", ">= 1")}, "softnet_squeezed"),
        ("NetstackOverlayMTUMismatch", {"expr": lambda e: e.replace("== 1", "> 0")}, "overlay_mtu_mismatch"),
        ("NetstackConntrackDropping", {"severity": "warning"}, "conntrack_dropping"),
        ("NetstackConntrackInsertFailed", {"severity": "critical"}, "conntrack_insert_failed"),
    ],
)
def test_a_rule_changed_alone_is_caught(rules_doc, alert, change, message):
    found = disagreements(_changed(rules_doc, alert, **change))
    assert len(found) == 1 and found[0].startswith(message + ":"), found


def test_a_renamed_rule_is_caught(rules_doc):
    doc = copy.deepcopy(rules_doc)
    rules_by_alert(doc)["NetstackIPVSServicesWithoutBackends"]["alert"] = "NetstackIPVSBlackHole"
    assert disagreements(doc) == ["ipvs_without_backends: no alert rule NetstackIPVSServicesWithoutBackends"]


def test_conntrack_dropping_rule_does_not_count_the_race(rules_doc):
    # The check counts drop - insert_failed + early_drop (the kernel counts each insert_failed
    # packet in drop too); the rule must compute the same, or a DNS race pages as a full table.
    expr = rules_by_alert(rules_doc)["NetstackConntrackDropping"]["expr"]
    assert "netstack_conntrack_insert_failed_total" in expr
    assert "- rate(netstack_conntrack_insert_failed_total" in " ".join(expr.split())
