"""docs/check-schema.json describes `netstack-exporter check --output json`: reports from fixture
trees (healthy, sick, with and without the fsync probe) validate against it with the jsonschema
package, and reports that break it are rejected. tests/integration/test_check.py validates the
real host's report the same way."""

from __future__ import annotations

import copy
import json

import pytest

from tests.check_trees import HostTree, run_check
from tests.helpers import ROOT

SCHEMA_PATH = ROOT / "docs" / "check-schema.json"


def validator():
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (the test extra)")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(report: dict) -> list[str]:
    return [e.message for e in validator().iter_errors(report)]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    healthy = HostTree(tmp_path_factory.mktemp("healthy") / "host")
    healthy.healthy()
    sick = HostTree(tmp_path_factory.mktemp("sick") / "host")
    probe_dir = tmp_path_factory.mktemp("probe")
    return {
        "healthy": run_check(healthy, between=healthy.quiet_interval)[1],
        "sick": run_check(
            sick,
            "--strict",
            f"--check.fsync-dir={probe_dir}",
            "--check.fsync-size=23000",
            between=lambda: sick.conntrack(cpu=0, drop=9),
        )[1],
    }


@pytest.mark.parametrize("name", ["healthy", "sick"])
def test_reports_validate(reports, name):
    report = reports[name]
    assert errors(report) == []
    assert report["summary"] == {
        s: sum(c["status"] == s for c in report["checks"]) for s in ("ok", "warn", "fail", "skip")
    }


def test_sick_report_has_the_probe_and_a_failure(reports):
    sick = reports["sick"]
    assert sick["fsync_probe"]["syncs"] == 10 and sick["exit_status"] == 1
    assert reports["healthy"]["fsync_probe"] is None


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda r: r["checks"][0].update(status="bad"), "'bad' is not one of"),
        (lambda r: r["checks"][0].pop("why"), "'why' is a required property"),
        (lambda r: r.update(exit_status=2), "2 is not one of"),
        (lambda r: r.update(schema="netstack-exporter/check/v2"), "was expected"),
        (lambda r: r["summary"].pop("skip"), "'skip' is a required property"),
        (lambda r: r.update(extra=1), "Additional properties are not allowed"),
        (lambda r: r["checks"][0].update(status="skip", value=""), "should be non-empty"),
    ],
)
def test_schema_rejects_broken_reports(reports, break_it, expected):
    report = copy.deepcopy(reports["healthy"])
    break_it(report)
    found = errors(report)
    assert found and any(expected in e for e in found), found
