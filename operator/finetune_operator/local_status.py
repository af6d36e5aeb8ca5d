"""The FineTuneJob status that ``finetune run`` writes: what the operator would have written.

Why it exists: ``--status-out`` must give the same document a cluster run leaves in
``.status`` (ARCHITECTURE.md §3), so scripts and tests can read either. The trainer owns
progress, metrics, checkpoint, evaluation results/baseline, artifacts and lineage (it writes them
to its status file); the local runner owns phase, reason, message, conditions, attempts, runId,
start/completion times, evaluation.passed/message and serving. ``build_status`` merges the two;
it is pure (no I/O, the clock passed in) and checked against ``FineTuneJobStatus``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from finetune_operator.api import FineTuneJobStatus
from finetune_operator.status import desired_conditions, merge_conditions, parse_time

__all__ = [
    "Outcome",
    "build_status",
    "phase_of_stage",
]

# Fields the trainer owns (besides evaluation results/baseline); the rest is the runner's.
TRAINER_FIELDS = ("progress", "metrics", "checkpoint", "artifacts", "lineage")

_STAGE_PHASE = {
    "pulling": "Initializing",
    "validating": "Initializing",
    "training": "Training",
    "evaluating": "Evaluating",
    "uploading": "Uploading",
    "done": "Uploading",  # Succeeded only once the runner has checked the gate
}


@dataclass(frozen=True)
class Outcome:
    """The runner's view of the run at one moment.

    phase: Pending/Initializing/... while running (derive it with ``phase_of_stage``), or
    Succeeded / Failed / Suspended (Ctrl-C: stopped, checkpoint kept) at the end.
    reason/message: CamelCase reason and one readable sentence for the phase.
    gate_passed/gate_message: the evaluation gate's verdict (None before evaluation).
    """

    phase: str
    reason: str = ""
    message: str = ""
    gate_passed: bool | None = None
    gate_message: str | None = None
    serving: Mapping[str, Any] | None = None


def phase_of_stage(stage: str | None) -> str:
    """The phase the operator shows while the trainer is in ``stage``."""
    return _STAGE_PHASE.get(stage or "", "Pending")


def build_status(
    trainer: Mapping[str, Any],
    outcome: Outcome,
    *,
    run_id: str,
    attempts: int,
    start_time: str,
    now: str,
    completion_time: str | None = None,
    previous_conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The full status document (wire form, camelCase) for ``trainer``'s report and ``outcome``.

    ``trainer`` is the trainer's status file as read (FineTuneJobStatus wire format, possibly
    empty before its first report). Fields the trainer does not own are ignored in it.
    """
    evaluation = {
        k: v
        for k, v in dict(trainer.get("evaluation") or {}).items()
        if k in ("results", "baseline")
    }
    if outcome.gate_passed is not None:
        evaluation["passed"] = outcome.gate_passed
    if outcome.gate_message:
        evaluation["message"] = outcome.gate_message
    desired = desired_conditions(
        phase=outcome.phase,
        reason=outcome.reason or outcome.phase,
        message=outcome.message,
        stage=(trainer.get("progress") or {}).get("stage"),
        evaluation=evaluation,
        serving_enabled=outcome.serving is not None,
        existing=previous_conditions,
    )
    if outcome.serving is not None:
        ready = bool(outcome.serving.get("ready"))
        desired["Deployed"] = (
            "True" if ready else "False",
            "Serving" if ready else "NotServing",
            str(outcome.serving.get("message") or ""),
        )
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "phase": outcome.phase,
        "reason": outcome.reason or outcome.phase,
        "message": outcome.message,
        "conditions": merge_conditions(
            previous_conditions,
            desired,
            now=parse_time(now) or datetime.now(timezone.utc),
            generation=1,
        ),
        "attempts": attempts,
        "runId": run_id,
        "startTime": start_time,
    }
    if completion_time:
        status["completionTime"] = completion_time
    for key in TRAINER_FIELDS:
        if trainer.get(key):
            status[key] = dict(trainer[key])
    if evaluation:
        status["evaluation"] = evaluation
    if outcome.serving is not None:
        status["serving"] = dict(outcome.serving)
    return _conform(status)


def _conform(status: dict[str, Any]) -> dict[str, Any]:
    """The document as the API accepts it: fields the API does not know are dropped.

    A newer trainer may report extra fields; the status must still validate, as the CRD's
    schema would prune them in the cluster.
    """
    for _ in range(50):
        try:
            return FineTuneJobStatus.model_validate(status).to_wire()
        except ValidationError as exc:
            extras = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
            if not extras:
                raise
            for loc in extras:
                node: Any = status
                for part in loc[:-1]:
                    node = node[part]
                node.pop(loc[-1], None)
    return FineTuneJobStatus.model_validate(status).to_wire()
