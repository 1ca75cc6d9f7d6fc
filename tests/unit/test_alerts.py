"""The alert rules: they load in promtool, their unit tests pass, every alert is tested both firing
and silent, every expression parses, and the chart ships the same file."""

from __future__ import annotations

import re

from tests.helpers import ROOT, need, need_tool, run

try:  # a dependency of the package
    import yaml
except ImportError:
    yaml = None

RULES = ROOT / "alerts" / "netstack.rules.yml"
RULE_TESTS = ROOT / "alerts" / "tests.yml"
CHART_RULES = ROOT / "charts" / "netstack-exporter" / "files" / "netstack.rules.yml"


def alerting_rules() -> list[dict]:
    need(yaml is not None, "needs PyYAML (a dependency of the package)")
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_cases() -> list[dict]:
    need(yaml is not None, "needs PyYAML (a dependency of the package)")
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return [case for test in tests for case in test.get("alert_rule_test", [])]


def test_promtool_accepts_the_rules():
    promtool = need_tool("promtool", "prometheus")
    result = run([promtool, "check", "rules", str(RULES)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    promtool = need_tool("promtool", "prometheus")
    result = run([promtool, "test", "rules", str(RULE_TESTS)], check=False, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent():
    cases = alert_cases()
    for rule in alerting_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no firing test"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no silent test"


def test_firing_tests_check_the_rendered_text():
    # promtool compares annotations only when the test lists them; insist, so templates are tested.
    for case in alert_cases():
        for alert in case.get("exp_alerts") or []:
            assert set(alert.get("exp_annotations", {})) == {"summary", "description", "runbook_url"}, case


def test_alerts_are_routable_and_explained():
    names = [rule["alert"] for rule in alerting_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alerting_rules():
        assert rule["alert"].startswith("Netstack"), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        # Runbook style: every description says what to check next.
        assert (
            "Check:" in rule["annotations"]["description"]
            or rule["labels"]["severity"] == "info"
            or rule["alert"] == "NetstackExporterAbsent"
        ), rule["alert"]


def test_required_alerts_exist():
    names = {rule["alert"] for rule in alerting_rules()}
    assert {
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
        "NetstackFsyncProbeFailing",
        "NetstackFsyncProbeStale",
        "NetstackCollectorFailing",
        "NetstackExporterDown",
    } <= names


def test_every_expression_parses():
    promql_parser = _promql_parser()
    for rule in alerting_rules():
        try:
            promql_parser.parse(rule["expr"])
        except Exception as e:  # the parser raises a bare ValueError-like error with the position
            raise AssertionError(f"{rule['alert']}: {e}") from None


def test_parser_rejects_broken_promql():
    # Guards the test above: a parser that accepted anything would prove nothing.
    promql_parser = _promql_parser()
    for broken in ("rate(x[5m]", "sum by (instance (x)", "x > > 1"):
        try:
            promql_parser.parse(broken)
        except Exception:
            continue
        raise AssertionError(f"promql_parser accepted {broken!r}")


def test_fsync_alert_uses_the_histogram():
    rule = next(r for r in alerting_rules() if r["alert"] == "NetstackFsyncSlow")
    assert "histogram_quantile(0.99" in rule["expr"]
    assert "rate(netstack_fsync_duration_seconds_bucket[" in rule["expr"]
    assert "> 0.010" in rule["expr"]


def test_chart_ships_the_same_rules():
    assert CHART_RULES.read_bytes() == RULES.read_bytes(), (
        "charts/netstack-exporter/files/netstack.rules.yml is stale: run dashboards/generate.py"
    )


def _promql_parser():
    try:
        import promql_parser
    except ImportError:
        need(False, "needs PyPI promql-parser (the test extra installs it)")
    return promql_parser


# --- the names the rules use are names the exporter exports ---------------------------------------

SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def exporter_sources() -> dict[str, str]:
    return {p.name: p.read_text() for d in ("collectors", "exporter") for p in (ROOT / d).glob("*.py")}


def is_exported(name: str, sources: dict[str, str]) -> bool:
    """True when some collector or the exporter defines metric `name`: literally, or as a
    literal prefix (f"netstack_conntrack_{key}") plus the quoted key ("insert_failed") in the same
    module.
    prometheus_client adds _total to counters and _bucket/_count/_sum to histograms."""
    stems = {name} | {name[: -len(s)] for s in SUFFIXES if name.endswith(s)}
    for text in sources.values():
        for stem in stems:
            if f'"{stem}"' in text or f"'{stem}'" in text:
                return True
            # "netstack_conntrack_" + key, or f"netstack_conntrack_{key}"
            for prefix in set(re.findall(r'"(netstack_[a-z0-9_]*_)(?:"|\{)', text)):
                key = stem[len(prefix) :]
                if stem.startswith(prefix) and (f'"{key}"' in text or f"'{key}'" in text):
                    return True
    return False


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bnetstack_[a-z0-9_]+", text))


def test_rules_use_only_exported_metrics():
    sources = exporter_sources()
    assert is_exported("netstack_conntrack_insert_failed_total", sources)  # the check works...
    assert not is_exported("netstack_conntrack_insert_failled_total", sources)  # ...both ways
    unknown = sorted(n for n in metric_names(RULES.read_text()) if not is_exported(n, sources))
    assert not unknown, f"rules use metrics no collector exports: {unknown}"
