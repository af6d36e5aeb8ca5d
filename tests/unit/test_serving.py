"""The serving decision (gate, champion/challenger, rollout, rollback) as a pure function.

Each test builds the endpoint Deployment the way the API would hold it after the previous
decision's actions, so the sequence of decisions is checked end to end without a cluster.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.resources import JobIdentity
from finetune_operator.serving import (
    EndpointObservation,
    ServingDecision,
    ServingPatch,
    ServingPut,
    decide,
    follow_champion,
    gate_verdict,
)
from finetune_operator.serving_kube import replacement_patch
from finetune_operator.serving_manifests import champion_of
from finetune_operator.status import desired_conditions

T0 = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


def spec(top: dict[str, Any] | None = None, **serving: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://models/base/"},
            "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "chat"}],
            "output": {"uri": "s3://artifacts/bot/"},
            "template": {"image": "ghcr.io/example/trainer:1"},
            "storage": {"endpoint": "http://minio:9000", "credentialsSecret": "s3-creds"},
            "validation": {"splitRatio": "0.1"},
            "evaluation": {"gate": [{"metric": "eval_loss", "op": "<=", "value": "1.2"}]},
            "serving": {"enabled": True, "endpoint": "bot", **serving},
            **(top or {}),
        }
    )


def ident(name: str) -> JobIdentity:
    return JobIdentity(name=name, namespace="ns", uid=f"uid-{name}")


def status(name: str, loss: str, **extra: Any) -> dict[str, Any]:
    return {
        "evaluation": {"results": {"eval_loss": loss}},
        "artifacts": {"uri": f"s3://artifacts/bot/runs/{name}/"},
        **extra,
    }


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch, as the API server applies it (lists are replaced)."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge_patch(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


class Endpoint:
    """The endpoint objects as the API server would hold them after the actions."""

    def __init__(self) -> None:
        self.deployment: dict[str, Any] | None = None
        self.service: dict[str, Any] | None = None
        self.rv = 0

    def observe(self, alive: bool = True) -> EndpointObservation:
        return EndpointObservation(
            copy.deepcopy(self.deployment), copy.deepcopy(self.service), alive
        )

    def apply(self, d: ServingDecision) -> None:
        for a in d.actions:
            self.rv += 1
            if isinstance(a, ServingPut):
                m = copy.deepcopy(a.manifest)
                if m["kind"] == "Deployment":
                    old = self.deployment
                    if old is not None:
                        assert (
                            m["metadata"].get("resourceVersion")
                            == old["metadata"]["resourceVersion"]
                        ), "a replacement must be guarded by the observed resourceVersion"
                    m["metadata"]["resourceVersion"] = str(self.rv)
                    m["metadata"]["generation"] = (old or {}).get("metadata", {}).get(
                        "generation", 0
                    ) + 1
                    m["status"] = (old or {}).get("status", {})
                    self.deployment = m
                else:
                    assert self.service is None
                    self.service = m
            elif isinstance(a, ServingPatch):
                target = self.deployment if a.kind == "Deployment" else self.service
                assert target is not None
                merge_patch(target, a.patch)

    def roll_out(self, ready: bool) -> None:
        """The deployment controller's view: every new replica available, or none."""
        assert self.deployment is not None
        n = self.deployment["spec"]["replicas"]
        self.deployment["status"] = {
            "observedGeneration": self.deployment["metadata"]["generation"],
            "replicas": n if ready else n + 1,
            "updatedReplicas": n,
            "availableReplicas": n if ready else 0,
        }


def step(ep: Endpoint, name: str, loss: str, at: datetime, alive: bool = True, **kw: Any):
    st = kw.pop("st", None) or status(name, loss)
    d = decide(ident(name), spec(**kw), st, ep.observe(alive), at)
    ep.apply(d)
    return d


def serve_first(ep: Endpoint, name: str = "v1", loss: str = "0.9") -> None:
    d = step(ep, name, loss, T0)
    assert (d.phase, d.reason) == ("Deploying", "RollingOut")
    ep.roll_out(ready=True)
    d = step(ep, name, loss, T0 + timedelta(seconds=5))
    assert (d.phase, d.reason) == ("Succeeded", "Deployed")


# ------------------------------------------------------------------------------------ gate


def test_gate_failure_is_succeeded_without_rollout_and_names_the_numbers() -> None:
    ep = Endpoint()
    d = step(ep, "v1", "1.5", T0)
    assert (d.phase, d.reason) == ("Succeeded", "EvalGateFailed")
    assert "training succeeded" in d.message and "eval_loss 1.5 <= 1.2 is false" in d.message
    assert d.actions == [] and ep.deployment is None
    assert d.serving_status["promoted"] is False
    conds = desired_conditions(
        phase=d.phase,
        reason=d.reason,
        message=d.message,
        stage="done",
        evaluation={"results": {"eval_loss": "1.5"}, "passed": False},
        serving_enabled=True,
    )
    assert conds["Deployed"][:2] == ("False", "EvalGateFailed")
    assert conds["Evaluated"][1] == "GateFailed"


