"""The inference rollout on the real control plane: gate, champion/challenger, rollback, ownership.

The operator runs as a real process; kwok plays the kubelet (pods go Running and Ready; a pod
annotated finetune.dev/kwok-ready=false stays unready); the real kube-controller-manager turns
the endpoint Deployment into ReplicaSets and pods and judges availability. The test plays the
trainer through the termination message of the single training pod (the trainer's final summary:
evaluation results and artifacts), which the operator reads when the training Job completes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.controlplane import set_pod_ready, set_pod_result, wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION = "finetune.dev", "v1alpha1"
NODES = [f"gpu-node-{i}" for i in range(4)]


def manifest(name: str, endpoint: str = "bot", **serving: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny-llama/"},
            "datasets": [
                {"name": "chat", "uri": "s3://datasets/chat/train.jsonl", "format": "chat"}
            ],
            "output": {"uri": f"s3://artifacts/team-a/{name}/"},
            "distributed": {"nodes": 1, "gpusPerNode": 1},
            "storage": {"endpoint": "http://s3.example:9000", "credentialsSecret": "s3-creds"},
            "validation": {"splitRatio": "0.1"},
            "evaluation": {"gate": [{"metric": "eval_loss", "op": "<=", "value": "1.2"}]},
            "serving": {"enabled": True, "endpoint": endpoint, **serving},
            "runPolicy": {"maxPendingSeconds": 120, "progressDeadlineSeconds": 600},
        },
    }


def get(cp: Any, ns: str, kind: str, name: str = "", *sel: str) -> Any:
    args = ["get", kind, "-n", ns, "-o", "json", *sel]
    if name:
        args.insert(2, name)
    proc = cp.kubectl(*args, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def status(cp: Any, ns: str, name: str) -> dict[str, Any]:
    return dict((get(cp, ns, "finetunejob", name) or {}).get("status") or {})


def wait_phase(cp: Any, ns: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> Any:
        st = status(cp, ns, name)
        return st if st.get("phase") == phase else None

    return wait_for(
        check,
        timeout=timeout,
        message=f"{name} phase {phase} (now {status(cp, ns, name).get('reason')})",
    )


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions") or []}


def events(cp: Any, ns: str, name: str) -> list[dict[str, Any]]:
    doc = get(cp, ns, "events", "", "--field-selector", f"involvedObject.name={name}")
    return list((doc or {}).get("items", []))


def finish_training(cp: Any, ns: str, name: str, eval_loss: str) -> str:
    """Play the trainer: the training pod exits 0 with its summary; returns the run URI."""
    run_uri = f"s3://artifacts/team-a/{name}/runs/{name}-run/"

    def running() -> Any:
        doc = get(cp, ns, "pods", "", "-l", f"finetune.dev/job={name}")
        items = [p for p in (doc or {}).get("items", []) if p["status"].get("phase") == "Running"]
        return items[0]["metadata"]["name"] if items else None

    pod = wait_for(running, timeout=90, message=f"training pod of {name} running")
    summary = {
        "evaluation": {"results": {"eval_loss": eval_loss}},
        "artifacts": {"uri": run_uri},
    }
    set_pod_result(cp, ns, pod, 0, json.dumps(summary))
    return run_uri


def deployment(cp: Any, ns: str, name: str = "bot") -> dict[str, Any]:
    return dict(get(cp, ns, "deployment", name) or {})


def champion(dep: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(dep["metadata"]["annotations"]["finetune.dev/champion"]))


def served_model(dep: dict[str, Any]) -> str:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return str(args[args.index("--model") + 1])


def available(cp: Any, ns: str, run_uri: str) -> Any:
    """The endpoint Deployment fully rolled out to run_uri (kubectl rollout status's rule)."""
    dep = deployment(cp, ns)
    st = dep.get("status") or {}
    want = dep.get("spec", {}).get("replicas", 1)
    done = (
        dep
        and served_model(dep) == run_uri
        and st.get("observedGeneration", 0) >= dep["metadata"]["generation"]
        and st.get("updatedReplicas") == st.get("availableReplicas") == st.get("replicas") == want
    )
    return dep if done else None


@pytest.fixture
def s3_secret(control_plane: Any, namespace: str) -> str:
    control_plane.kubectl(
        "create", "secret", "generic", "s3-creds", "-n", namespace,
        "--from-literal=AWS_ACCESS_KEY_ID=test", "--from-literal=AWS_SECRET_ACCESS_KEY=test",
    )  # fmt: skip
    return "s3-creds"


def deploy_champion(cp: Any, ns: str, name: str, eval_loss: str) -> str:
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest(name)))
    run_uri = finish_training(cp, ns, name, eval_loss)
    st = wait_phase(cp, ns, name, "Succeeded", 120)
    assert st["reason"] == "Deployed", st
    return run_uri


