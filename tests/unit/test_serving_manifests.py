"""The endpoint's builders (builtin and vLLM engines) and the ``pull`` init-container command."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune_operator.api import FineTuneJobSpec
from finetune_operator.resources import JobIdentity
from finetune_operator.serving_manifests import (
    VLLM_IMAGE,
    Champion,
    build_deployment,
    build_endpoint_service,
    build_rollback,
    rollout_progress,
    vllm_lora_rank,
)
from finetune_trainer.__main__ import main as trainer_main
from finetune_trainer.config import EXIT_BAD_INPUT

NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)
RUN = "s3://artifacts/bot/runs/v1-abc/"
ID = JobIdentity("v1", "team-a", "uid-1")


def spec(method: dict[str, Any] | None = None, **serving: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://models/base/"},
            "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "chat"}],
            "output": {"uri": "s3://artifacts/bot/"},
            "template": {"image": "ghcr.io/example/trainer:1", "nodeSelector": {"pool": "gpu"}},
            "storage": {"endpoint": "http://minio:9000", "credentialsSecret": "s3-creds"},
            "method": method or {"type": "lora", "lora": {"r": 24}},
            "serving": {"enabled": True, "endpoint": "bot", "replicas": 2, **serving},
        }
    )


def me() -> Champion:
    return Champion("v1", "uid-1", RUN, "eval_loss", "0.9", {"eval_loss": "0.9"})


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_builtin_deployment() -> None:
    dep = build_deployment(
        ID, spec(resources={"limits": {"nvidia.com/gpu": "1"}}), champion=me(), now=NOW
    )
    meta, ds = dep["metadata"], dep["spec"]
    assert (meta["name"], meta["namespace"]) == ("bot", "team-a")
    assert meta["labels"]["app.kubernetes.io/component"] == "inference"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    assert meta["ownerReferences"][0]["uid"] == "uid-1"
    assert meta["ownerReferences"][0]["controller"] is False
    assert json.loads(meta["annotations"]["finetune.dev/champion"])["runUri"] == RUN
    assert meta["annotations"]["finetune.dev/rollout-started"] == "2026-11-22T04:00:00Z"
    assert ds["replicas"] == 2
    assert ds["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert ds["selector"]["matchLabels"] == {
        "finetune.dev/endpoint": "bot",
        "app.kubernetes.io/component": "inference",
    }
    pod = ds["template"]
    assert ds["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert "finetune.dev/job" not in pod["metadata"]["labels"]  # not a training pod
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "ghcr.io/example/trainer:1"
    assert c["command"] + c["args"][:2] == [
        "python",
        "-m",
        "finetune_trainer",
        "serve",
        "--model",
        RUN,
    ]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    e = env(c)
    assert e["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert e["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert "initContainers" not in pod["spec"]
    # Equal inputs, equal template (no time stamps in it): re-decisions do not restart pods.
    again = build_deployment(
        ID,
        spec(resources={"limits": {"nvidia.com/gpu": "1"}}),
        champion=me(),
        now=NOW.replace(hour=9),
    )
    assert again["spec"]["template"] == pod


def test_vllm_deployment_pulls_base_and_adapter_then_serves_lora() -> None:
    dep = build_deployment(ID, spec(engine="vllm"), champion=me(), now=NOW)
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "ghcr.io/example/trainer:1"
    assert init["command"] + init["args"] == [
        "python", "-m", "finetune_trainer", "pull", "--run", RUN, "--dest", "/models",
    ]  # fmt: skip
    assert env(init)["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "s3-creds"
    (srv,) = pod["containers"]
    assert srv["image"] == VLLM_IMAGE and ":" in VLLM_IMAGE and not VLLM_IMAGE.endswith(":latest")
    args = srv["args"]
    assert args[args.index("--model") + 1] == "/models/base"
    assert "--enable-lora" in args
    assert args[args.index("--lora-modules") + 1] == "bot=/models/adapter"
    assert args[args.index("--max-lora-rank") + 1] == "32"  # r=24 rounded up to vLLM's sizes
    assert srv["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {v["name"] for v in pod["volumes"]} == {"models", "dshm"}


def test_vllm_full_finetune_serves_the_model_itself() -> None:
    dep = build_deployment(
        ID, spec({"type": "full"}, engine="vllm", image="my/vllm:1"), champion=me(), now=NOW
    )
    srv = dep["spec"]["template"]["spec"]["containers"][0]
    assert srv["image"] == "my/vllm:1"
    assert srv["args"][:2] == ["--model", "/models/model"] and "--enable-lora" not in srv["args"]


def test_vllm_lora_rank() -> None:
    assert [vllm_lora_rank(r) for r in (1, 8, 9, 64, 300, 1024)] == [8, 8, 16, 64, 320, 512]


def test_service() -> None:
    svc = build_endpoint_service("bot", "team-a", [{"uid": "u"}])
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == {
        "finetune.dev/endpoint": "bot",
        "app.kubernetes.io/component": "inference",
    }
    assert svc["metadata"]["ownerReferences"] == [{"uid": "u"}]


def test_rollback_strips_server_fields() -> None:
    first = build_deployment(ID, spec(), champion=me(), now=NOW)
    first["metadata"]["resourceVersion"] = "7"
    two = Champion("v2", "uid-2", "s3://x/runs/v2/", "eval_loss", "0.5")
    second = build_deployment(
        JobIdentity("v2", "team-a", "uid-2"), spec(), champion=two, now=NOW, current=first
    )
    second["metadata"]["managedFields"] = [{"manager": "x"}]
    second["status"] = {"replicas": 3}
    doc, restored = build_rollback(
        second, failed=two, previous_owner_exists=True, now=NOW, reason="r"
    )
    assert restored is not None and restored.job == "v1"
    assert "status" not in doc and "managedFields" not in doc["metadata"]
    assert doc["metadata"]["resourceVersion"] == "7"
    assert doc["spec"]["template"] == first["spec"]["template"]
    assert json.loads(doc["metadata"]["annotations"]["finetune.dev/rolled-back"])["job"] == "v2"


def test_rollout_progress() -> None:
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 2}}
    dep["status"] = {"observedGeneration": 1}
    assert rollout_progress(dep)[0] is False
    dep["status"] = {
        "observedGeneration": 2,
        "replicas": 3,
        "updatedReplicas": 2,
        "availableReplicas": 2,
    }
    assert rollout_progress(dep) == (
        False,
        "1 old replica(s) still serving until the new ones are ready",
    )
    dep["status"] = {
        "observedGeneration": 2,
        "replicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 1,
    }
    assert rollout_progress(dep)[0] is False
    dep["status"]["availableReplicas"] = 2
    assert rollout_progress(dep) == (True, "2 of 2 replicas available")


# -------------------------------------------------------------------------------------- pull


def _run(tmp: Path, *, adapter: bool = True, complete: bool = True) -> tuple[Path, Path]:
    base = tmp / "base-model"
    (base / "sub").mkdir(parents=True)
    (base / "config.json").write_text("{}")
    (base / "sub" / "w.bin").write_bytes(b"weights")
    run = tmp / "runs" / "r1"
    files = {
        "finetune.json": json.dumps(
            {"baseModelUri": str(base), "adapter": "adapter/" if adapter else None,
             "merged": None if adapter else "merged/", "task": "causal-lm"}
        ),
        "tokenizer.json": "{}",
        ("adapter/adapter_config.json" if adapter else "merged/config.json"): "{}",
        "checkpoints/step-1/x.bin": "ckpt",
    }  # fmt: skip
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    manifest = {"files": [{"path": p, "size": (run / p).stat().st_size} for p in files]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    if complete:
        (run / "_SUCCESS").write_text("")
    return run, base


def test_pull_lays_out_base_adapter_and_run_files(tmp_path: Path) -> None:
    run, _ = _run(tmp_path)
    dest = tmp_path / "models"
    assert trainer_main(["pull", "--run", str(run), "--dest", str(dest)]) == 0
    assert (dest / "base" / "sub" / "w.bin").read_bytes() == b"weights"
    assert (dest / "adapter" / "adapter_config.json").is_file()
    assert (dest / "run" / "tokenizer.json").is_file() and (
        dest / "run" / "finetune.json"
    ).is_file()
    assert not (dest / "run" / "checkpoints").exists() and not (dest / "run" / "adapter").exists()


def test_pull_merged_run(tmp_path: Path) -> None:
    run, _ = _run(tmp_path, adapter=False)
    dest = tmp_path / "models"
    assert trainer_main(["pull", "--run", str(run), "--dest", str(dest)]) == 0
    assert (dest / "model" / "config.json").is_file() and not (dest / "base").exists()


def test_pull_refuses_an_incomplete_run(tmp_path: Path, capsys: Any) -> None:
    run, _ = _run(tmp_path, complete=False)
    assert (
        trainer_main(["pull", "--run", str(run), "--dest", str(tmp_path / "m")]) == EXIT_BAD_INPUT
    )
    err = capsys.readouterr().err
    assert "not a complete run" in err and "status.artifacts.uri" in err