def test_missing_gate_metric_fails_the_gate() -> None:
    v = gate_verdict(spec(), {"evaluation": {"results": {"eval_accuracy": "0.9"}}})
    assert v["passed"] is False and "eval_loss missing" in v["message"]


def test_no_artifacts_is_failed_with_advice() -> None:
    d = decide(ident("v1"), spec(), {"evaluation": {"results": {"eval_loss": "0.5"}}}, None, T0)
    assert (d.phase, d.reason) == ("Failed", "NoArtifacts") and d.actions == []


# --------------------------------------------------------------------------- first rollout


def test_first_rollout_creates_deployment_and_service_then_succeeds() -> None:
    ep = Endpoint()
    d = step(ep, "v1", "0.9", T0)
    assert (d.phase, d.reason) == ("Deploying", "RollingOut")
    assert "no model serves the endpoint yet" in d.message
    assert {a.manifest["kind"] for a in d.actions if isinstance(a, ServingPut)} == {
        "Deployment",
        "Service",
    }
    assert ep.deployment is not None and ep.service is not None
    assert "resourceVersion" not in d.actions[0].manifest["metadata"]  # type: ignore[union-attr]
    champ = champion_of(ep.deployment)
    assert champ is not None and (champ.job, champ.value) == ("v1", "0.9")
    assert ep.deployment["metadata"]["ownerReferences"][0]["uid"] == "uid-v1"
    assert ep.service["metadata"]["ownerReferences"][0]["uid"] == "uid-v1"
    assert d.serving_status == {
        "endpoint": "http://bot.ns.svc:8000",
        "promoted": True,
        "ready": False,
        "message": d.serving_status["message"],
    }
    # Not yet available: still Deploying, polled again soon; no new actions.
    ep.roll_out(ready=False)
    d = step(ep, "v1", "0.9", T0 + timedelta(seconds=10))
    assert (d.phase, d.reason) == ("Deploying", "RollingOut") and d.actions == []
    assert d.requeue_after is not None and d.requeue_after <= 5
    ep.roll_out(ready=True)
    d = step(ep, "v1", "0.9", T0 + timedelta(seconds=20))
    assert (d.phase, d.reason) == ("Succeeded", "Deployed")
    assert d.serving_status["ready"] is True and d.serving_status["promoted"] is True


def test_endpoint_defaults_to_the_job_name() -> None:
    s = spec()
    s.serving.endpoint = None
    d = decide(ident("solo"), s, status("solo", "0.5"), None, T0)
    assert d.serving_status["endpoint"] == "http://solo.ns.svc:8000"
    assert d.actions[0].manifest["metadata"]["name"] == "solo"  # type: ignore[union-attr]


def test_a_deployment_not_managed_by_us_is_a_conflict() -> None:
    foreign = {"metadata": {"name": "bot", "labels": {"app": "bot"}}, "spec": {}}
    d = decide(ident("v1"), spec(), status("v1", "0.5"), EndpointObservation(foreign), T0)
    assert (d.phase, d.reason) == ("Failed", "EndpointConflict") and d.actions == []
    assert "spec.serving.endpoint" in d.message
    svc = {"metadata": {"name": "bot", "labels": {}}, "spec": {}}
    d = decide(ident("v1"), spec(), status("v1", "0.5"), EndpointObservation(None, svc), T0)
    assert (d.reason, d.actions) == ("EndpointConflict", []) and "Service 'bot'" in d.message


# ---------------------------------------------------------------------- champion/challenger


def test_worse_challenger_keeps_the_champion_with_both_numbers() -> None:
    ep = Endpoint()
    serve_first(ep)
    before = copy.deepcopy(ep.deployment)
    d = step(ep, "v2", "1.0", T0 + timedelta(minutes=5))
    assert (d.phase, d.reason) == ("Succeeded", "ChampionKept")
    assert "1.0" in d.serving_status["message"] and "0.9" in d.serving_status["message"]
    assert "'v1'" in d.message
    assert d.actions == [] and ep.deployment == before


def test_equal_challenger_is_not_an_improvement() -> None:
    ep = Endpoint()
    serve_first(ep)
    d = step(ep, "v2", "0.90", T0 + timedelta(minutes=5))
    assert d.reason == "ChampionKept"


