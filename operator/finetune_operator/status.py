"""Status vocabulary: phases, reasons, conditions and time stamps, as pure functions.

Why it exists: the kstatus conditions (Ready, Reconciling, Stalled) that Flux and Argo CD read and
the domain conditions (DataValidated, Trained, Evaluated, Deployed, Succeeded, Failed, Suspended)
are all derived from the phase and the trainer's reports. Keeping that derivation here, apart from
the lifecycle decisions in ``reconcile.py``, makes both easier to read and test. A condition keeps
its lastTransitionTime while its status does not change, as the API conventions require.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "ACTIVE_PHASES",
    "OPERATOR_FIELDS",
    "STAGES",
    "TERMINAL_PHASES",
    "TRAINER_FIELDS",
    "WARNING_REASONS",
    "desired_conditions",
    "format_time",
    "merge_conditions",
    "parse_time",
    "stage_rank",
]

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
ACTIVE_PHASES = frozenset(
    {"Pending", "Initializing", "Training", "Evaluating", "Uploading", "Deploying"}
)
STAGES = ("pulling", "validating", "training", "evaluating", "uploading", "done")
# One owner per status field (docs/DEVELOPING.md): the operator never writes the trainer's.
TRAINER_FIELDS = ("progress", "metrics", "checkpoint", "artifacts", "lineage")
OPERATOR_FIELDS = (
    "observedGeneration",
    "phase",
    "reason",
    "message",
    "conditions",
    "attempts",
    "runId",
    "startTime",
    "completionTime",
    "serving",
    "gpuSeconds",
)
WARNING_REASONS = frozenset(
    {
        "BackoffRestart",
        "Restarting",
        "Stalled",
        "Unschedulable",
        "InvalidSpec",
        "InvalidData",
        "BackoffLimitExceeded",
        "DeadlineExceeded",
        "BaseJobFailed",
        "BaseJobHasNoArtifacts",
        "ReconcileError",
        "EvalGateFailed",
        "RollingBack",
        "RolloutFailed",
        "EndpointConflict",
        "NoArtifacts",
    }
)
# Reasons of a serving job's Succeeded phase → the Deployed condition (serving.py decides them).
DEPLOYED_BY_REASON = {
    "Deployed": "True",
    "EvalGateFailed": "False",
    "ChampionKept": "False",
    "ChampionReplaced": "False",
}

CONDITION_TYPES = (
    "Ready",
    "Reconciling",
    "Stalled",
    "DataValidated",
    "Trained",
    "Evaluated",
    "Deployed",
    "Succeeded",
    "Failed",
    "Suspended",
)


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    """Parse an RFC 3339 time (with or without fractions); None for anything else."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def stage_rank(stage: object) -> int:
    """Position of a trainer stage in STAGES; -1 when absent or unknown."""
    return STAGES.index(stage) if isinstance(stage, str) and stage in STAGES else -1


Cond = tuple[str, str, str]  # (status, reason, message)


def _was_true(existing: Sequence[Mapping[str, Any]], ctype: str) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True" for c in existing)


def desired_conditions(
    *,
    phase: str,
    reason: str,
    message: str,
    stage: object,
    evaluation: Mapping[str, Any] | None,
    serving_enabled: bool,
    existing: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Cond]:
    """Every condition type → (status, reason, message) for the given state.

    DataValidated and Trained are sticky: once True (the trainer got past validation / training in
    some attempt), a later restart does not turn them back.
    """
    rank = stage_rank(stage)
    out: dict[str, Cond] = {}
    active = phase in ACTIVE_PHASES
    out["Ready"] = (
        ("True", "Succeeded", "the run finished and its artifacts are stored")
        if phase == "Succeeded"
        else ("False", reason or phase, message)
    )
    out["Reconciling"] = ("True", reason or phase, message) if active else ("False", phase, "")
    out["Stalled"] = ("True", reason, message) if phase == "Failed" else ("False", phase, "")

    if reason == "InvalidData":
        out["DataValidated"] = ("False", "InvalidData", message)
    elif (
        rank >= STAGES.index("training")
        or phase == "Succeeded"
        or _was_true(existing, "DataValidated")
    ):
        out["DataValidated"] = ("True", "DataValid", "the training data passed validation")
    else:
        out["DataValidated"] = ("Unknown", "NotValidatedYet", "")

    if rank >= STAGES.index("evaluating") or phase == "Succeeded" or _was_true(existing, "Trained"):
        out["Trained"] = ("True", "TrainingComplete", "training finished")
    elif phase == "Failed":
        out["Trained"] = ("False", reason, message)
    else:
        out["Trained"] = ("Unknown", "NotTrainedYet", "")

    results = (evaluation or {}).get("results") or {}
    passed = (evaluation or {}).get("passed")
    if results and (rank >= STAGES.index("uploading") or phase in TERMINAL_PHASES | {"Deploying"}):
        if passed is True:
            out["Evaluated"] = ("True", "GatePassed", str((evaluation or {}).get("message") or ""))
        elif passed is False:
            out["Evaluated"] = ("True", "GateFailed", str((evaluation or {}).get("message") or ""))
        else:
            out["Evaluated"] = ("True", "EvaluationComplete", "evaluation results recorded")
    elif phase == "Failed":
        out["Evaluated"] = ("False", reason, message)
    else:
        out["Evaluated"] = ("Unknown", "NotEvaluatedYet", "")

    if not serving_enabled:
        out["Deployed"] = ("False", "ServingDisabled", "spec.serving.enabled is false")
    elif phase == "Failed":
        out["Deployed"] = ("False", reason, message)
    elif phase == "Succeeded" and reason in DEPLOYED_BY_REASON:
        out["Deployed"] = (DEPLOYED_BY_REASON[reason], reason, message)
    elif phase == "Deploying":
        out["Deployed"] = ("False", reason, message)
    else:
        out["Deployed"] = ("Unknown", "RolloutPending", "")

    out["Succeeded"] = (
        ("True", "Succeeded", message)
        if phase == "Succeeded"
        else (
            "False",
            phase,
            "",
        )
    )
    out["Failed"] = ("True", reason, message) if phase == "Failed" else ("False", phase, "")
    out["Suspended"] = ("True", reason, message) if phase == "Suspended" else ("False", phase, "")
    return out


def merge_conditions(
    existing: Sequence[Mapping[str, Any]],
    desired: Mapping[str, Cond],
    *,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Conditions in CONDITION_TYPES order, keeping lastTransitionTime where status is unchanged.

    Conditions of other types (added by someone else) are kept after ours.
    """
    by_type = {str(c.get("type")): c for c in existing}
    out: list[dict[str, Any]] = []
    for ctype in CONDITION_TYPES:
        if ctype not in desired:
            continue
        status, reason, message = desired[ctype]
        old = by_type.get(ctype)
        ltt = (
            old.get("lastTransitionTime")
            if old is not None and old.get("status") == status and old.get("lastTransitionTime")
            else format_time(now)
        )
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "reason": reason or "Unknown",
            "message": message[:1024],
            "lastTransitionTime": ltt,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    out += [dict(c) for t, c in by_type.items() if t not in CONDITION_TYPES]
    return out
