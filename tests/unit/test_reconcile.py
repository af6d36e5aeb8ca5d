"""The pure level-based reconcile: each lifecycle rule from an observed state, and idempotence.

A tiny in-memory "world" applies a decision (status patch, creates, deletes) the way the handlers
do, so multi-step stories (fail → backoff → restart → run) are checked end to end without a
cluster; the real-cluster proofs are in tests/cluster/test_operator*.py.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_operator.reconcile import (
    Create,
    Decision,
    Delete,
    DeleteSelf,
    Observed,
    Update,
    reconcile,
)
from finetune_operator.resources import LABEL_ATTEMPT, LABEL_JOB
from finetune_operator.serving import ServingPut
from finetune_operator.settings import ReconcileSettings
from finetune_operator.status import TRAINER_FIELDS, format_time

T0 = datetime(2026, 11, 22, 3, 0, 0, tzinfo=timezone.utc)
S = ReconcileSettings(restart_backoff_seconds=10, restart_backoff_max_seconds=60)
UID = "12345678-aaaa-bbbb-cccc-0123456789ab"


def ftj(**spec_over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/tiny/"},
        "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "chat"}],
        "output": {"uri": "s3://artifacts/bot/"},
        "distributed": {"nodes": 2, "gpusPerNode": 1},
        "runPolicy": {
            "backoffLimit": 2,
            "maxPendingSeconds": 120,
            "progressDeadlineSeconds": 300,
        },
    }
    spec.update(spec_over)
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": "bot",
            "namespace": "ns",
            "uid": UID,
            "generation": 1,
            "creationTimestamp": format_time(T0),
        },
        "spec": spec,
        "status": {},
    }


class World:
    """Objects as the API would hold them after the handlers applied each decision."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.children: dict[str, dict[str, Any]] = {}
        self.job: dict[str, Any] | None = None
        self.pods: list[dict[str, Any]] = []
        self.deleted_self = False

    def observe(self, now: datetime) -> Observed:
        return Observed(
            body=copy.deepcopy(self.body),
            now=now,
            children=copy.deepcopy(self.children),
            job=copy.deepcopy(self.job),
            pods=copy.deepcopy(self.pods),
        )

    def step(self, now: datetime) -> Decision:
        d = reconcile(self.observe(now), S)
        self.body.setdefault("status", {}).update(copy.deepcopy(d.status_patch))
        for a in d.actions:
            if isinstance(a, Create):
                m = copy.deepcopy(a.manifest)
                m["metadata"]["creationTimestamp"] = format_time(now)
                if m["kind"] == "Job":
                    assert self.job is None, "a Job was created twice"
                    self.job = m
                else:
                    self.children.setdefault(m["kind"], m)
            elif isinstance(a, Update):
                self.children[a.kind].update(copy.deepcopy(a.patch))
            elif isinstance(a, Delete):
                assert a.kind == "Job"
                self.job = None
                self.pods = []
            elif isinstance(a, DeleteSelf):
                self.deleted_self = True
        return d

    # ---- the cluster's side: kubelet (kwok) and the trainer
    def pods_running(self, now: datetime, n: int | None = None) -> None:
        assert self.job is not None
        attempt = self.job["metadata"]["labels"][LABEL_ATTEMPT]
        count = self.job["spec"]["completions"] if n is None else n
        self.pods = [pod(i, attempt, "Running", started=now) for i in range(count)]

    def trainer_reports(self, now: datetime, stage: str, **extra: Any) -> None:
        st = self.body["status"]
        st["progress"] = {
            "stage": stage,
            "step": 5,
            "totalSteps": 10,
            "percent": 50,
            "lastHeartbeatTime": format_time(now),
        }
        st.update(extra)

    def job_condition(self, ctype: str, now: datetime, reason: str = "") -> None:
        assert self.job is not None
        self.job.setdefault("status", {})["conditions"] = [
            {
                "type": ctype,
                "status": "True",
                "reason": reason,
                "lastTransitionTime": format_time(now),
            }
        ]