def test_without_require_improvement_a_worse_challenger_is_promoted() -> None:
    ep = Endpoint()
    serve_first(ep)
    d = step(ep, "v2", "1.1", T0 + timedelta(minutes=5), promote={"requireImprovement": False})
    assert (d.phase, d.reason) == ("Deploying", "RollingOut")


def test_higher_is_better_metric_is_respected() -> None:
    ep = Endpoint()
    classify = {
        "task": "sequence-classification",
        "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "classification"}],
        "evaluation": {
            "metrics": ["accuracy"],
            "gate": [{"metric": "eval_accuracy", "op": ">=", "value": "0.5"}],
        },
    }
    s2 = spec(classify, promote={"metric": "eval_accuracy"})
    extra = {"evaluation": {"results": {"eval_loss": "0.9", "eval_accuracy": "0.80"}}}
    st1 = {**status("v1", "0.9"), **extra}
    d = decide(ident("v1"), s2, st1, None, T0)
    ep.apply(d)
    ep.roll_out(ready=True)
    st2 = {
        **status("v2", "0.95"),
        "evaluation": {"results": {"eval_loss": "0.95", "eval_accuracy": "0.85"}},
    }
    d = decide(ident("v2"), s2, st2, ep.observe(), T0 + timedelta(minutes=1))
    assert d.reason == "RollingOut" and "0.85" in d.message and "0.80" in d.message