# ----------------------------------------------------------------------------------- tests


def test_gate_pass_rolls_out_and_gate_fail_does_not(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    # A failed gate: training succeeded, nothing is rolled out.
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest("weak")))
    finish_training(cp, ns, "weak", "1.5")
    st = wait_phase(cp, ns, "weak", "Succeeded", 120)
    assert st["reason"] == "EvalGateFailed"
    assert (
        "eval_loss 1.5 <= 1.2 is false" in st["message"] and "training succeeded" in st["message"]
    )
    assert st["evaluation"]["passed"] is False
    deployed = conditions(st)["Deployed"]
    assert deployed["status"] == "False" and deployed["reason"] == "EvalGateFailed"
    assert "1.5" in deployed["message"]
    assert st["serving"]["promoted"] is False
    assert get(cp, ns, "deployment", "bot") is None and get(cp, ns, "service", "bot") is None
    ev = [e for e in events(cp, ns, "weak") if e["reason"] == "EvalGateFailed"]
    assert ev and ev[0]["type"] == "Warning" and "1.5" in ev[0]["message"]

    # A passed gate: Deployment + Service, Deploying, then Succeeded once available.
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest("good")))
    run_uri = finish_training(cp, ns, "good", "0.9")
    st = wait_phase(cp, ns, "good", "Succeeded", 120)
    assert st["reason"] == "Deployed", st
    assert st["evaluation"]["passed"] is True
    assert st["serving"]["endpoint"] == f"http://bot.{ns}.svc:8000"
    assert st["serving"]["ready"] is True and st["serving"]["promoted"] is True
    assert conditions(st)["Deployed"]["status"] == "True"
    reasons = [e["reason"] for e in events(cp, ns, "good")]
    assert "RollingOut" in reasons and "Deployed" in reasons, reasons
    dep = available(cp, ns, run_uri)
    assert dep, deployment(cp, ns)
    uid = get(cp, ns, "finetunejob", "good")["metadata"]["uid"]
    assert [r["uid"] for r in dep["metadata"]["ownerReferences"]] == [uid]
    assert champion(dep)["job"] == "good" and champion(dep)["value"] == "0.9"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "finetune_trainer", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    svc = get(cp, ns, "service", "bot")
    assert svc["spec"]["ports"][0]["name"] == "http" and svc["spec"]["ports"][0]["port"] == 8000
    assert [r["uid"] for r in svc["metadata"]["ownerReferences"]] == [uid]
    pods = get(cp, ns, "pods", "", "-l", "finetune.dev/endpoint=bot")["items"]
    assert pods and all(
        c["ready"] for p in pods for c in p["status"].get("containerStatuses") or []
    )