def pod(
    index: int,
    attempt: str,
    phase: str,
    *,
    started: datetime,
    exit_code: int | None = None,
    message: str = "",
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": format_time(started)}}
    if exit_code is not None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "message": message,
                "startedAt": format_time(started),
                "finishedAt": format_time(started + timedelta(seconds=30)),
            }
        }
    return {
        "metadata": {
            "name": f"bot-train-{index}-x",
            "labels": {LABEL_JOB: "bot", LABEL_ATTEMPT: attempt},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def kinds(d: Decision, cls: type) -> list[str]:
    out = []
    for a in d.actions:
        if isinstance(a, cls):
            out.append(a.manifest["kind"] if isinstance(a, Create) else getattr(a, "kind", "self"))
    return out


# ------------------------------------------------------------------------------- the stories


def test_first_reconcile_creates_every_child_and_the_gang() -> None:
    w = World(ftj())
    d = w.step(T0)
    assert sorted(kinds(d, Create)) == sorted(
        ["ServiceAccount", "Role", "RoleBinding", "Service", "ConfigMap", "Job"]
    )
    # static children come before the Job (the pods mount the ConfigMap, use the SA)
    assert kinds(d, Create)[-1] == "Job"
    st = w.body["status"]
    assert st["phase"] == "Pending" and st["reason"] == "Creating"
    assert st["attempts"] == 1 and st["runId"] == "bot-12345678"
    assert st["startTime"] == format_time(T0) and st["observedGeneration"] == 1
    assert [e.reason for e in d.events] == ["Creating"]


def test_reconcile_is_idempotent() -> None:
    w = World(ftj())
    w.step(T0)
    d = w.step(T0 + timedelta(seconds=1))  # Job exists, no pods yet
    assert d.phase == "Pending" and d.reason == "Scheduling"
    again = w.step(T0 + timedelta(seconds=2))
    assert again.actions == [] and again.events == []
    assert again.status_patch == {}, again.status_patch


def test_phases_follow_pods_and_fresh_trainer_stage() -> None:
    w = World(ftj())
    w.step(T0)
    t = T0 + timedelta(seconds=5)
    w.pods_running(t)
    assert w.step(t).phase == "Initializing"
    w.trainer_reports(t, "training")
    d = w.step(t + timedelta(seconds=1))
    assert d.phase == "Training" and "step 5/10" in d.message
    conds = {c["type"]: c for c in w.body["status"]["conditions"]}
    assert conds["DataValidated"]["status"] == "True"
    assert conds["Reconciling"]["status"] == "True" and conds["Ready"]["status"] == "False"
    w.trainer_reports(t, "evaluating")
    assert w.step(t + timedelta(seconds=2)).phase == "Evaluating"
    w.trainer_reports(t, "uploading")
    assert w.step(t + timedelta(seconds=3)).phase == "Uploading"


def test_operator_never_writes_trainer_fields() -> None:
    w = World(ftj())
    w.step(T0)
    t = T0 + timedelta(seconds=5)
    w.pods_running(t)
    w.trainer_reports(t, "training", metrics={"trainLoss": "1.0"}, checkpoint={"step": 4})
    d = w.step(t)
    assert not set(d.status_patch) & set(TRAINER_FIELDS)


def test_completion_fills_lost_trainer_fields_from_termination_message() -> None:
    w = World(ftj())
    w.step(T0)
    t = T0 + timedelta(seconds=5)
    w.pods_running(t)
    w.trainer_reports(t, "uploading", metrics={"trainLoss": "0.5"})
    summary = {
        "metrics": {"trainLoss": "0.1"},
        "artifacts": {"uri": "s3://artifacts/bot/runs/x/"},
        "evaluation": {"results": {"eval_loss": "0.9"}},
    }
    w.pods = [
        pod(0, "1", "Succeeded", started=t, exit_code=0, message=json.dumps(summary)),
        pod(1, "1", "Succeeded", started=t, exit_code=0),
    ]
    w.job_condition("Complete", t + timedelta(seconds=40))
    d = w.step(t + timedelta(seconds=41))
    assert d.phase == "Succeeded" and "s3://artifacts/bot/runs/x/" in d.message
    st = w.body["status"]
    assert st["artifacts"] == summary["artifacts"]  # filled: the trainer's patch was lost
    assert st["metrics"] == {"trainLoss": "0.5"}  # present: never overwritten
    assert st["evaluation"]["results"] == {"eval_loss": "0.9"}
    assert st["completionTime"] == format_time(t + timedelta(seconds=41))
    assert st["gpuSeconds"] == 60  # 2 pods x 1 GPU x 30 s
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Ready"] == conds["Succeeded"] == conds["Trained"] == "True"
    assert conds["Reconciling"] == "False" and conds["Stalled"] == "False"
    assert w.step(t + timedelta(seconds=50)).status_patch == {}


def test_serving_enabled_goes_to_deploying() -> None:
    # The rollout itself is tested in tests/unit/test_serving.py; here: the seam is wired.
    w = World(ftj(serving={"enabled": True, "endpoint": "bot-ep"}))
    w.step(T0)
    w.body["status"]["artifacts"] = {"uri": "s3://artifacts/bot/runs/x/"}
    w.pods = [pod(i, "1", "Succeeded", started=T0, exit_code=0) for i in range(2)]
    w.job_condition("Complete", T0 + timedelta(seconds=40))
    d = w.step(T0 + timedelta(seconds=41))
    assert d.phase == "Deploying" and d.reason == "RollingOut"
    assert w.body["status"]["serving"]["endpoint"] == "http://bot-ep.ns.svc:8000"
    assert w.body["status"]["evaluation"]["passed"] is True
    assert {a.manifest["kind"] for a in d.actions if isinstance(a, ServingPut)} == {
        "Deployment",
        "Service",
    }


def test_pod_failure_backs_off_then_restarts_the_whole_gang() -> None:
    w = World(ftj())
    w.step(T0)
    t = T0 + timedelta(seconds=5)
    w.pods_running(t)
    w.pods[1] = pod(1, "1", "Failed", started=t, exit_code=1, message="NCCL timeout")
    w.job_condition("Failed", t + timedelta(seconds=30))
    d = w.step(t + timedelta(seconds=31))
    assert d.phase == "Pending" and d.reason == "BackoffRestart"
    assert "NCCL timeout" in d.message and kinds(d, Delete) == []
    assert d.requeue_after is not None and d.requeue_after <= 10
    d = w.step(t + timedelta(seconds=41))  # backoff (10 s) over
    assert kinds(d, Delete) == ["Job"] and w.body["status"]["attempts"] == 2
    assert d.reason == "Restarting"
    d = w.step(t + timedelta(seconds=42))
    assert kinds(d, Create) == ["Job"]
    assert w.job is not None and w.job["metadata"]["labels"][LABEL_ATTEMPT] == "2"
    cfg = json.loads(w.children["ConfigMap"]["data"]["config.json"])
    assert cfg["attempt"] == 2 and cfg["runId"] == "bot-12345678"  # same run: resumes
    assert [a for a in d.actions if isinstance(a, Update) and a.kind == "ConfigMap"]


def test_stale_job_of_an_earlier_attempt_is_deleted_not_reused() -> None:
    w = World(ftj())
    w.step(T0)
    w.body["status"]["attempts"] = 2  # status written, operator crashed before deleting
    d = w.step(T0 + timedelta(seconds=1))
    assert kinds(d, Delete) == ["Job"] and kinds(d, Create) == []
    d = w.step(T0 + timedelta(seconds=2))
    assert kinds(d, Create) == ["Job"]


def test_backoff_limit_exhausted_fails_and_removes_pods() -> None:
    w = World(ftj(runPolicy={"backoffLimit": 0}))
    w.step(T0)
    w.pods = [pod(0, "1", "Failed", started=T0, exit_code=137)]
    w.job_condition("Failed", T0 + timedelta(seconds=30))
    d = w.step(T0 + timedelta(seconds=31))
    assert d.phase == "Failed" and d.reason == "BackoffLimitExceeded"
    assert "exited with code 137" in d.message
    assert kinds(d, Delete) == ["Job"]
    conds = {c["type"]: c for c in w.body["status"]["conditions"]}
    assert (
        conds["Stalled"]["status"] == "True" and conds["Failed"]["reason"] == "BackoffLimitExceeded"
    )
    assert [e.type for e in d.events] == ["Warning"]
    later = w.step(T0 + timedelta(seconds=90))
    assert later.status_patch == {} and later.actions == []


def test_bad_data_exit_code_fails_at_once_without_retry() -> None:
    w = World(ftj())
    w.step(T0)
    w.pods = [pod(0, "1", "Failed", started=T0, exit_code=65, message="row 7: no messages")]
    w.job_condition("Failed", T0 + timedelta(seconds=30), reason="PodFailurePolicy")
    d = w.step(T0 + timedelta(seconds=31))
    assert d.phase == "Failed" and d.reason == "InvalidData" and "row 7" in d.message
    assert w.body["status"]["attempts"] == 1
    conds = {c["type"]: c for c in w.body["status"]["conditions"]}
    assert conds["DataValidated"]["status"] == "False"


def test_gang_never_scheduled_fails_unschedulable() -> None:
    w = World(ftj())
    w.step(T0)
    w.pods_running(T0, n=1)  # one of two pods placed
    assert w.step(T0 + timedelta(seconds=60)).reason == "Scheduling"
    d = w.step(T0 + timedelta(seconds=121))
    assert d.phase == "Failed" and d.reason == "Unschedulable" and "1 of 2" in d.message
    assert kinds(d, Delete) == ["Job"]


def test_no_heartbeat_restarts_as_stalled() -> None:
    w = World(ftj())
    w.step(T0)
    w.pods_running(T0 + timedelta(seconds=5))
    w.trainer_reports(T0 + timedelta(seconds=10), "training")
    assert w.step(T0 + timedelta(seconds=300)).phase == "Training"
    d = w.step(T0 + timedelta(seconds=311))
    assert d.reason == "Stalled" and kinds(d, Delete) == ["Job"]
    assert w.body["status"]["attempts"] == 2
    assert any(e.reason == "Stalled" and e.type == "Warning" for e in d.events)


def test_suspend_removes_pods_and_resume_continues_same_attempt() -> None:
    w = World(ftj())
    w.step(T0)
    w.pods_running(T0)
    w.body["spec"]["suspend"] = True
    d = w.step(T0 + timedelta(seconds=10))
    assert d.phase == "Suspended" and kinds(d, Delete) == ["Job"]
    assert w.body["status"]["gpuSeconds"] == 20
    assert w.step(T0 + timedelta(seconds=11)).actions == []
    w.body["spec"]["suspend"] = False
    d = w.step(T0 + timedelta(seconds=20))
    assert kinds(d, Create) == ["Job"] and w.body["status"]["attempts"] == 1
    assert w.job is not None
    assert w.job["metadata"]["annotations"]["finetune.dev/gpu-seconds-before"] == "20"


def test_active_deadline() -> None:
    w = World(ftj(runPolicy={"activeDeadlineSeconds": 100}))
    w.step(T0)
    w.pods_running(T0)
    d = w.step(T0 + timedelta(seconds=101))
    assert d.phase == "Failed" and d.reason == "DeadlineExceeded" and kinds(d, Delete) == ["Job"]


def test_ttl_after_finished_deletes_the_job_resource() -> None:
    w = World(ftj(runPolicy={"ttlSecondsAfterFinished": 60}))
    w.body["status"] = {
        "phase": "Succeeded",
        "reason": "Succeeded",
        "completionTime": format_time(T0),
    }
    assert not w.step(T0 + timedelta(seconds=59)).actions
    d = w.step(T0 + timedelta(seconds=60))
    assert any(isinstance(a, DeleteSelf) for a in d.actions)


def test_spec_that_escaped_admission_fails_naming_the_field() -> None:
    w = World(ftj(distributed={"nodes": 0}))
    d = w.step(T0)
    assert d.phase == "Failed" and d.reason == "InvalidSpec"
    assert "spec.distributed.nodes" in d.message
    assert d.actions == []
    assert w.step(T0 + timedelta(seconds=5)).status_patch == {}  # no retry loop


def test_from_job_waits_then_uses_the_other_jobs_output() -> None:
    body = ftj(baseModel={"fromJob": "v1"})
    obs = Observed(body=body, now=T0)
    d = reconcile(obs, S)
    assert d.phase == "Pending" and d.reason == "WaitingForBaseJob" and not d.actions
    other = {"status": {"phase": "Succeeded", "artifacts": {"uri": "s3://a/runs/v1-x/"}}}
    d = reconcile(Observed(body=body, now=T0, base_job=other), S)
    cm = next(
        a.manifest for a in d.actions if isinstance(a, Create) and a.manifest["kind"] == "ConfigMap"
    )
    assert json.loads(cm["data"]["config.json"])["baseModelUri"] == "s3://a/runs/v1-x/"
    failed = {"status": {"phase": "Failed"}}
    assert reconcile(Observed(body=body, now=T0, base_job=failed), S).reason == "BaseJobFailed"


def test_condition_transition_time_is_kept_while_status_is_unchanged() -> None:
    w = World(ftj())
    w.step(T0)
    first = {c["type"]: c for c in w.body["status"]["conditions"]}
    w.pods_running(T0 + timedelta(seconds=5))
    w.step(T0 + timedelta(seconds=5))
    second = {c["type"]: c for c in w.body["status"]["conditions"]}
    assert second["Reconciling"]["lastTransitionTime"] == first["Reconciling"]["lastTransitionTime"]
    assert all(c["observedGeneration"] == 1 for c in second.values())


def test_gpu_seconds_alone_do_not_cause_a_patch_every_second() -> None:
    w = World(ftj())
    w.step(T0)
    w.pods_running(T0)
    w.step(T0 + timedelta(seconds=1))
    assert w.step(T0 + timedelta(seconds=20)).status_patch == {}  # +38 GPU-s: not worth a write
    d = w.step(T0 + timedelta(seconds=40))  # 2 pods x 40 s = 80 GPU-s, 78 more than written
    assert d.status_patch == {"gpuSeconds": 80}
