"""End to end through `finetune_trainer launch` as a pod runs it, with a real S3 server on loopback.

Base model and data are pulled from S3, trained (LoRA with a merged copy; full), evaluated with a
baseline, and published under s3://<bucket>/out/runs/<runId>/ in the documented layout, with the
status file telling the same story.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobStatus
from finetune_trainer.config import EXIT_OK
from finetune_trainer.storage import Store

from tests.support.trainer_jobs import launch, make_config, write_completion_data

pytestmark = pytest.mark.slow


def _stage_inputs(
    tmp_path: Path, s3_store: Store, bucket: str, tiny_llama_dir: Path
) -> dict[str, str]:
    train, val = write_completion_data(tmp_path / "data")
    s3_store.upload(tiny_llama_dir, f"s3://{bucket}/models/tiny/")
    s3_store.upload(train, f"s3://{bucket}/data/train.jsonl")
    s3_store.upload(val, f"s3://{bucket}/data/val.jsonl")
    return {
        "base_uri": f"s3://{bucket}/models/tiny/",
        "train_uri": f"s3://{bucket}/data/train.jsonl",
        "val_uri": f"s3://{bucket}/data/val.jsonl",
    }


def _run(config: Path, log: Path) -> None:
    proc = launch(config, log)
    assert proc.wait(timeout=600) == EXIT_OK, log.read_text()[-4000:]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_causal_lm_from_s3_to_s3(
    method: str,
    tmp_path: Path,
    s3_server: Any,
    s3_store: Store,
    s3_bucket: str,
    tiny_llama_dir: Path,
) -> None:
    uris = _stage_inputs(tmp_path, s3_store, s3_bucket, tiny_llama_dir)
    output = f"s3://{s3_bucket}/out/"
    config = make_config(
        tmp_path / "job",
        **uris,
        output_uri=output,
        method=method,
        max_steps=6,
        every_steps=2,
        keep_last=2,
        endpoint=s3_server.endpoint_url,
        baseline=True,
        spec_extra={"output": {"uri": output, "mergeAdapter": method == "lora"}},
    )
    _run(config, tmp_path / "launch.log")
    run = f"{output}runs/run-1/"
    assert s3_store.is_complete(run)
    keys = {o.key for o in s3_store.list(run)}
    expected = {
        "finetune.json",
        "metrics.json",
        "README.md",
        "manifest.json",
        "_SUCCESS",
        "tokenizer.json",
        "merged/config.json",
        "merged/model.safetensors",
        "merged/tokenizer.json",
    }
    if method == "lora":
        expected |= {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    else:
        assert not any(k.startswith("adapter/") for k in keys)
    assert expected <= keys
    # checkpoints every 2 steps, keepLast 2: step-4 and step-6 remain, each complete
    assert {k.split("/")[1] for k in keys if k.startswith("checkpoints/")} == {"step-4", "step-6"}
    assert {"checkpoints/step-4/_COMPLETE", "checkpoints/step-6/_COMPLETE"} <= keys

    descriptor = json.loads(s3_store.read_bytes(run + "finetune.json"))
    assert descriptor == {
        "task": "causal-lm",
        "baseModelUri": uris["base_uri"],
        "method": method,
        "adapter": "adapter/" if method == "lora" else None,
        "merged": "merged/",
        "labels": None,
        "runId": "run-1",
    }
    metrics = json.loads(s3_store.read_bytes(run + "metrics.json"))
    assert metrics["train"]["globalStep"] == 6
    results = metrics["evaluation"]["results"]
    assert set(results) == {"eval_loss", "eval_perplexity"}
    assert set(metrics["evaluation"]["baseline"]) == {"eval_loss", "eval_perplexity"}
    card = s3_store.read_bytes(run + "README.md").decode()
    base_etag = s3_store.etag(uris["base_uri"])
    assert (
        uris["base_uri"] in card and base_etag in card and s3_store.etag(uris["train_uri"]) in card
    )
    assert "| learningRate | 1e-3 |" in card

    status = json.loads((config.parent / "status.json").read_text())
    FineTuneJobStatus.model_validate(status)
    assert status["progress"]["stage"] == "done" and status["progress"]["step"] == 6
    assert status["progress"]["totalSteps"] == 6 and status["progress"]["percent"] == 100
    assert status["checkpoint"] == {"step": 6, "uri": f"{run}checkpoints/step-6/"}
    assert (
        status["artifacts"]["uri"] == run
        and status["artifacts"]["manifestUri"] == run + "manifest.json"
    )
    assert status["lineage"]["baseModelETag"] == base_etag
    assert float(status["evaluation"]["results"]["eval_loss"]) == pytest.approx(
        results["eval_loss"], rel=1e-5
    )
    assert float(status["metrics"]["trainLoss"]) > 0
    assert json.loads((config.parent / "termination-log").read_text()) == status


def test_a_completed_run_is_not_trained_again(
    tmp_path: Path, s3_server: Any, s3_store: Store, s3_bucket: str, tiny_llama_dir: Path
) -> None:
    """A pod restarted after its push (e.g. evicted before exiting) finds _SUCCESS and stops."""
    uris = _stage_inputs(tmp_path, s3_store, s3_bucket, tiny_llama_dir)
    run = f"s3://{s3_bucket}/out/runs/run-1/"
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "finetune.json").write_text("{}")
    s3_store.push_run(tmp_path / "done", run)
    config = make_config(
        tmp_path / "job",
        **uris,
        output_uri=f"s3://{s3_bucket}/out/",
        endpoint=s3_server.endpoint_url,
    )
    _run(config, tmp_path / "launch.log")
    assert "already complete" in (tmp_path / "launch.log").read_text()
    assert not (config.parent / "work" / "progress.jsonl").exists()
