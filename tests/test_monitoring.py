"""The Grafana dashboard plots exactly the metrics unime records (no stale or missing names)."""

from __future__ import annotations

import json
import re

from tests.helpers import ROOT
from unime.monitoring import METRICS

DASHBOARD = ROOT / "cluster" / "monitoring" / "grafana_dashboard.json"
# Ray prefixes application metrics with ray_; Prometheus adds suffixes to histograms.
SERIES = re.compile(r"\bray_(unime_\w+?)(?:_bucket|_count|_sum)?\b")


def metric_names(expr: str) -> set[str]:
    return set(SERIES.findall(expr))


def test_dashboard_queries_only_recorded_metrics_and_covers_them_all():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    queried = set()
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["type"] == "prometheus", panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = names - set(METRICS)
            assert not unknown, (panel["title"], unknown)
            queried |= names
    assert queried == set(METRICS), set(METRICS) - queried


def test_histogram_suffixes_only_on_histograms():
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            for name, suffix in re.findall(r"\bray_(unime_\w+?)(_bucket|_count|_sum)\b", target["expr"]):
                assert METRICS[name].kind == "histogram", (panel["title"], name, suffix)


def test_metric_name_parsing():
    assert metric_names("rate(ray_unime_judge_call_seconds_bucket[5m]) + ray_unime_train_loss") == {
        "unime_judge_call_seconds", "unime_train_loss"}
