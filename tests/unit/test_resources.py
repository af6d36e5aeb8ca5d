"""The pure child-manifest builders: names, ownership, RBAC scope, the Indexed Job's contract."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.resources import (
    ANNOTATION_GPU_SECONDS_BEFORE,
    LABEL_ATTEMPT,
    LABEL_KUEUE_QUEUE,
    JobIdentity,
    build_children,
    build_role,
    build_role_binding,
    build_service,
    build_train_job,
    child_names,
    run_id_for,
)
from finetune_trainer.config import TrainerConfig

IDENT = JobIdentity(name="bot", namespace="team-a", uid="0a1b2c3d-4e5f-6789-abcd-ef0123456789")


def spec(**over: Any) -> FineTuneJobSpec:
    doc: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/tiny/"},
        "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "chat"}],
        "output": {"uri": "s3://artifacts/bot/"},
        "distributed": {"nodes": 3, "gpusPerNode": 8},
        "storage": {"endpoint": "http://s3:9000", "credentialsSecret": "s3-creds"},
    }
    doc.update(over)
    return FineTuneJobSpec.model_validate(doc)


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    c = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_run_id_is_name_plus_uid_prefix() -> None:
    assert IDENT.run_id == "bot-0a1b2c3d"
    assert run_id_for("x", "") == "x"


def test_every_child_is_owned_and_named_deterministically() -> None:
    kids = build_children(IDENT, spec(), base_model_uri="s3://models/tiny/", attempt=1)
    job = build_train_job(IDENT, spec(), attempt=1)
    names = {(k["kind"], k["metadata"]["name"]) for k in [*kids, job]}
    assert names == {
        ("ServiceAccount", "bot-trainer"),
        ("Role", "bot-trainer"),
        ("RoleBinding", "bot-trainer"),
        ("Service", "bot-workers"),
        ("ConfigMap", "bot-config"),
        ("Job", "bot-train"),
    }
    for k in [*kids, job]:
        assert k["metadata"]["namespace"] == "team-a"
        (ref,) = k["metadata"]["ownerReferences"]
        assert ref["kind"] == "FineTuneJob" and ref["uid"] == IDENT.uid and ref["controller"]


def test_config_map_holds_the_trainer_config_with_run_id_and_attempt() -> None:
    kids = build_children(IDENT, spec(), base_model_uri="s3://models/tiny/", attempt=3)
    cm = next(k for k in kids if k["kind"] == "ConfigMap")
    cfg = TrainerConfig.from_json(cm["data"]["config.json"])
    assert cfg.run_id == "bot-0a1b2c3d" and cfg.attempt == 3
    assert cfg.job.uid == IDENT.uid and cfg.report.kubernetes is True
    assert cfg.spec.distributed.nodes == 3
    assert json.loads(cm["data"]["config.json"])["baseModelUri"] == "s3://models/tiny/"


def test_role_allows_only_this_jobs_status() -> None:
    rules = build_role(IDENT)["rules"]
    assert {tuple(r["resources"]) for r in rules} == {("finetunejobs/status",), ("finetunejobs",)}
    for r in rules:
        assert r["resourceNames"] == ["bot"]
        assert set(r["verbs"]) <= {"get", "patch"}
    rb = build_role_binding(IDENT)
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": "bot-trainer", "namespace": "team-a"}
    ]


def test_headless_service_selects_the_trainer_pods() -> None:
    svc = build_service(IDENT)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"]["finetune.dev/job"] == "bot"
    pod_labels = build_train_job(IDENT, spec(), attempt=1)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_indexed_job_gang_contract() -> None:
    job = build_train_job(IDENT, spec(), attempt=2, gpu_seconds_before=123)
    js = job["spec"]
    assert js["completionMode"] == "Indexed"
    assert js["completions"] == js["parallelism"] == 3
    assert js["backoffLimit"] == 0
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [65]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == "bot-workers"
    assert pod["serviceAccountName"] == "bot-trainer"
    res = pod["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "8"
    env = env_of(job)
    assert env["NNODES"] == "3" and env["NPROC_PER_NODE"] == "8"
    assert env["MASTER_ADDR"] == "bot-train-0.bot-workers" and env["MASTER_PORT"] == "29500"
    assert "job-completion-index" in env["NODE_RANK"]["fieldRef"]["fieldPath"]
    assert env["FINETUNE_CONFIG"] == "/etc/finetune/config.json"
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert job["metadata"]["labels"][LABEL_ATTEMPT] == "2"
    assert js["template"]["metadata"]["labels"][LABEL_ATTEMPT] == "2"
    assert job["metadata"]["annotations"][ANNOTATION_GPU_SECONDS_BEFORE] == "123"
    assert "suspend" not in js and LABEL_KUEUE_QUEUE not in job["metadata"]["labels"]


def test_template_knobs_and_queue_pass_through() -> None:
    s = spec(
        template={
            "image": "registry/trainer:1",
            "gpuResourceName": "amd.com/gpu",
            "resources": {"requests": {"cpu": "4"}},
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "priorityClassName": "high",
            "schedulerName": "volcano",
            "env": [{"name": "EXTRA", "value": "1"}, {"name": "NNODES", "value": "99"}],
        },
        runPolicy={"queueName": "team-a-queue"},
    )
    job = build_train_job(IDENT, s, attempt=1)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["priorityClassName"] == "high" and pod["schedulerName"] == "volcano"
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    c = pod["containers"][0]
    assert c["image"] == "registry/trainer:1"
    assert c["resources"]["requests"] == {"cpu": "4", "amd.com/gpu": "8"}
    env = env_of(job)
    assert env["EXTRA"] == "1" and env["NNODES"] == "3"  # contract env is never overridden
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-a-queue"


@pytest.mark.parametrize("gpus", [0])
def test_cpu_only_gang_requests_no_gpu(gpus: int) -> None:
    job = build_train_job(IDENT, spec(distributed={"nodes": 1, "gpusPerNode": gpus}), attempt=1)
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in str(res)
    assert env_of(job)["NPROC_PER_NODE"] == "1"


def test_child_names_fit_the_job_name() -> None:
    assert child_names("x")["job"] == "x-train"


def test_training_pods_get_time_to_checkpoint_on_sigterm() -> None:
    """SIGTERM → checkpoint → exit 75 needs longer than Kubernetes' default 30 s grace."""
    pod = build_train_job(IDENT, spec(), attempt=1)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 120  # launch.py's torchrun --shutdown-timeout