def test_champion_kept_then_replaced_and_survives_non_serving_deletion(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    first = deploy_champion(cp, ns, "v1", "0.9")
    dep_uid = deployment(cp, ns)["metadata"]["uid"]

    # A worse challenger: the champion is kept, both numbers recorded.
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest("v2")))
    finish_training(cp, ns, "v2", "1.0")
    st = wait_phase(cp, ns, "v2", "Succeeded", 120)
    assert st["reason"] == "ChampionKept", st
    assert "1.0" in st["serving"]["message"] and "0.9" in st["serving"]["message"]
    assert st["serving"]["promoted"] is False
    assert conditions(st)["Deployed"]["status"] == "False"
    ev = [e for e in events(cp, ns, "v2") if e["reason"] == "ChampionKept"]
    assert ev and "0.9" in ev[0]["message"] and "1.0" in ev[0]["message"]
    assert champion(deployment(cp, ns))["job"] == "v1"
    assert served_model(deployment(cp, ns)) == first

    # Deleting the non-serving job leaves the endpoint alone.
    cp.kubectl("delete", "finetunejob", "v2", "-n", ns, "--wait=true", timeout=90)
    time.sleep(3)  # give the garbage collector time to act if it (wrongly) would
    dep = deployment(cp, ns)
    assert (
        dep and dep["metadata"]["uid"] == dep_uid and not dep["metadata"].get("deletionTimestamp")
    )
    assert get(cp, ns, "service", "bot") is not None

    # A better challenger replaces the champion and takes over ownership.
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest("v3")))
    third = finish_training(cp, ns, "v3", "0.5")
    st = wait_phase(cp, ns, "v3", "Succeeded", 120)
    assert st["reason"] == "Deployed", st
    assert "0.5" in st["serving"]["message"] and "0.9" in st["serving"]["message"]
    dep = wait_for(lambda: available(cp, ns, third), timeout=60, message="v3 rolled out")
    assert champion(dep)["job"] == "v3"
    assert json.loads(dep["metadata"]["annotations"]["finetune.dev/previous-champion"])["job"] == (
        "v1"
    )
    v3_uid = get(cp, ns, "finetunejob", "v3")["metadata"]["uid"]

    def owners(kind: str) -> list[str]:
        return [r["uid"] for r in get(cp, ns, kind, "bot")["metadata"]["ownerReferences"]]

    # Owned by v1 and v3 during the rollout; by v3 alone once it is available.
    wait_for(lambda: owners("deployment") == owners("service") == [v3_uid], timeout=30)
    # The former champion's status says it no longer serves.
    wait_for(
        lambda: status(cp, ns, "v1")["serving"]["promoted"] is False,
        timeout=30,
        message="v1 told it was replaced",
    )
    assert "v3" in status(cp, ns, "v1")["serving"]["message"]
    told = wait_for(
        lambda: [e for e in events(cp, ns, "v1") if e["reason"] == "NoLongerServing"],
        timeout=15,
        message="NoLongerServing event on v1",
    )
    time.sleep(2)  # a few more sweeps: the event is not repeated
    told = [e for e in events(cp, ns, "v1") if e["reason"] == "NoLongerServing"]
    assert len(told) == 1 and "v3" in told[0]["message"]
    # The former champion, no longer serving, may now be deleted without an outage.
    cp.kubectl("delete", "finetunejob", "v1", "-n", ns, "--wait=true", timeout=90)
    time.sleep(3)
    assert deployment(cp, ns)["metadata"]["uid"] == dep_uid


