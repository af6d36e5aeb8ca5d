"""The Grafana dashboard, statically: generated from dashboards/build.py, sound JSON, and querying
only metrics that the components define.

Why it exists: the monitoring tier proves the queries against live components, but needs the
control plane and a training run; this fast check catches a stale copy, a metric name that is not
in the contract (docs/DEVELOPING.md) or in the code, and layout mistakes, in a second.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "dashboards"))
from build import DASHBOARD_PATHS, render, targets  # noqa: E402

DASHBOARD = json.loads(render())
METRIC = re.compile(r"\b(finetune_(?:operator|trainer|inference)_[a-z_]+)")
SOURCES = {
    "operator": REPO / "operator" / "finetune_operator" / "metrics.py",
    "trainer": REPO / "trainer_image" / "finetune_trainer" / "report.py",
    "inference": REPO / "trainer_image" / "finetune_trainer" / "serve.py",
}


def test_both_copies_are_current() -> None:
    for path in DASHBOARD_PATHS:
        assert path.read_text() == render(), f"{path} is stale: run python dashboards/build.py"


def _base(metric: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", metric)


def test_every_metric_is_in_the_contract_and_defined_in_code() -> None:
    contract = (REPO / "docs" / "DEVELOPING.md").read_text()
    code = {name: path.read_text() for name, path in SOURCES.items()}
    used = {_base(m) for _, expr in targets(DASHBOARD) for m in METRIC.findall(expr)}
    assert len(used) >= 20
    for metric in sorted(used):
        component = metric.split("_")[1]
        short = metric.removeprefix(f"finetune_{component}_")
        # The contract lists trainer metrics as `_loss`, `_eta_seconds`, ... after the first one.
        listed = re.search(rf"`(?:{metric}|_{short})(?:\{{[^}}`]*\}})?`", contract)
        assert listed, f"{metric} not in docs/DEVELOPING.md"
        # prometheus_client appends _total to counters: the code names them without it.
        stem = short.removesuffix("_total")
        assert stem in code[component], f"{metric} not defined in {SOURCES[component]}"


def test_every_required_panel_is_there() -> None:
    titles = {p["title"] for p in DASHBOARD["panels"]}
    for title in ("FineTuneJobs by phase", "Reconcile latency", "Reconcile errors",
                  "Loss and eval loss", "Tokens per second", "Model FLOPs utilisation (MFU)",
                  "GPU memory", "GPU utilisation", "ETA", "Restarts", "Request rate",
                  "Request latency", "Errors"):  # fmt: skip
        assert title in titles
    latency = next(p for p in DASHBOARD["panels"] if p["title"] == "Request latency")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]


def test_layout_ids_and_datasource() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            # Bounded label sets only: never group by step or request-level labels.
            assert not re.search(r"by \([^)]*\b(step|user|prompt)\b", target["expr"])
    names = [v["name"] for v in DASHBOARD["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]
