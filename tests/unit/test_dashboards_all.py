"""Every generated dashboard (the fleet overview, the node dashboard and the per-area
drill-downs), checked as far as possible without a Grafana server (none installs here: Debian 12
has no grafana package, PyPI's and npm's `grafana` are empty placeholders). Each JSON survives a
round trip through grafana-foundation-sdk's Dashboard model unchanged; every link points at a
dashboard that exists and carries the data source, the job and (below the fleet) the node; every
variable a query, title, legend or link names is defined; panel ids are unique and no two panels
overlap; every query parses and selects the chosen job and node; rate windows are variables, the
fsync ones never shorter than two probe intervals; only exported metrics are queried."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, need
from tests.unit.test_dashboards import FSYNC_PROBE_INTERVAL_S, _window_seconds

DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
FLEET_UID = "netstack-fleet"
NODE_UID = "netstack-node"
DRILLDOWNS = {
    "netstack-cpu",
    "netstack-conntrack",
    "netstack-overlay",
    "netstack-ipvs",
    "netstack-fsync",
    "netstack-bgp",
    "netstack-drops",
}
# Grafana's own variables and the per-link/per-field ones it fills in.
BUILTIN = re.compile(
    r"__(rate_interval|interval|range|all|url_time_range|data\.fields\.\w+|field\.labels\.\w+)$"
)
# What Grafana puts in a query's place before Prometheus sees it (multi-value filters at All).
VALUES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$fsync_window": "5m",
    "$node": "node-1",
    "$job": "netstack-exporter",
    "$cpu": ".*",
    "$device": ".*",
    "$address": ".*",
    "$path": ".*",
    "$peer": ".*",
    "$reason": ".*",
}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def by_uid() -> dict[str, dict]:
    return {d["uid"]: d for d in map(load, DASHBOARDS)}


def panels(d: dict) -> list[dict]:
    return [p for p in d["panels"] if p["type"] != "row"]


def targets(d: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(d) for t in p.get("targets", [])]


def substitute(expr: str) -> str:
    for name in sorted(VALUES, key=len, reverse=True):
        expr = expr.replace(name, VALUES[name])
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def link_dicts(d: dict) -> list[dict]:
    return [link for p in panels(d) for link in p.get("links", [])]


def links(d: dict) -> list[tuple[str, str]]:
    """(where, url) of every link: the dashboard's, the panels', data links and field links."""
    out = [("dashboard", link["url"]) for link in d.get("links", [])]
    for p in panels(d):
        out += [(p["title"], link["url"]) for link in p.get("links", [])]
        out += [
            (p["title"], link["url"])
            for link in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])
        ]
        for override in p.get("fieldConfig", {}).get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    out += [(p["title"], link["url"]) for link in prop["value"]]
    return out


def test_the_generator_writes_every_committed_dashboard():
    try:
        from dashboards import generate
    except ImportError:
        need(False, "needs PyPI grafana-foundation-sdk (the test extra installs it)")

    assert {p.name for p in DASHBOARDS} == set(generate.DASHBOARDS)
    assert set(by_uid()) == {FLEET_UID, NODE_UID, *DRILLDOWNS}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_round_trip_through_the_sdk_model(path):
    """The SDK's Dashboard model (Grafana 11.6's schema) drops keys it does not know: a JSON that
    changes on the way through has a field Grafana does not have."""
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError:
        need(False, "needs PyPI grafana-foundation-sdk (the test extra installs it)")

    def round_trip(model: dict) -> dict:
        return json.loads(json.dumps(Dashboard.from_json(model), cls=JSONEncoder))

    dashboard = load(path)
    assert round_trip(dashboard) == dashboard
    typo = copy.deepcopy(dashboard)
    typo["panels"][1]["titel"] = "guard: a misspelt key must not survive"
    assert round_trip(typo) != typo


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_link_target_exists_and_keeps_datasource_job_and_node(path):
    uids = by_uid()
    d = load(path)
    found = links(d)
    assert found, "no links"
    for where, url in found:
        match = re.fullmatch(r"/d/([\w-]+)\?(.*)", url)
        assert match, (where, url)
        target, query = match.groups()
        assert target in uids, f"{where}: link to missing dashboard {target}"
        params = dict(p.split("=", 1) for p in query.split("&") if p != "${__url_time_range}")
        # the time range goes along: keepTime on dashboard links, the URL variable in data links
        keeps_time = "${__url_time_range}" in query or any(
            link.get("keepTime") and link["url"] == url for link in d.get("links", []) + link_dicts(d)
        )
        assert keeps_time, (where, url)
        assert params["var-datasource"] == "${datasource}", (where, url)
        assert params["var-job"] == "${job}", (where, url)
        if target != FLEET_UID:
            # the fleet passes the clicked node, the others their own
            assert params["var-node"] in (
                "${node}",
                "${__data.fields.instance}",
                "${__field.labels.instance}",
            )
            assert d["uid"] == FLEET_UID or params["var-node"] == "${node}", (where, url)


def test_navigation_fleet_to_node_to_drilldowns_and_back():
    uids = by_uid()

    def targets_of(uid: str) -> set[str]:
        return {url.split("?")[0].removeprefix("/d/") for _, url in links(uids[uid])}

    # the fleet: every node to its node dashboard, every figure also to its area's drill-down
    assert targets_of(FLEET_UID) == {NODE_UID, *DRILLDOWNS} - {"netstack-drops"}
    assert targets_of(NODE_UID) == {FLEET_UID, *DRILLDOWNS}
    for uid in DRILLDOWNS:
        assert {NODE_UID, FLEET_UID} <= targets_of(uid), uid
        assert targets_of(uid) == {NODE_UID, FLEET_UID, *DRILLDOWNS} - {uid}, uid
        for link in uids[uid]["links"]:
            assert link["keepTime"] is True, (uid, link["title"])
    # on the node dashboard every panel of an area's row opens that area's drill-down
    node = uids[NODE_UID]
    row = None
    for p in node["panels"]:
        if p["type"] == "row":
            row = p["title"]
        elif row != "Exporter":
            assert p.get("links"), f"{row}: panel {p['title']!r} has no drill-down link"


def referenced_variables(text: str) -> set[str]:
    names = set(re.findall(r"\$\{([\w.]+)(?::\w+)?\}", text)) | set(re.findall(r"\$(\w+)", text))
    return {n for n in names if not BUILTIN.match(n)}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_referenced_variable_is_defined(path):
    d = load(path)
    defined = {v["name"] for v in d["templating"]["list"]}
    texts = [d["title"], *(url for _, url in links(d))]
    for p in d["panels"]:
        texts += [p.get("title", ""), p.get("description", "")]
        for t in p.get("targets", []):
            texts += [t["expr"], t.get("legendFormat", "")]
    for v in d["templating"]["list"]:
        texts.append(json.dumps(v.get("query", "")))
        texts.append(json.dumps(v.get("datasource", "")))
    used = set().union(*map(referenced_variables, texts))
    assert used - defined == set(), f"undefined variables: {used - defined}"
    assert referenced_variables("rate(x[$__rate_interval]) ${__data.fields.instance} $nope") == {"nope"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_ids_unique_and_no_overlap(path):
    d = load(path)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_parse_and_select_the_job_and_node(path):
    try:
        import promql_parser
    except ImportError:
        need(False, "needs PyPI promql-parser (the test extra installs it)")
    d = load(path)
    for p in panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    for title, expr in targets(d):
        try:
            promql_parser.parse(substitute(expr))
        except Exception as e:
            raise AssertionError(f"panel {title!r}: {e}\n{expr}") from None
        for selector in re.findall(r"(?:netstack_\w+|\bup)(\{[^}]*\})", expr):
            assert 'job="$job"' in selector, (title, expr)
            assert d["uid"] == FLEET_UID or 'instance="$node"' in selector, (title, expr)
        assert "netstack-exporter" not in expr
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            inner = v["query"][len("label_values(") :].rsplit(",", 1)[0]
            promql_parser.parse(substitute(inner))
            assert 'job="$job"' in v["query"] or v["name"] == "job", v["name"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_rate_windows_are_variables_and_fsync_ones_hold_two_probes(path):
    d = load(path)
    for title, expr in targets(d):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window in ("$__rate_interval", "$fsync_window", "$__range"), (title, expr)
            if "netstack_fsync_" in expr:
                assert window == "$fsync_window", (title, expr)
    variable = next(v for v in d["templating"]["list"] if v["name"] == "fsync_window")
    for choice in variable["query"].split(","):
        assert _window_seconds(choice) >= 2 * FSYNC_PROBE_INTERVAL_S, choice


@pytest.mark.parametrize("uid", sorted(DRILLDOWNS))
def test_drilldown_variables(uid):
    d = by_uid()[uid]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "job", "node", "fsync_window"} <= set(variables)
    for name, v in variables.items():
        if name in ("datasource", "job", "node", "fsync_window"):
            continue
        # an area filter: several values at once, All by default matching unlabelled series too
        assert v["multi"] is True and v["includeAll"] is True and v["allValue"] == ".*", name
        assert f'=~"${name}"' in json.dumps(targets(d)).replace('\\"', '"'), f"{name} is never used"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_only_exported_metrics(path):
    from tests.unit.test_alerts import exporter_sources, is_exported, metric_names

    sources = exporter_sources()
    unknown = sorted(n for n in metric_names(path.read_text()) if not is_exported(n, sources))
    assert not unknown, f"queries metrics no collector exports: {unknown}"
