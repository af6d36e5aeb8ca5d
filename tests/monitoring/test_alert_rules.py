"""The chart's alerts under `promtool test rules`: when each fires, with which labels, and when not.

Why it exists: the live test (test_dashboard_queries.py) proves every alert expression returns
series from the real components; this one pins the firing logic over time, including the `for:`
durations and the cases that must stay quiet, with Prometheus' own rule unit-test runner on series
written out below (the documented way to test alerting rules).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import CHART, KUBE_VERSION, find_helm


def rules_file(tmp_path: Path) -> Path:
    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found (TOOLS_DIR/helm, $HELM or PATH)")
    out = subprocess.run(
        [helm, "template", "finetune-operator", str(CHART), "--kube-version", KUBE_VERSION,
         "--show-only", "templates/prometheusrule.yaml", "--set", "monitoring.prometheusRule.enabled=true"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": yaml.safe_load(out)["spec"]["groups"]}))
    return path


# The annotations as they render for the series below (values and labels interpolated).
ANNOTATIONS = {
    "FineTuneJobFailed": {
        "summary": "FineTuneJobs failed in namespace team-a",
        "description": "1 FineTuneJob(s) in namespace team-a are in phase Failed. `kubectl get ftj -n "
        "team-a` shows which, and status.reason / status.message say why (InvalidData, InvalidSpec, "
        "BackoffLimitExceeded, ...).",
    },
    "FineTuneOperatorDown": {
        "summary": "The finetune-operator is down",
        "description": "No healthy scrape of the finetune-operator's /metrics (job "
        "finetune-operator-metrics) for 5 minutes: FineTuneJobs are not reconciled. Check `kubectl -n "
        "default get pods -l app.kubernetes.io/instance=finetune-operator`.",
    },
    "FineTuneOperatorReconcileErrors": {
        "summary": "The finetune-operator fails to reconcile",
        "description": "1 reconcile errors per second over 5 minutes. The operator's logs and the "
        "FineTuneJobs' Events name the failing object and the API error.",
    },
    "FineTuneJobStalled": {
        "summary": "FineTuneJob team-a/frozen makes no progress",
        "description": "The training step of team-a/frozen has not advanced for 30m although it is "
        "below the total. The operator restarts the gang after runPolicy.progressDeadlineSeconds; "
        "check the trainer pods' logs.",
    },
}


def alert(name: str, at: str, fired: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {"exp_labels": {**labels, "severity": "warning"}, "exp_annotations": ANNOTATIONS[name]}
            for labels in fired
        ],
    }


TESTS = [
    {
        "interval": "1m",
        "input_series": [
            {
                "series": 'finetune_operator_jobs{namespace="team-a",phase="Failed"}',
                "values": "0 0 1x10",
            },
            {
                "series": 'finetune_operator_jobs{namespace="team-b",phase="Failed"}',
                "values": "0x12",
            },
            {"series": 'up{job="finetune-operator-metrics"}', "values": "1 1 1 0x10"},
            {"series": "finetune_operator_reconcile_errors_total", "values": "0+60x30"},
            # team-a/frozen stops at step 50 of 100; team-a/done finished (50 of 50); team-a/moving moves.
            {
                "series": 'finetune_trainer_step{namespace="team-a",job="frozen"}',
                "values": "0+10x5 50x60",
            },
            {
                "series": 'finetune_trainer_total_steps{namespace="team-a",job="frozen"}',
                "values": "100x65",
            },
            {"series": 'finetune_trainer_step{namespace="team-a",job="done"}', "values": "50x65"},
            {
                "series": 'finetune_trainer_total_steps{namespace="team-a",job="done"}',
                "values": "50x65",
            },
            {
                "series": 'finetune_trainer_step{namespace="team-a",job="moving"}',
                "values": "0+1x65",
            },
            {
                "series": 'finetune_trainer_total_steps{namespace="team-a",job="moving"}',
                "values": "1000x65",
            },
        ],
        "alert_rule_test": [
            alert("FineTuneJobFailed", "2m", []),  # failed at 2m, `for: 1m` not yet elapsed
            alert("FineTuneJobFailed", "4m", [{"namespace": "team-a"}]),
            alert("FineTuneOperatorDown", "5m", []),  # down since 3m, `for: 5m`
            alert("FineTuneOperatorDown", "9m", [{}]),
            alert("FineTuneOperatorReconcileErrors", "5m", []),
            alert("FineTuneOperatorReconcileErrors", "20m", [{}]),  # 1/s > 0.1 for 10m
            alert("FineTuneJobStalled", "30m", []),
            alert("FineTuneJobStalled", "45m", [{"namespace": "team-a", "job": "frozen"}]),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": 'up{job="finetune-operator-metrics"}', "values": "1x20"},
            {"series": "finetune_operator_reconcile_errors_total", "values": "0+1x30"},
        ],
        "alert_rule_test": [
            alert("FineTuneOperatorDown", "15m", []),
            alert("FineTuneOperatorReconcileErrors", "25m", []),  # 1/min is below 0.1/s
        ],
    },
]


def test_alerts_fire_when_and_only_when_they_should(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run `bash hack/install-prometheus.sh`")
    rules = rules_file(tmp_path)
    spec = tmp_path / "tests.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": TESTS})
    )
    proc = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