def test_rollback_when_new_pods_stay_unready(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    first = deploy_champion(cp, ns, "v1", "0.9")

    cp.kubectl(
        "apply", "-n", ns, "-f", "-",
        input=json.dumps(manifest("v2", rolloutDeadlineSeconds=30)),
    )  # fmt: skip
    try:
        # Hold the challenger's inference pod in Pending until it is marked "never ready", so
        # kwok cannot make it Ready first; the training pod is already running.
        def train_pod_running() -> Any:
            doc = get(cp, ns, "pods", "", "-l", "finetune.dev/job=v2")
            return any(p["status"].get("phase") == "Running" for p in doc["items"])

        wait_for(train_pod_running, timeout=90, message="v2 training pod running")
        for node in NODES:
            cp.kubectl("cordon", node)
        finish_training(cp, ns, "v2", "0.5")
        wait_phase(cp, ns, "v2", "Deploying", 90)

        def new_pod() -> Any:
            doc = get(cp, ns, "pods", "", "-l", "finetune.dev/serving-job=v2")
            return doc["items"][0]["metadata"]["name"] if doc and doc["items"] else None

        pod = wait_for(new_pod, timeout=60, message="v2 inference pod created")
        set_pod_ready(cp, ns, pod, False)
    finally:
        for node in NODES:
            cp.kubectl("uncordon", node, check=False)
    wait_for(
        lambda: (get(cp, ns, "pod", pod) or {}).get("status", {}).get("phase") == "Running",
        timeout=60,
        message=f"{pod} running (unready)",
    )
    st = status(cp, ns, "v2")
    assert st["phase"] == "Deploying" and st["reason"] == "RollingOut", st
    assert served_model(deployment(cp, ns)) != first  # the challenger is being rolled out

    st = wait_phase(cp, ns, "v2", "Failed", 90)
    assert st["reason"] == "RolloutFailed", st
    assert "rolloutDeadlineSeconds=30" in st["message"] and "v1" in st["message"]
    assert conditions(st)["Deployed"]["status"] == "False"
    assert st["serving"]["promoted"] is False
    reasons = [e["reason"] for e in events(cp, ns, "v2")]
    assert "RollingBack" in reasons and "RolloutFailed" in reasons, reasons
    dep = wait_for(lambda: available(cp, ns, first), timeout=60, message="v1 restored")
    assert champion(dep)["job"] == "v1"
    v1_uid = get(cp, ns, "finetunejob", "v1")["metadata"]["uid"]
    assert [r["uid"] for r in dep["metadata"]["ownerReferences"]] == [v1_uid]
    rolled = json.loads(dep["metadata"]["annotations"]["finetune.dev/rolled-back"])
    assert rolled["job"] == "v2"
    # The unready pod of the failed model is gone; v1 still serves.
    wait_for(lambda: get(cp, ns, "pod", pod) is None, timeout=60, message=f"{pod} removed")
    assert status(cp, ns, "v1")["phase"] == "Succeeded"


def test_vllm_engine_rollout(
    control_plane: Any, namespace: str, operator_process: Any, s3_secret: str
) -> None:
    cp, ns = control_plane, namespace
    doc = manifest("llm", endpoint="chat", engine="vllm")
    doc["spec"]["method"] = {"type": "lora", "lora": {"r": 16}}
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
    run_uri = finish_training(cp, ns, "llm", "0.7")
    st = wait_phase(cp, ns, "llm", "Succeeded", 120)
    assert st["reason"] == "Deployed" and st["serving"]["endpoint"] == f"http://chat.{ns}.svc:8000"
    dep = deployment(cp, ns, "chat")
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["--run", run_uri, "--dest", "/models"]
    assert init["env"][0]["name"] == "AWS_DEFAULT_REGION"
    (server,) = pod["containers"]
    assert server["image"].startswith("vllm/vllm-openai:")
    assert "chat=/models/adapter" in server["args"] and "--enable-lora" in server["args"]
    assert (dep["status"].get("availableReplicas") or 0) == 1


def test_replacement_is_guarded_and_replaces_the_whole_spec(
    control_plane: Any, crd_installed: str, namespace: str
) -> None:
    """The endpoint write path against the real API server (no operator process needed)."""
    from datetime import datetime, timezone

    from finetune_operator.api import FineTuneJobSpec
    from finetune_operator.kube import Kube, TransientApiError
    from finetune_operator.resources import JobIdentity
    from finetune_operator.serving import ServingPut
    from finetune_operator.serving_kube import ServingKube
    from finetune_operator.serving_manifests import Champion, build_deployment

    cp, ns = control_plane, namespace
    raw = manifest("v1", engine="vllm")["spec"]
    io = ServingKube(Kube(cp.api_client()))
    now = datetime.now(timezone.utc)
    # Real owners (no operator runs here), so the garbage collector leaves the Deployment be.
    uid = {}
    for name in ("v1", "v2"):
        cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest(name)))
        uid[name] = get(cp, ns, "finetunejob", name)["metadata"]["uid"]
    v1 = Champion("v1", uid["v1"], "s3://a/runs/v1/", "eval_loss", "0.9")
    io.apply({"metadata": {"namespace": ns}}, ServingPut(
        build_deployment(JobIdentity("v1", ns, uid["v1"]), FineTuneJobSpec.model_validate(raw),
                         champion=v1, now=now)
    ))  # fmt: skip
    seen = deployment(cp, ns)
    assert seen["spec"]["template"]["spec"]["initContainers"]
    cp.kubectl("annotate", "deployment", "bot", "-n", ns, "someone=else")  # a concurrent writer
    builtin = {**raw, "serving": {**raw["serving"], "engine": "builtin"}}
    v2 = Champion("v2", uid["v2"], "s3://a/runs/v2/", "eval_loss", "0.5")
    stale = build_deployment(
        JobIdentity("v2", ns, uid["v2"]), FineTuneJobSpec.model_validate(builtin),
        champion=v2, now=now, current=seen,
    )  # fmt: skip
    with pytest.raises(TransientApiError, match="409"):
        io.apply({"metadata": {"namespace": ns}}, ServingPut(stale))
    assert champion(deployment(cp, ns))["job"] == "v1"
    fresh = build_deployment(
        JobIdentity("v2", ns, uid["v2"]), FineTuneJobSpec.model_validate(builtin),
        champion=v2, now=now, current=deployment(cp, ns),
    )  # fmt: skip
    io.apply({"metadata": {"namespace": ns}}, ServingPut(fresh))
    after = deployment(cp, ns)
    assert champion(after)["job"] == "v2" and "someone" not in after["metadata"]["annotations"]
    assert "initContainers" not in after["spec"]["template"]["spec"]  # replaced, not merged
    assert served_model(after) == "s3://a/runs/v2/"
    # Mid-rollout both jobs own it (the operator drops v1 once v2 is available).
    assert [r["uid"] for r in after["metadata"]["ownerReferences"]] == [uid["v1"], uid["v2"]]