def test_better_challenger_replaces_the_champion_and_keeps_it_for_rollback() -> None:
    ep = Endpoint()
    serve_first(ep)
    old_template = copy.deepcopy(ep.deployment["spec"]["template"])  # type: ignore[index]
    d = step(ep, "v2", "0.5", T0 + timedelta(minutes=5))
    assert (d.phase, d.reason) == ("Deploying", "RollingOut")
    assert "0.5" in d.message and "0.9" in d.message
    put = next(a for a in d.actions if isinstance(a, ServingPut))
    assert put.manifest["metadata"]["resourceVersion"]  # guarded replacement
    dep = ep.deployment
    assert dep is not None
    ann = dep["metadata"]["annotations"]
    assert json.loads(ann["finetune.dev/previous-champion"])["job"] == "v1"
    assert json.loads(ann["finetune.dev/previous-template"])["template"] == old_template
    # During the rollout both jobs own the endpoint: deleting either one keeps it up.
    assert [r["uid"] for r in dep["metadata"]["ownerReferences"]] == ["uid-v1", "uid-v2"]
    assert dep["metadata"]["ownerReferences"][1] == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "v2",
        "uid": "uid-v2",
        "controller": False,
        "blockOwnerDeletion": False,
    }
    svc_owners = ep.service["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [r["uid"] for r in svc_owners] == ["uid-v1", "uid-v2"]
    ep.roll_out(ready=True)
    d = step(ep, "v2", "0.5", T0 + timedelta(minutes=6))
    assert d.reason == "Deployed"
    # Available: the challenger becomes the only owner (deleting v1 now changes nothing).
    assert [a.kind for a in d.actions if isinstance(a, ServingPatch)] == ["Deployment", "Service"]
    for obj in (ep.deployment, ep.service):
        assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == ["uid-v2"]  # type: ignore[index]
    # Level-based: a repeated decision changes nothing more.
    assert step(ep, "v2", "0.5", T0 + timedelta(minutes=6)).actions == []
    # The former champion, reconciled again, would not fight back.
    d = step(ep, "v1", "0.9", T0 + timedelta(minutes=7))
    assert d.reason == "ChampionReplaced" and d.actions == []


# ----------------------------------------------------------------------------------- rollback


def test_rollout_not_available_in_time_is_rolled_back() -> None:
    ep = Endpoint()
    serve_first(ep)
    v1_template = copy.deepcopy(ep.deployment["spec"]["template"])  # type: ignore[index]
    t = T0 + timedelta(minutes=5)
    step(ep, "v2", "0.5", t, rolloutDeadlineSeconds=60)
    ep.roll_out(ready=False)
    d = step(ep, "v2", "0.5", t + timedelta(seconds=59), rolloutDeadlineSeconds=60)
    assert d.reason == "RollingOut" and d.actions == []
    d = step(ep, "v2", "0.5", t + timedelta(seconds=61), rolloutDeadlineSeconds=60)
    assert (d.phase, d.reason) == ("Deploying", "RollingBack")
    assert "rolloutDeadlineSeconds=60" in d.message and "'v1'" in d.message
    dep = ep.deployment
    assert dep is not None
    assert dep["spec"]["template"] == v1_template
    assert champion_of(dep).job == "v1"  # type: ignore[union-attr]
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-v1"
    assert ep.service["metadata"]["ownerReferences"][0]["uid"] == "uid-v1"  # type: ignore[index]
    assert "finetune.dev/previous-template" not in dep["metadata"]["annotations"]
    # Next reconcile: final verdict, no further actions (the restored model is not re-judged).
    st = status("v2", "0.5", reason="RollingBack")
    d = step(ep, "v2", "0.5", t + timedelta(seconds=62), st=st, rolloutDeadlineSeconds=60)
    assert (d.phase, d.reason) == ("Failed", "RolloutFailed") and d.actions == []
    assert "serves FineTuneJob 'v1'" in d.message
    conds = desired_conditions(
        phase=d.phase,
        reason=d.reason,
        message=d.message,
        stage="done",
        evaluation={},
        serving_enabled=True,
    )
    assert conds["Deployed"][:2] == ("False", "RolloutFailed")


def test_rollback_to_a_deleted_champion_leaves_the_endpoint_without_owner() -> None:
    ep = Endpoint()
    serve_first(ep)
    t = T0 + timedelta(minutes=5)
    step(ep, "v2", "0.5", t, rolloutDeadlineSeconds=30)
    ep.roll_out(ready=False)
    d = step(ep, "v2", "0.5", t + timedelta(seconds=31), alive=False, rolloutDeadlineSeconds=30)
    assert d.reason == "RollingBack"
    assert ep.deployment["metadata"]["ownerReferences"] == []  # type: ignore[index]
    assert ep.service["metadata"]["ownerReferences"] == []  # type: ignore[index]


def test_failed_first_rollout_scales_to_zero_and_the_next_job_may_serve() -> None:
    ep = Endpoint()
    step(ep, "v1", "0.9", T0, rolloutDeadlineSeconds=30)
    ep.roll_out(ready=False)
    d = step(ep, "v1", "0.9", T0 + timedelta(seconds=31), rolloutDeadlineSeconds=30)
    assert d.reason == "RollingBack" and "scaling to 0" in d.message
    assert ep.deployment["spec"]["replicas"] == 0  # type: ignore[index]
    assert champion_of(ep.deployment) is None
    d = step(ep, "v1", "0.9", T0 + timedelta(seconds=32), rolloutDeadlineSeconds=30)
    assert (d.phase, d.reason) == ("Failed", "RolloutFailed")
    d = step(ep, "v2", "1.1", T0 + timedelta(minutes=1))
    assert d.reason == "RollingOut" and ep.deployment["spec"]["replicas"] == 1  # type: ignore[index]


def test_replacement_patch_is_guarded_and_replaces_whole_spec() -> None:
    ep = Endpoint()
    serve_first(ep)
    d = decide(ident("v2"), spec(), status("v2", "0.5"), ep.observe(), T0 + timedelta(1))
    put = next(a for a in d.actions if isinstance(a, ServingPut))
    ops = replacement_patch(put.manifest)
    assert ops[0] == {
        "op": "add",
        "path": "/metadata/resourceVersion",
        "value": ep.deployment["metadata"]["resourceVersion"],  # type: ignore[index]
    }
    assert {o["path"] for o in ops} == {
        "/metadata/resourceVersion",
        "/metadata/labels",
        "/metadata/annotations",
        "/metadata/ownerReferences",
        "/spec",
    }


@pytest.mark.parametrize("reason", ["Deployed", "ChampionKept", "EvalGateFailed"])
def test_deployed_condition_follows_the_reason(reason: str) -> None:
    conds = desired_conditions(
        phase="Succeeded",
        reason=reason,
        message="m",
        stage="done",
        evaluation={},
        serving_enabled=True,
    )
    assert conds["Deployed"] == ("True" if reason == "Deployed" else "False", reason, "m")


# ------------------------------------------------------------------- after the job finished


def test_finished_champion_learns_it_was_replaced_and_keeps_replicas_in_sync() -> None:
    ep = Endpoint()
    serve_first(ep)
    served = {"serving": {"promoted": True, "ready": True, "message": "m"}}
    obs = ep.observe()
    assert follow_champion(ident("v1"), {"replicas": 1}, served, obs) == (None, [])
    new, actions = follow_champion(ident("v1"), {"replicas": 3}, served, obs)
    assert new is None and actions == [ServingPatch("Deployment", "bot", {"spec": {"replicas": 3}})]
    step(ep, "v2", "0.5", T0 + timedelta(minutes=5))
    new, actions = follow_champion(ident("v1"), {"replicas": 3}, served, ep.observe())
    assert actions == [] and new is not None
    assert new["promoted"] is False and "'v2'" in new["message"] and "0.5" in new["message"]
    # Not the champion in the first place: nothing to follow.
    assert follow_champion(ident("v9"), {}, {"serving": {"promoted": False}}, obs) == (None, [])
    gone = follow_champion(ident("v1"), {}, served, EndpointObservation())[0]
    assert gone is not None and "no longer exists" in gone["message"]
