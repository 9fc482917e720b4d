"""The Grafana dashboard and the alert rules read only metrics the exporter declares.

The metric contract lives in one place, streamlearn.metrics.METRIC_NAMES.  A
name there may be a counter's base name or its exported `_total` series;
histograms are read through `_bucket`, `_sum` and `_count`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import DASHBOARD, dashboard_targets, in_contract, metric_names, rules_exprs


@pytest.fixture(scope="module")
def contract() -> Collection[str]:
    from streamlearn.metrics import METRIC_NAMES

    assert METRIC_NAMES, "streamlearn.metrics.METRIC_NAMES is empty"
    return METRIC_NAMES


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _dashboard_metrics(dashboard: dict) -> dict[str, set[str]]:
    return {f"{p['title']}/{t['refId']}": metric_names(t["expr"]) for p, t in dashboard_targets(dashboard)}


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.9, sum by (le, polarity) (rate(streamlearn_example_loss_bucket'
            '{job=~"$job",outcome="x"}[$__rate_interval]))) / on (job) group_left sum(up) > bool 1e3')
    assert metric_names(expr) == {"streamlearn_example_loss_bucket", "up"}


def test_dashboard_reads_only_contract_metrics(contract: Collection[str], dashboard: dict) -> None:
    unknown = {where: sorted(m for m in names if not in_contract(m, contract))
               for where, names in _dashboard_metrics(dashboard).items()}
    unknown = {k: v for k, v in unknown.items() if v}
    assert not unknown, f"dashboard queries metrics outside streamlearn.metrics.METRIC_NAMES: {unknown}"


def test_rules_read_only_contract_metrics(contract: Collection[str]) -> None:
    unknown = {alert: sorted(m for m in metric_names(expr) if not in_contract(m, contract))
               for alert, expr in rules_exprs().items()}
    unknown = {k: v for k, v in unknown.items() if v}
    assert not unknown, f"rules query metrics outside streamlearn.metrics.METRIC_NAMES: {unknown}"


def test_dashboard_shows_every_contract_metric(contract: Collection[str], dashboard: dict) -> None:
    used = set().union(*_dashboard_metrics(dashboard).values())
    missing = sorted(name for name in contract if not any(in_contract(u, {name}) for u in used))
    assert not missing, f"contract metrics the dashboard never shows: {missing}"


def test_dashboard_structure(dashboard: dict) -> None:
    assert dashboard["uid"] == "streamlearn" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert '{job=~"$job"' in t["expr"], f"{panel['title']}: filter by the $job variable"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # any Grafana: the Prometheus data source is a variable the importer picks, not a uid of one install
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["datasource"]["uid"] == "${datasource}"
    assert '"uid": "prometheus"' not in json.dumps(dashboard)
    required = ["loss", "accuracy", "kl", "staleness", "lag", "events", "examples", "dead-letter",
                "diverg", "norm", "drift", "checkpoint"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    assert [w for w in required if w not in titles] == []


def test_dashboard_queries_are_valid_promql(tmp_path: Path, dashboard: dict) -> None:
    # promtool parses PromQL offline only inside rule files: wrap each query
    # in a recording rule, with Grafana's variables substituted.
    rules = []
    for i, (panel, target) in enumerate(dashboard_targets(dashboard)):
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$job", ".*")
        assert "$" not in expr, f"{panel['title']}: unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH (CI installs Debian's prometheus package)"
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"SUCCESS: {len(rules)} rules found", result.stdout), result.stdout
