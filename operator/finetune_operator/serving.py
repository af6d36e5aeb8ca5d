"""After the upload: the evaluation gate, champion/challenger promotion, rollout and rollback.

Why it exists: the reconcile calls ``decide`` once the training Job completed. This one pure
function turns the job's evaluation results and the endpoint's Deployment (as observed) into the
next phase, the serving status and the actions on the endpoint, so the whole promotion story is
unit-testable without a cluster (tests/unit/test_serving.py) and crash-safe: every decision is
re-derived from the FineTuneJob status and the Deployment's annotations (serving_manifests.py).

Outcomes (documented in the README, "Serving and champion/challenger"):
- gate failed → Succeeded (training did succeed), condition Deployed=False reason EvalGateFailed,
  nothing rolled out. A failed gate is a verdict on the model, not a fault of the job.
- gate passed, serving disabled → Succeeded.
- gate passed, serving enabled: challenger vs the champion recorded on the Deployment
  (``should_promote`` on spec.serving.promote.metric). Kept → Succeeded, Deployed=False reason
  ChampionKept. Promoted → Deploying (RollingOut) until the Deployment is available → Succeeded
  (reason Deployed). Not available within rolloutDeadlineSeconds → the previous model is restored
  (Deploying, RollingBack) → Failed, reason RolloutFailed: the job did not deliver the serving it
  asked for, and kstatus tools (Argo CD, Flux) should show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from finetune_operator.api import FineTuneJobSpec
from finetune_operator.gate import evaluate_gate, should_promote
from finetune_operator.resources import MANAGED_BY, JobIdentity
from finetune_operator.serving_manifests import (
    ANN_PREVIOUS,
    ANN_ROLLED_BACK,
    ANN_ROLLOUT_STARTED,
    Champion,
    build_deployment,
    build_endpoint_service,
    build_rollback,
    champion_of,
    endpoint_name,
    endpoint_url,
    owner_ref,
    rollout_progress,
)
from finetune_operator.status import parse_time

__all__ = [
    "EndpointObservation",
    "ServingAction",
    "ServingDecision",
    "ServingPatch",
    "ServingPut",
    "decide",
    "follow_champion",
    "gate_verdict",
]


@dataclass(frozen=True)
class EndpointObservation:
    """The endpoint's objects as read just before the reconcile."""

    deployment: Mapping[str, Any] | None = None
    service: Mapping[str, Any] | None = None
    previous_owner_exists: bool = False
    """Whether the FineTuneJob recorded as previous champion still exists (same uid)."""


@dataclass(frozen=True)
class ServingPut:
    """Create the object (no resourceVersion) or replace it whole (PUT, guarded)."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class ServingPatch:
    """JSON merge-patch of an endpoint object (lists such as ownerReferences are replaced)."""

    kind: str
    name: str
    patch: dict[str, Any]


ServingAction = ServingPut | ServingPatch


@dataclass(frozen=True)
class ServingDecision:
    """The next phase after the upload, with the serving status to write and the actions."""

    phase: str
    reason: str
    message: str
    serving_status: dict[str, Any] = field(default_factory=dict)
    actions: list[ServingAction] = field(default_factory=list)
    requeue_after: float | None = None


def gate_verdict(spec: FineTuneJobSpec, status: Mapping[str, Any]) -> dict[str, Any]:
    """status.evaluation.passed/message from spec.evaluation.gate and the reported results."""
    results = (status.get("evaluation") or {}).get("results") or {}
    gate = evaluate_gate(spec.evaluation.gate, {str(k): str(v) for k, v in results.items()})
    return {"passed": gate.passed, "message": gate.message}


def _results(status: Mapping[str, Any]) -> dict[str, str]:
    raw = (status.get("evaluation") or {}).get("results") or {}
    return {str(k): str(v) for k, v in raw.items()}


def _owners(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in (deployment.get("metadata") or {}).get("ownerReferences") or []]


def _only_owner(endpoint: str, dep: Mapping[str, Any], me: Champion) -> list[ServingAction]:
    """After a rollout: the champion becomes the endpoint's only owner (Deployment first)."""
    if [r.get("uid") for r in _owners(dep)] == [me.uid]:
        return []
    return [
        ServingPatch(
            "Deployment", endpoint, {"metadata": {"ownerReferences": [owner_ref(me.job, me.uid)]}}
        )
    ]


