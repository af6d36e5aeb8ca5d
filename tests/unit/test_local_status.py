"""The status `finetune run --status-out` writes: the operator's document, valid for the API."""

from __future__ import annotations

from typing import Any

from finetune_operator.api import FineTuneJobStatus
from finetune_operator.local_status import Outcome, build_status, phase_of_stage

T0 = "2026-01-01T00:00:00Z"
TRAINER: dict[str, Any] = {
    "progress": {"stage": "done", "step": 20, "totalSteps": 20, "percent": 100},
    "metrics": {"trainLoss": "0.31", "evalLoss": "0.35"},
    "checkpoint": {"step": 20, "uri": "s3://a/runs/r/checkpoints/step-20/"},
    "evaluation": {"results": {"eval_accuracy": "0.93"}, "baseline": {"eval_accuracy": "0.5"}},
    "artifacts": {"uri": "s3://a/runs/r/", "manifestUri": "s3://a/runs/r/manifest.json"},
    "lineage": {"runId": "r", "specHash": "abc"},
}


def _conds(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_succeeded_status_has_everything() -> None:
    out = build_status(
        TRAINER,
        Outcome("Succeeded", "Succeeded", "done", gate_passed=True, gate_message="0.93 >= 0.8"),
        run_id="r",
        attempts=2,
        start_time=T0,
        now=T0,
        completion_time=T0,
    )
    FineTuneJobStatus.model_validate(out)  # the API accepts it
    assert out["phase"] == "Succeeded" and out["runId"] == "r" and out["attempts"] == 2
    assert out["evaluation"] == {
        "results": {"eval_accuracy": "0.93"},
        "baseline": {"eval_accuracy": "0.5"},
        "passed": True,
        "message": "0.93 >= 0.8",
    }
    assert out["artifacts"]["uri"] == "s3://a/runs/r/"
    assert out["lineage"]["specHash"] == "abc"
    assert out["completionTime"] == T0
    conds = _conds(out)
    assert conds["Ready"] == conds["Succeeded"] == conds["Trained"] == "True"
    assert conds["Failed"] == conds["Stalled"] == conds["Reconciling"] == "False"


def test_failed_on_bad_data() -> None:
    out = build_status(
        {"progress": {"stage": "validating"}},
        Outcome("Failed", "InvalidData", "train.jsonl row 3: label is missing"),
        run_id="r",
        attempts=1,
        start_time=T0,
        now=T0,
    )
    conds = _conds(out)
    assert out["phase"] == "Failed" and out["reason"] == "InvalidData"
    assert conds["DataValidated"] == "False" and conds["Failed"] == "True"
    assert conds["Ready"] == "False"


def test_running_and_suspended() -> None:
    running = build_status(
        {"progress": {"stage": "training", "step": 3, "totalSteps": 10}},
        Outcome(phase_of_stage("training"), "Running"),
        run_id="r",
        attempts=1,
        start_time=T0,
        now=T0,
    )
    assert running["phase"] == "Training" and _conds(running)["Reconciling"] == "True"
    assert running["progress"]["step"] == 3
    stopped = build_status(
        {"progress": {"stage": "training"}},
        Outcome("Suspended", "Interrupted", "stopped by Ctrl-C"),
        run_id="r",
        attempts=1,
        start_time=T0,
        now="2026-01-01T00:05:00Z",
        previous_conditions=running["conditions"],
    )
    assert _conds(stopped)["Suspended"] == "True"
    # unchanged conditions keep their transition time, changed ones get the new one
    times = {c["type"]: c["lastTransitionTime"] for c in stopped["conditions"]}
    assert times["Failed"] == T0 and times["Suspended"] == "2026-01-01T00:05:00Z"


def test_unknown_trainer_fields_are_dropped_not_fatal() -> None:
    trainer = {"progress": {"stage": "training", "step": 1, "someNewField": 3}, "debugInfo": {}}
    out = build_status(trainer, Outcome("Training"), run_id="r", attempts=1, start_time=T0, now=T0)
    assert out["progress"] == {"stage": "training", "step": 1}
    assert "debugInfo" not in out


def test_serving_and_deployed_condition() -> None:
    out = build_status(
        TRAINER,
        Outcome("Succeeded", serving={"endpoint": "http://127.0.0.1:1", "ready": True}),
        run_id="r",
        attempts=1,
        start_time=T0,
        now=T0,
    )
    assert out["serving"]["endpoint"] == "http://127.0.0.1:1"
    assert _conds(out)["Deployed"] == "True"


def test_phase_of_stage() -> None:
    assert phase_of_stage(None) == "Pending"
    assert phase_of_stage("pulling") == "Initializing"
    assert phase_of_stage("evaluating") == "Evaluating"
