"""Builds the Grafana dashboard JSON from a short, readable list of panels.

Why it exists: a hand-edited Grafana JSON is thousands of lines where a typo in a metric name hides
easily. Here each panel is one line of intent (title, PromQL, unit); the JSON is generated, written
to dashboards/finetune-operator.json and copied into the Helm chart
(helm/finetune-operator/dashboards/), and the tests check that both copies match this file and that
every query returns series from the real components (tests/monitoring).

    python dashboards/build.py           # rewrite both copies
    python dashboards/build.py --check   # exit 1 when a copy is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_PATHS", "PANELS", "Panel", "build_dashboard", "render", "targets"]

REPO = Path(__file__).resolve().parent.parent
DASHBOARD_PATHS = (
    REPO / "dashboards" / "finetune-operator.json",
    REPO / "helm" / "finetune-operator" / "dashboards" / "finetune-operator.json",
)
UID = "finetune-operator"

# Selectors every training query carries; Grafana fills the variables from label values.
TRAIN = 'namespace=~"$namespace", job=~"$job"'
NS = 'namespace=~"$namespace"'


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: a title, its queries (PromQL, legend) and how to show them."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def _q(expr: str, legend: str) -> tuple[str, str]:
    return (expr, legend)


def _quantiles(metric: str, by: str, legend_prefix: str) -> tuple[tuple[str, str], ...]:
    group = f"le, {by}" if by else "le"
    return tuple(
        _q(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[$__rate_interval])))",
            f"p{int(q * 100)} {legend_prefix}".strip(),
        )
        for q in (0.5, 0.95, 0.99)
    )


# (row title, panels). Only metrics listed in docs/DEVELOPING.md ("Prometheus metrics") are used.
PANELS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Operator",
        (
            Panel(
                "FineTuneJobs by phase",
                (_q(f"sum by (phase) (finetune_operator_jobs{{{NS}}})", "{{phase}}"),),
                description="Current FineTuneJobs per lifecycle phase (finetune_operator_jobs).",
            ),
            Panel(
                "Reconcile latency",
                _quantiles("finetune_operator_reconcile_duration_seconds", "", ""),
                unit="s",
            ),
            Panel(
                "Reconcile errors",
                (
                    _q(
                        "sum(rate(finetune_operator_reconcile_errors_total[$__rate_interval]))",
                        "errors/s",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Phase transitions",
                (
                    _q(
                        "sum by (to) (increase(finetune_operator_phase_transitions_total"
                        "[$__rate_interval]))",
                        "to {{to}}",
                    ),
                ),
                width=12,
            ),
            Panel(
                "Time from creation to training",
                _quantiles("finetune_operator_time_to_training_seconds", "", ""),
                unit="s",
                width=12,
            ),
        ),
    ),
    (
        "Training",
        (
            Panel(
                "Loss and eval loss",
                (
                    _q(f"finetune_trainer_loss{{{TRAIN}}}", "loss {{namespace}}/{{job}}"),
                    _q(f"finetune_trainer_eval_loss{{{TRAIN}}}", "eval loss {{namespace}}/{{job}}"),
                ),
                width=12,
            ),
            Panel(
                "Progress",
                (
                    _q(
                        f"finetune_trainer_step{{{TRAIN}}} / finetune_trainer_total_steps{{{TRAIN}}}",
                        "{{namespace}}/{{job}}",
                    ),
                ),
                unit="percentunit",
                width=6,
            ),
            Panel(
                "ETA",
                (_q(f"finetune_trainer_eta_seconds{{{TRAIN}}}", "{{namespace}}/{{job}}"),),
                unit="s",
                kind="stat",
                width=6,
            ),
            Panel(
                "Tokens per second",
                (_q(f"finetune_trainer_tokens_per_second{{{TRAIN}}}", "{{namespace}}/{{job}}"),),
                unit="short",
            ),
            Panel(
                "Model FLOPs utilisation (MFU)",
                (_q(f"finetune_trainer_mfu_ratio{{{TRAIN}}}", "{{namespace}}/{{job}}"),),
                unit="percentunit",
            ),
            Panel(
                "Learning rate",
                (_q(f"finetune_trainer_learning_rate{{{TRAIN}}}", "{{namespace}}/{{job}}"),),
            ),
            Panel(
                "GPU memory",
                (_q(f"finetune_trainer_gpu_memory_bytes{{{TRAIN}}}", "{{namespace}}/{{job}}"),),
                unit="bytes",
            ),
            Panel(
                "GPU utilisation",
                (
                    _q(
                        f"finetune_trainer_gpu_utilization_ratio{{{TRAIN}}}",
                        "{{namespace}}/{{job}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "Restarts",
                (_q(f"finetune_trainer_restarts_total{{{TRAIN}}}", "{{namespace}}/{{job}}"),),
                kind="stat",
            ),
            Panel(
                "Storage throughput",
                (
                    _q(
                        f"rate(finetune_trainer_bytes_pulled_total{{{TRAIN}}}[$__rate_interval])",
                        "pulled {{job}}",
                    ),
                    _q(
                        f"rate(finetune_trainer_bytes_pushed_total{{{TRAIN}}}[$__rate_interval])",
                        "pushed {{job}}",
                    ),
                ),
                unit="Bps",
                width=12,
            ),
            Panel(
                "Tokens trained",
                (_q(f"finetune_trainer_tokens_total{{{TRAIN}}}", "{{namespace}}/{{job}}"),),
                width=12,
            ),
        ),
    ),
    (
        "Inference",
        (
            Panel(
                "Request rate",
                (
                    _q(
                        "sum by (route) (rate(finetune_inference_request_duration_seconds_count"
                        f"{{{NS}}}[$__rate_interval]))",
                        "{{route}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Request latency",
                tuple(
                    _q(
                        f"histogram_quantile({q}, sum by (le) (rate("
                        f"finetune_inference_request_duration_seconds_bucket{{{NS}}}"
                        "[$__rate_interval])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ),
                unit="s",
            ),
            Panel(
                "Errors",
                (
                    _q(
                        "sum by (route, code) (rate(finetune_inference_errors_total"
                        f"{{{NS}}}[$__rate_interval]))",
                        "{{route}} {{code}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Tokens generated per second",
                (
                    _q(
                        "sum(rate(finetune_inference_tokens_generated_total"
                        f"{{{NS}}}[$__rate_interval]))",
                        "tokens/s",
                    ),
                ),
            ),
            Panel(
                "Requests in flight",
                (_q(f"sum(finetune_inference_requests_in_flight{{{NS}}})", "in flight"),),
            ),
            Panel(
                "Served model",
                (_q(f"finetune_inference_model_info{{{NS}}}", "{{task}} {{run_id}}"),),
                kind="table",
            ),
        ),
    ),
)


def _datasource() -> dict[str, str]:
    return {"type": "prometheus", "uid": "${datasource}"}


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets_json = [
        {
            "datasource": _datasource(),
            "expr": expr,
            "legendFormat": legend,
            "refId": chr(ord("A") + i),
            **({"format": "table", "instant": True} if panel.kind == "table" else {}),
        }
        for i, (expr, legend) in enumerate(panel.queries)
    ]
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": _datasource(),
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": targets_json,
        **panel.extra,
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": _datasource(),
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "refresh": 2,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a Grafana JSON model (schemaVersion 39)."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row_title, row_panels in PANELS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x = pid + 1, y + 1, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, pid, x, y))
            pid, x = pid + 1, x + panel.width
        y += 8
    return {
        "uid": UID,
        "title": "Fine-tuning (finetune-operator)",
        "description": "FineTuneJobs: operator, training and inference. Source: dashboards/build.py",
        "tags": ["finetune-operator", "llm", "training"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "__inputs": [],
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                _variable(
                    "namespace", "Namespace", "label_values(finetune_operator_jobs, namespace)"
                ),
                _variable(
                    "job",
                    "FineTuneJob",
                    'label_values(finetune_trainer_step{namespace=~"$namespace"}, job)',
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    """The dashboard file's exact text."""
    return json.dumps(build_dashboard(), indent=2, sort_keys=False) + "\n"


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a dashboard JSON."""
    out: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a copy is stale")
    args = parser.parse_args(argv)
    text = render()
    stale = [p for p in DASHBOARD_PATHS if not p.is_file() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(
                f"{path.relative_to(REPO)} is stale: run python dashboards/build.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