def _service_action(
    endpoint: str,
    namespace: str,
    deployment: Mapping[str, Any],
    obs: EndpointObservation,
    want: list[dict[str, Any]] | None = None,
) -> list[ServingAction]:
    """Create the Service, or give it the same owners as the Deployment (or ``want``)."""
    want = _owners(deployment) if want is None else want
    if obs.service is None:
        return [ServingPut(build_endpoint_service(endpoint, namespace, want))]
    have = (obs.service.get("metadata") or {}).get("ownerReferences") or []
    if [r.get("uid") for r in have] != [r.get("uid") for r in want]:
        return [ServingPatch("Service", endpoint, {"metadata": {"ownerReferences": want}})]
    return []


def _annotations(dep: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return ((dep or {}).get("metadata") or {}).get("annotations") or {}


def _rolled_back_uid(dep: Mapping[str, Any] | None) -> str | None:
    raw = _annotations(dep).get(ANN_ROLLED_BACK)
    rb = Champion.from_json(raw)  # same {job, uid} keys
    return rb.uid if rb else None


def follow_champion(
    ident: JobIdentity,
    raw_serving: Mapping[str, Any],
    status: Mapping[str, Any],
    obs: EndpointObservation,
) -> tuple[dict[str, Any] | None, list[ServingAction]]:
    """A finished job that serves (or served) the endpoint: (new serving status or None, actions).

    When a newer job replaced it (or the Deployment is gone), status.serving says so. While it is
    the champion, spec.serving.replicas (mutable) is kept on the Deployment; other serving
    changes after the job finished are not rolled out (re-create the job to change the model).
    """
    current = dict(status.get("serving") or {})
    if not current.get("promoted"):
        return None, []
    dep = obs.deployment
    champion = champion_of(dep)
    if dep is None or champion is None or champion.uid != ident.uid:
        if dep is None:
            why = "the endpoint's Deployment no longer exists"
        elif champion is None:
            why = "the endpoint no longer serves any model"
        else:
            why = f"replaced on the endpoint by {champion.describe()}"
        return {**current, "promoted": False, "ready": False, "message": why}, []
    want = raw_serving.get("replicas", 1)
    have = (dep.get("spec") or {}).get("replicas")
    name = str((dep.get("metadata") or {}).get("name"))
    only = [owner_ref(champion.job, champion.uid)]
    actions = [
        *_only_owner(name, dep, champion),
        *_service_action(name, ident.namespace, dep, obs, only),
    ]
    if isinstance(want, int) and want != have:
        actions.append(ServingPatch("Deployment", name, {"spec": {"replicas": want}}))
    return None, actions


def decide(
    ident: JobIdentity,
    spec: FineTuneJobSpec,
    status: Mapping[str, Any],
    obs: EndpointObservation | None,
    now: datetime,
) -> ServingDecision:
    """The serving outcome for a job whose training Job completed (pure)."""
    obs = obs or EndpointObservation()
    endpoint = endpoint_name(ident, spec)
    url = endpoint_url(endpoint, ident.namespace)
    art = (status.get("artifacts") or {}).get("uri")
    verdict = gate_verdict(spec, status)
    if not verdict["passed"]:
        msg = f"training succeeded; not deployed to {endpoint}: {verdict['message']}"
        return ServingDecision(
            "Succeeded",
            "EvalGateFailed",
            msg,
            {"endpoint": url, "promoted": False, "ready": False, "message": verdict["message"]},
        )
    if not art:
        return ServingDecision(
            "Failed",
            "NoArtifacts",
            "training succeeded but the trainer reported no status.artifacts.uri, so there is "
            "no model to serve; check the trainer's logs",
            {"endpoint": url, "promoted": False, "ready": False},
        )
    dep = obs.deployment
    for kind, obj in (("Deployment", dep), ("Service", obs.service)):
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        if obj is not None and labels.get("app.kubernetes.io/managed-by") != MANAGED_BY:
            return ServingDecision(
                "Failed",
                "EndpointConflict",
                f"training succeeded, but {kind} {endpoint!r} exists and is not managed by "
                f"finetune-operator; choose another spec.serving.endpoint or remove that {kind}",
                {"endpoint": url, "promoted": False, "ready": False},
            )
    champion = champion_of(dep)
    metric = spec.serving.promote.metric
    results = _results(status)
    decision_msg = str((status.get("serving") or {}).get("message") or "")

    # A rollout of ours that was rolled back: final.
    if _rolled_back_uid(dep) == ident.uid or (
        status.get("reason") == "RollingBack" and (champion is None or champion.uid != ident.uid)
    ):
        back_to = (
            f"the endpoint serves {champion.describe()} again"
            if champion is not None
            else "there was no previous model, so the endpoint was scaled to 0"
        )
        msg = (
            f"training succeeded, but the rollout to {endpoint} was not available within "
            f"spec.serving.rolloutDeadlineSeconds={spec.serving.rollout_deadline_seconds}; "
            f"rolled back: {back_to}"
        )
        return ServingDecision(
            "Failed",
            "RolloutFailed",
            msg,
            {"endpoint": url, "promoted": False, "ready": False, "message": msg},
        )

    # We are the champion: follow the rollout.
    if dep is not None and champion is not None and champion.uid == ident.uid:
        done, detail = rollout_progress(dep)
        base = {"endpoint": url, "promoted": True, "message": decision_msg}
        actions = _service_action(endpoint, ident.namespace, dep, obs)
        if done:
            only = [owner_ref(champion.job, champion.uid)]
            return ServingDecision(
                "Succeeded",
                "Deployed",
                f"serving {art} at {url} ({detail})",
                {**base, "ready": True},
                [
                    *_only_owner(endpoint, dep, champion),
                    *_service_action(endpoint, ident.namespace, dep, obs, only),
                ],
            )
        started = parse_time(_annotations(dep).get(ANN_ROLLOUT_STARTED)) or now
        deadline = spec.serving.rollout_deadline_seconds
        left = deadline - (now - started).total_seconds()
        if left > 0:
            return ServingDecision(
                "Deploying",
                "RollingOut",
                f"rolling out {art} to {endpoint}: {detail}",
                {**base, "ready": False},
                actions,
                requeue_after=min(5.0, left),
            )
        manifest, restored = build_rollback(
            dep,
            failed=champion,
            previous_owner_exists=obs.previous_owner_exists,
            now=now,
            reason=f"not available within {deadline}s: {detail}",
        )
        back = restored.describe() if restored else "nothing (no previous model: scaling to 0)"
        return ServingDecision(
            "Deploying",
            "RollingBack",
            f"the rollout to {endpoint} was not available within "
            f"spec.serving.rolloutDeadlineSeconds={deadline} ({detail}); rolling back to {back}",
            {**base, "promoted": False, "ready": False},
            [ServingPut(manifest), *_service_action(endpoint, ident.namespace, manifest, obs)],
            requeue_after=1.0,
        )

    # A newer job replaced us while we were rolling out: it owns the endpoint now.
    prev = Champion.from_json(_annotations(dep).get(ANN_PREVIOUS))
    if champion is not None and prev is not None and prev.uid == ident.uid:
        msg = f"training succeeded; {champion.describe()} replaced this job's model on {endpoint}"
        return ServingDecision(
            "Succeeded",
            "ChampionReplaced",
            msg,
            {"endpoint": url, "promoted": False, "ready": False, "message": msg},
        )

    # Challenger vs champion.
    mine = results.get(metric)
    theirs = None if champion is None else champion.results.get(metric, "missing")
    promote, why = should_promote(metric, mine, theirs, spec.serving.promote.require_improvement)
    if champion is not None:
        why = f"challenger {ident.name!r} vs champion {champion.job!r}: {why}"
    if not promote:
        return ServingDecision(
            "Succeeded",
            "ChampionKept",
            f"training succeeded; not deployed: {why}",
            {"endpoint": url, "promoted": False, "ready": False, "message": why},
        )
    me = Champion(ident.name, ident.uid, str(art), metric, mine, results)
    manifest = build_deployment(ident, spec, champion=me, now=now, current=dep)
    return ServingDecision(
        "Deploying",
        "RollingOut",
        f"{why}; rolling out {art} to {endpoint}",
        {"endpoint": url, "promoted": True, "ready": False, "message": why},
        [ServingPut(manifest), *_service_action(endpoint, ident.namespace, manifest, obs)],
        requeue_after=1.0,
    )
