"""The operator as a real process on the real control plane: the FineTuneJob lifecycle end to end.

kwok plays the kubelet (pods go Running on fake GPU nodes; a test ends a pod with an exit code
and termination message through annotations); the test plays the trainer by patching the status
subresource with the trainer's own ServiceAccount token, as the real trainer does in a pod.
Short deadlines in the manifests and a 1 s operator timer keep the suite quick.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.controlplane import set_pod_result, wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


# --------------------------------------------------------------------------------- helpers


def manifest(name: str, **spec_over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/tiny-llama/"},
        "datasets": [{"name": "chat", "uri": "s3://datasets/chat/train.jsonl", "format": "chat"}],
        "output": {"uri": "s3://artifacts/team-a/bot/"},
        "distributed": {"nodes": 2, "gpusPerNode": 8},
        "storage": {"endpoint": "http://s3.example:9000", "credentialsSecret": "s3-creds"},
        "runPolicy": {"backoffLimit": 2, "maxPendingSeconds": 120, "progressDeadlineSeconds": 600},
    }
    for k, v in spec_over.items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict):
            spec[k] = {**spec[k], **v}
        else:
            spec[k] = v
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(cp: Any, ns: str, doc: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))


def get(cp: Any, ns: str, kind: str, name: str = "", *sel: str) -> Any:
    args = ["get", kind, "-n", ns, "-o", "json", *sel]
    if name:
        args.insert(2, name)
    proc = cp.kubectl(*args, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def ftj(cp: Any, ns: str, name: str) -> dict[str, Any]:
    return get(cp, ns, "finetunejob", name) or {}


def status(cp: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(ftj(cp, ns, name).get("status") or {})


def pods(cp: Any, ns: str, job: str) -> list[dict[str, Any]]:
    doc = get(cp, ns, "pods", "", "-l", f"finetune.dev/job={job}")
    return [p for p in (doc or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]


def running_pods(cp: Any, ns: str, job: str, attempt: int | None = None) -> list[dict[str, Any]]:
    out = [p for p in pods(cp, ns, job) if p["status"].get("phase") == "Running"]
    if attempt is not None:
        out = [
            p for p in out if p["metadata"]["labels"].get("finetune.dev/attempt") == str(attempt)
        ]
    return sorted(
        out,
        key=lambda p: int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]),
    )


def wait_phase(cp: Any, ns: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(
        lambda: (st := status(cp, ns, name)).get("phase") == phase and st,
        timeout=timeout,
        message=f"{name} phase {phase} (now {status(cp, ns, name).get('phase')}/"
        f"{status(cp, ns, name).get('reason')})",
    )


def wait_gang_running(
    cp: Any, ns: str, name: str, n: int, attempt: int = 1
) -> list[dict[str, Any]]:
    return wait_for(
        lambda: len(r := running_pods(cp, ns, name, attempt)) == n and r,
        timeout=90,
        message=f"{n} running pods of {name} attempt {attempt}",
    )


def events(cp: Any, ns: str, name: str) -> list[dict[str, Any]]:
    doc = get(cp, ns, "events", "", "--field-selector", f"involvedObject.name={name}")
    return list((doc or {}).get("items", []))


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Trainer:
    """Reports like the trainer does: merge patches on the status subresource, with its token."""

    def __init__(self, cp: Any, ns: str, job: str) -> None:
        self.ns, self.job = ns, job
        token = cp.kubectl("create", "token", f"{job}-trainer", "-n", ns).stdout.strip()
        with open(cp.kubeconfig) as f:
            kc = yaml.safe_load(f)
        cluster = kc["clusters"][0]["cluster"]
        cfg = client.Configuration()
        cfg.host = cluster["server"]
        if cluster.get("certificate-authority-data"):
            with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as ca:
                ca.write(base64.b64decode(cluster["certificate-authority-data"]))
            cfg.ssl_ca_cert = ca.name
        else:
            cfg.ssl_ca_cert = cluster.get("certificate-authority")
        cfg.api_key = {"authorization": f"Bearer {token}"}
        self.api = client.CustomObjectsApi(client.ApiClient(cfg))

    def patch(self, st: dict[str, Any], job: str | None = None) -> None:
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, PLURAL, job or self.job, {"status": st}
        )

    def report(self, stage: str, step: int = 0, **extra: Any) -> None:
        self.patch({
            "progress": {"stage": stage, "step": step, "totalSteps": 100, "percent": step,
                         "lastHeartbeatTime": now()},
            **extra,
        })  # fmt: skip


@pytest.fixture
def s3_secret(control_plane: Any, namespace: str) -> str:
    control_plane.kubectl(
        "create", "secret", "generic", "s3-creds", "-n", namespace,
        "--from-literal=AWS_ACCESS_KEY_ID=test", "--from-literal=AWS_SECRET_ACCESS_KEY=test",
    )  # fmt: skip
    return "s3-creds"


# ----------------------------------------------------------------------------------- tests


def test_full_success_path(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("bot"))
    # Pending lasts only until kwok runs the gang (often under a second): accept either phase.
    st = wait_for(
        lambda: (s := status(cp, ns, "bot")).get("phase") in ("Pending", "Initializing") and s,
        timeout=60,
        message="bot phase Pending or Initializing",
    )
    assert st["attempts"] == 1 and st["runId"].startswith("bot-")
    for kind, name in (
        ("configmap", "bot-config"),
        ("service", "bot-workers"),
        ("serviceaccount", "bot-trainer"),
        ("role", "bot-trainer"),
        ("rolebinding", "bot-trainer"),
        ("job", "bot-train"),
    ):
        obj = wait_for(
            lambda k=kind, n=name: get(cp, ns, k, n), timeout=30, message=f"{kind}/{name}"
        )
        assert obj["metadata"]["ownerReferences"][0]["uid"] == ftj(cp, ns, "bot")["metadata"]["uid"]
    running = wait_gang_running(cp, ns, "bot", 2)
    assert {p["spec"]["nodeName"] for p in running} <= {f"gpu-node-{i}" for i in range(4)}
    wait_phase(cp, ns, "bot", "Initializing", 60)

    trainer = Trainer(cp, ns, "bot")
    trainer.report("validating")
    trainer.report(
        "training",
        40,
        metrics={"trainLoss": "1.25"},
        checkpoint={"step": 40, "uri": "s3://artifacts/team-a/bot/ckpt/"},
    )
    st = wait_phase(cp, ns, "bot", "Training", 60)
    assert "step 40/100" in st["message"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["DataValidated"]["status"] == "True"
    assert conds["Reconciling"]["status"] == "True"
    # The trainer's identity may patch only its own job's status: not another job, not the spec.
    apply(cp, ns, manifest("other", suspend=True))
    wait_phase(cp, ns, "other", "Suspended", 60)
    with pytest.raises(ApiException) as denied:
        trainer.patch({"metrics": {"trainLoss": "0"}}, job="other")
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied_spec:
        trainer.api.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "bot", {"spec": {"suspend": True}}
        )
    assert denied_spec.value.status == 403

    trainer.report("evaluating", 100)
    wait_phase(cp, ns, "bot", "Evaluating", 60)
    trainer.report("uploading", 100, evaluation={"results": {"eval_loss": "0.9"}})
    wait_phase(cp, ns, "bot", "Uploading", 60)
    # The trainer's final status patch is "lost": the summary comes from the termination message.
    summary = {
        "artifacts": {
            "uri": "s3://artifacts/team-a/bot/runs/x/",
            "manifestUri": "s3://artifacts/team-a/bot/runs/x/manifest.json",
        }
    }
    pods_now = running_pods(cp, ns, "bot", 1)
    set_pod_result(cp, ns, pods_now[1]["metadata"]["name"], 0)
    set_pod_result(cp, ns, pods_now[0]["metadata"]["name"], 0, json.dumps(summary))
    st = wait_phase(cp, ns, "bot", "Succeeded", 90)
    assert st["artifacts"]["uri"] == summary["artifacts"]["uri"]
    assert st["metrics"] == {"trainLoss": "1.25"}  # trainer-owned, untouched
    assert st["completionTime"] and st["startTime"] and st["gpuSeconds"] >= 0
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Succeeded"]["status"] == "True"
    assert conds["Reconciling"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])
    reasons = [e["reason"] for e in events(cp, ns, "bot")]
    for r in ("Creating", "Initializing", "Training", "Evaluating", "Uploading", "Succeeded"):
        assert r in reasons, reasons
    table = cp.kubectl("get", "ftj", "bot", "-n", ns).stdout
    assert "Succeeded" in table

    with urllib.request.urlopen(operator_process.healthz_url, timeout=5) as r:
        assert r.status == 200
    expected = [
        f'finetune_operator_jobs{{namespace="{ns}",phase="Succeeded"}} 1.0',
        'finetune_operator_phase_transitions_total{to="Training"}',
        "finetune_operator_reconcile_duration_seconds_count",
        "finetune_operator_time_to_training_seconds_count 1.0",
    ]
    wait_for(
        lambda: all(x in operator_process.metrics_text() for x in expected),
        timeout=30,
        message=f"operator metrics {expected}",
    )


def test_gang_restart_after_pod_failure(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("gang"))
    first = wait_gang_running(cp, ns, "gang", 2, attempt=1)
    run_id = status(cp, ns, "gang")["runId"]
    set_pod_result(cp, ns, first[1]["metadata"]["name"], 1, "NCCL watchdog timeout")
    second = wait_gang_running(cp, ns, "gang", 2, attempt=2)
    # The whole gang was replaced, not just the failed pod.
    assert not {p["metadata"]["uid"] for p in second} & {p["metadata"]["uid"] for p in first}
    st = status(cp, ns, "gang")
    assert st["attempts"] == 2 and st["runId"] == run_id
    cfg = json.loads(get(cp, ns, "configmap", "gang-config")["data"]["config.json"])
    assert cfg["attempt"] == 2 and cfg["runId"] == run_id  # same run: resumes its checkpoints
    reasons = [e["reason"] for e in events(cp, ns, "gang")]
    assert "BackoffRestart" in reasons or "Restarting" in reasons
    msgs = " ".join(e["message"] for e in events(cp, ns, "gang"))
    assert "NCCL watchdog timeout" in msgs


def test_backoff_limit_exhausted(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(
        cp,
        ns,
        manifest(
            "flaky", distributed={"nodes": 1, "gpusPerNode": 1}, runPolicy={"backoffLimit": 1}
        ),
    )
    for attempt in (1, 2):
        (pod,) = wait_gang_running(cp, ns, "flaky", 1, attempt=attempt)
        set_pod_result(cp, ns, pod["metadata"]["name"], 137, "OOMKilled")
    st = wait_phase(cp, ns, "flaky", "Failed", 90)
    assert st["reason"] == "BackoffLimitExceeded" and st["attempts"] == 2
    assert "137" in st["message"]
    wait_for(
        lambda: get(cp, ns, "job", "flaky-train") is None and not pods(cp, ns, "flaky"),
        timeout=60,
        message="training Job and pods removed",
    )
    conds = {c["type"]: c for c in st["conditions"]}
    assert (
        conds["Stalled"]["status"] == "True" and conds["Failed"]["reason"] == "BackoffLimitExceeded"
    )


def test_bad_data_fails_without_retry(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("baddata", distributed={"nodes": 1, "gpusPerNode": 1}))
    (pod,) = wait_gang_running(cp, ns, "baddata", 1)
    set_pod_result(cp, ns, pod["metadata"]["name"], 65, "datasets[0] row 3: no 'messages' field")
    st = wait_phase(cp, ns, "baddata", "Failed", 90)
    assert st["reason"] == "InvalidData" and "row 3" in st["message"] and st["attempts"] == 1


def test_unschedulable_gang(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    # 5 pods x 8 GPUs on 4 nodes of 8 GPUs: one pod can never be placed.
    apply(
        cp,
        ns,
        manifest(
            "huge", distributed={"nodes": 5, "gpusPerNode": 8}, runPolicy={"maxPendingSeconds": 8}
        ),
    )
    st = wait_phase(cp, ns, "huge", "Failed", 90)
    assert st["reason"] == "Unschedulable" and "of 5" in st["message"]
    wait_for(lambda: not pods(cp, ns, "huge"), timeout=60, message="pods removed")


def test_stall_restarts_the_gang(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(
        cp,
        ns,
        manifest(
            "quiet",
            distributed={"nodes": 1, "gpusPerNode": 1},
            runPolicy={"progressDeadlineSeconds": 6},
        ),
    )
    wait_gang_running(cp, ns, "quiet", 1, attempt=1)
    Trainer(cp, ns, "quiet").report("training", 3)
    wait_phase(cp, ns, "quiet", "Training", 60)
    wait_gang_running(cp, ns, "quiet", 1, attempt=2)
    assert status(cp, ns, "quiet")["attempts"] >= 2
    stalled = [e for e in events(cp, ns, "quiet") if e["reason"] == "Stalled"]
    assert stalled and stalled[0]["type"] == "Warning"
    assert "progressDeadlineSeconds=6" in stalled[0]["message"]


def test_suspend_and_resume(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("pausable"))
    wait_gang_running(cp, ns, "pausable", 2)
    Trainer(cp, ns, "pausable").report(
        "training", 10, checkpoint={"step": 10, "uri": "s3://artifacts/c/"}
    )
    wait_phase(cp, ns, "pausable", "Training", 60)
    cp.kubectl(
        "patch", "ftj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    st = wait_phase(cp, ns, "pausable", "Suspended", 60)
    assert "step 10 kept" in st["message"]
    wait_for(
        lambda: not pods(cp, ns, "pausable") and get(cp, ns, "job", "pausable-train") is None,
        timeout=60,
        message="pods and Job removed while suspended",
    )
    assert st["checkpoint"]["step"] == 10
    cp.kubectl(
        "patch", "ftj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_gang_running(cp, ns, "pausable", 2, attempt=1)
    st = wait_phase(cp, ns, "pausable", "Initializing", 60)
    assert st["attempts"] == 1 and st["checkpoint"]["step"] == 10


def test_deletion_removes_every_child(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("gone"))
    wait_gang_running(cp, ns, "gone", 2)
    cp.kubectl("delete", "ftj", "gone", "-n", ns, "--wait=true", timeout=90)
    kinds = (
        "configmap/gone-config",
        "service/gone-workers",
        "serviceaccount/gone-trainer",
        "role/gone-trainer",
        "rolebinding/gone-trainer",
        "job/gone-train",
    )

    def all_gone() -> bool:
        left = [k for k in kinds if cp.kubectl("get", k, "-n", ns, check=False).returncode == 0]
        return not left and not pods(cp, ns, "gone")

    wait_for(all_gone, timeout=90, message="garbage collection of every child")


def test_sigkill_mid_reconcile_no_duplicates_no_lost_status(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("durable", distributed={"nodes": 2, "gpusPerNode": 1}))
    wait_gang_running(cp, ns, "durable", 2)
    Trainer(cp, ns, "durable").report("training", 7, metrics={"trainLoss": "2.0"})
    wait_phase(cp, ns, "durable", "Training", 60)
    # Kill while new jobs are being reconciled (children half created).
    for i in range(3):
        apply(cp, ns, manifest(f"burst-{i}", distributed={"nodes": 1, "gpusPerNode": 1}))
    time.sleep(0.5)
    operator_process.kill()
    before = status(cp, ns, "durable")
    operator_process.start()
    for i in range(3):
        wait_gang_running(cp, ns, f"burst-{i}", 1)
        wait_phase(cp, ns, f"burst-{i}", "Initializing", 60)
    after = wait_phase(cp, ns, "durable", "Training", 60)
    assert after["attempts"] == 1 and after["startTime"] == before["startTime"]
    assert after["metrics"] == {"trainLoss": "2.0"} and after["progress"]["step"] == 7
    jobs = get(cp, ns, "jobs")["items"]
    names = [j["metadata"]["name"] for j in jobs]
    assert sorted(names) == sorted(["durable-train", *[f"burst-{i}-train" for i in range(3)]])
    assert len(running_pods(cp, ns, "durable")) == 2
    for i in range(3):
        assert len(pods(cp, ns, f"burst-{i}")) == 1
        assert status(cp, ns, f"burst-{i}")["attempts"] == 1


def test_twenty_jobs_at_once(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    names = [f"many-{i:02d}" for i in range(20)]
    docs = [manifest(n, distributed={"nodes": 1, "gpusPerNode": 1}) for n in names]
    cp.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def all_running() -> bool:
        items = (
            get(cp, ns, "pods", "", "-l", "app.kubernetes.io/managed-by=finetune-operator") or {}
        ).get("items", [])
        return sum(p["status"].get("phase") == "Running" for p in items) == 20

    wait_for(all_running, timeout=180, interval=1, message="20 gangs running")
    for p in get(cp, ns, "pods", "", "-l", "app.kubernetes.io/managed-by=finetune-operator")[
        "items"
    ]:
        set_pod_result(cp, ns, p["metadata"]["name"], 0)

    def all_succeeded() -> bool:
        items = get(cp, ns, "finetunejobs")["items"]
        return sum((j.get("status") or {}).get("phase") == "Succeeded" for j in items) == 20

    wait_for(all_succeeded, timeout=180, interval=1, message="20 jobs Succeeded")
    # The gauge is updated right after each status patch: allow the last reconcile to finish.
    wait_for(
        lambda: (
            f'finetune_operator_jobs{{namespace="{ns}",phase="Succeeded"}} 20.0'
            in operator_process.metrics_text()
        ),
        timeout=30,
        message="jobs gauge at 20 Succeeded",
    )


def test_bad_data_failure_then_ttl_deletes_the_job(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(
        cp,
        ns,
        manifest(
            "shortlived",
            distributed={"nodes": 1, "gpusPerNode": 1},
            runPolicy={"ttlSecondsAfterFinished": 4},
        ),
    )
    (pod,) = wait_gang_running(cp, ns, "shortlived", 1)
    set_pod_result(cp, ns, pod["metadata"]["name"], 65, "bad row")
    wait_phase(cp, ns, "shortlived", "Failed", 60)
    wait_for(
        lambda: get(cp, ns, "finetunejob", "shortlived") is None,
        timeout=60,
        message="FineTuneJob deleted by ttlSecondsAfterFinished",
    )


def test_kueue_queue_creates_the_job_suspended(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("queued", runPolicy={"queueName": "team-a"}))
    st = wait_for(
        lambda: (s := status(cp, ns, "queued")).get("reason") == "Queued" and s,
        timeout=60,
        message="phase Pending, reason Queued",
    )
    assert st["phase"] == "Pending"
    job = get(cp, ns, "job", "queued-train")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert not pods(cp, ns, "queued")
    # Kueue admits by unsuspending the Job; the operator follows.
    cp.kubectl(
        "patch", "job", "queued-train", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_gang_running(cp, ns, "queued", 2)
    wait_phase(cp, ns, "queued", "Initializing", 60)


def test_child_rejected_by_the_api_fails_invalid_spec_once(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    # Passes the CRD (tolerations are free-form there) but the Job's pod template is invalid.
    bad = [{"key": "gpu", "operator": "Sometimes", "effect": "NoSchedule"}]
    apply(cp, ns, manifest("badres", template={"tolerations": bad}))
    st = wait_phase(cp, ns, "badres", "Failed", 60)
    assert st["reason"] == "InvalidSpec" and "tolerations[0].operator" in st["message"], st
    time.sleep(3)  # several timer ticks: no retry loop, one event
    invalid = [e for e in events(cp, ns, "badres") if e["reason"] == "InvalidSpec"]
    assert len(invalid) == 1 and invalid[0].get("count", 1) == 1
    assert get(cp, ns, "job", "badres-train") is None
    # The operator keeps serving other jobs.
    apply(cp, ns, manifest("fine", distributed={"nodes": 1, "gpusPerNode": 1}))
    wait_phase(cp, ns, "fine", "Initializing", 60)


def test_sigkill_during_gang_restart_gives_exactly_one_new_gang(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, manifest("phoenix", distributed={"nodes": 2, "gpusPerNode": 1}))
    first = wait_gang_running(cp, ns, "phoenix", 2, attempt=1)
    set_pod_result(cp, ns, first[0]["metadata"]["name"], 1, "segfault")
    # The restart decision is written to status before the Job is replaced: kill right then.
    wait_for(
        lambda: status(cp, ns, "phoenix").get("attempts") == 2,
        timeout=60,
        interval=0.05,
        message="attempts 2 written",
    )
    operator_process.kill()
    operator_process.start()
    wait_gang_running(cp, ns, "phoenix", 2, attempt=2)
    time.sleep(3)  # a few sweeps: nothing more may happen
    st = status(cp, ns, "phoenix")
    assert st["attempts"] == 2, st
    jobs = [j for j in get(cp, ns, "jobs")["items"] if j["metadata"]["name"] == "phoenix-train"]
    assert len(jobs) == 1 and jobs[0]["metadata"]["labels"]["finetune.dev/attempt"] == "2"
    live = pods(cp, ns, "phoenix")
    assert len(live) == 2
    assert {p["metadata"]["labels"]["finetune.dev/attempt"] for p in live} == {"2"}


def test_active_deadline_fails_and_frees_the_pods(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    apply(
        cp,
        ns,
        manifest(
            "slow",
            distributed={"nodes": 1, "gpusPerNode": 1},
            runPolicy={"activeDeadlineSeconds": 6},
        ),
    )
    wait_gang_running(cp, ns, "slow", 1)
    st = wait_phase(cp, ns, "slow", "Failed", 60)
    assert st["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds=6" in st["message"]
    wait_for(lambda: not pods(cp, ns, "slow"), timeout=60, message="pods removed")


def test_from_job_waits_for_the_base_job_and_uses_its_output(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    v2 = manifest("v2", distributed={"nodes": 1, "gpusPerNode": 1})
    v2["spec"]["baseModel"] = {"fromJob": "v1"}
    apply(cp, ns, v2)
    st = wait_for(
        lambda: (s := status(cp, ns, "v2")).get("reason") == "WaitingForBaseJob" and s,
        timeout=60,
        message="v2 waiting for v1",
    )
    assert st["phase"] == "Pending" and get(cp, ns, "job", "v2-train") is None
    apply(cp, ns, manifest("v1", distributed={"nodes": 1, "gpusPerNode": 1}))
    (pod,) = wait_gang_running(cp, ns, "v1", 1)
    Trainer(cp, ns, "v1").report(
        "done", 100, artifacts={"uri": "s3://artifacts/team-a/bot/runs/v1-x/"}
    )
    set_pod_result(cp, ns, pod["metadata"]["name"], 0)
    wait_phase(cp, ns, "v1", "Succeeded", 60)
    wait_gang_running(cp, ns, "v2", 1)
    cfg = json.loads(get(cp, ns, "configmap", "v2-config")["data"]["config.json"])
    assert cfg["baseModelUri"] == "s3://artifacts/team-a/bot/runs/v1-x/"
