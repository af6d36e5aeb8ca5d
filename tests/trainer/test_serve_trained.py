"""The trainer's real output served: `launch` trains a LoRA adapter and publishes it to S3, then
the built-in server loads that run (base model + adapter from the moto S3 server) and answers.

This pins the contract between artifacts.py (the writer of runs/<runId>/) and serve (its reader).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from finetune_trainer.config import EXIT_OK
from finetune_trainer.serve import InferenceServer, ServerSettings
from finetune_trainer.storage import Store

from tests.support.trainer_jobs import launch, make_config, write_completion_data

pytestmark = pytest.mark.slow


def test_serves_the_adapter_launch_published(
    tmp_path: Path, s3_server: Any, s3_store: Store, s3_bucket: str, tiny_llama_dir: Path
) -> None:
    train, val = write_completion_data(tmp_path / "data", train_rows=16, val_rows=4)
    base_uri = f"s3://{s3_bucket}/models/tiny/"
    s3_store.upload(tiny_llama_dir, base_uri)
    s3_store.upload(train, f"s3://{s3_bucket}/data/train.jsonl")
    s3_store.upload(val, f"s3://{s3_bucket}/data/val.jsonl")
    output = f"s3://{s3_bucket}/out/"
    config = make_config(
        tmp_path / "job",
        base_uri=base_uri,
        train_uri=f"s3://{s3_bucket}/data/train.jsonl",
        val_uri=f"s3://{s3_bucket}/data/val.jsonl",
        output_uri=output,
        method="lora",
        max_steps=2,
        every_steps=2,
        endpoint=s3_server.endpoint_url,
        run_id="served-run",
    )
    log = tmp_path / "launch.log"
    assert launch(config, log).wait(timeout=600) == EXIT_OK, log.read_text()[-4000:]
    run_uri = f"{output}runs/served-run/"
    assert s3_store.is_complete(run_uri)
    descriptor = json.loads(s3_store.read_bytes(run_uri + "finetune.json"))
    assert descriptor["adapter"] == "adapter/" and descriptor["merged"] is None

    server = InferenceServer(
        ServerSettings(
            model_uri=run_uri,
            host="127.0.0.1",
            port=0,
            s3_endpoint=s3_server.endpoint_url,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    server.start()
    try:
        server.wait_ready(timeout=300)
        assert (tmp_path / "cache" / "adapter" / "adapter_config.json").is_file()
        assert (tmp_path / "cache" / "base" / "config.json").is_file()
        r = httpx.post(
            server.url + "/v1/completions",
            json={"prompt": "copy: abc", "max_tokens": 6, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "served-run"
        assert r.json()["usage"]["completion_tokens"] >= 1
        ready = httpx.get(server.url + "/readyz").json()
        assert ready == {"status": "ready", "model": "served-run", "task": "causal-lm"}
    finally:
        server.shutdown()
