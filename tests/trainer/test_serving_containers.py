"""The inference pod the operator builds, run for real: its containers' commands and env work.

Why: on the cluster tier kwok only pretends to run containers, so nothing there proves that the
command, arguments and environment in the operator's pod template (serving_manifests.py) start a
working server. Here they are executed as they would be in the pod: the process gets exactly the
container's env (the Secret's keys resolved to the S3 server's credentials) and command; the only
substitutions are the pod's paths and port (emptyDir /models → a temp dir, port 8000 → a free
one). The run is a tiny base model + LoRA adapter published to the moto S3 server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.resources import JobIdentity
from finetune_operator.serving_manifests import MODELS_DIR, SERVING_PORT, build_pod_template
from finetune_trainer.embedded_s3 import FAKE_CREDENTIALS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def published_run(
    tiny_llama_dir: Path, tmp_path: Path, s3_store: Any, s3_bucket: str
) -> tuple[str, str]:
    """(base URI, run URI) of a tiny causal-lm LoRA run published to S3 like the trainer does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_uri = f"s3://{s3_bucket}/models/tiny-llama/"
    run_uri = f"s3://{s3_bucket}/artifacts/bot/runs/bot-1234abcd/"
    s3_store.upload(tiny_llama_dir, base_uri)
    run = tmp_path / "run"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora).save_pretrained(
        run / "adapter"
    )
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(run)
    (run / "finetune.json").write_text(
        json.dumps(
            {"task": "causal-lm", "baseModelUri": base_uri, "method": "lora",
             "adapter": "adapter/", "merged": None, "labels": None, "runId": "bot-1234abcd"}
        )
    )  # fmt: skip
    s3_store.push_run(run, run_uri)
    return base_uri, run_uri


def _pod(engine: str, endpoint_url: str, run_uri: str) -> dict[str, Any]:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://unused/base/"},
            "datasets": [{"name": "d", "uri": "s3://unused/train.jsonl", "format": "chat"}],
            "output": {"uri": "s3://unused/out/"},
            "storage": {"endpoint": endpoint_url, "credentialsSecret": "s3-creds"},
            "serving": {"enabled": True, "endpoint": "bot", "engine": engine},
        }
    )
    return build_pod_template(JobIdentity("bot", "ns", "uid"), spec, run_uri)["spec"]


def _process(
    container: dict[str, Any], models: Path, port: int
) -> tuple[list[str], dict[str, str]]:
    """The container's argv and env, as the kubelet would start it (paths/port substituted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FINETUNE_"))}
    secret = dict(FAKE_CREDENTIALS)  # the content of Secret s3-creds
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "s3-creds"
            env[e["name"]] = secret[ref["key"]]
    argv = [*container["command"], *container.get("args", [])]
    assert argv[0] == "python"
    argv[0] = sys.executable
    argv = [a.replace(MODELS_DIR, str(models)) for a in argv]
    argv = [str(port) if a == str(SERVING_PORT) else a for a in argv]
    return argv, env


def test_builtin_server_container_serves_the_run(
    published_run: tuple[str, str], s3_server: Any, tmp_path: Path
) -> None:
    _, run_uri = published_run
    pod = _pod("builtin", s3_server.endpoint_url, run_uri)
    (container,) = pod["containers"]
    port = _free_port()
    argv, env = _process(container, tmp_path / "models", port)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        ready = container["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(url + ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.5)
        live = container["livenessProbe"]["httpGet"]["path"]
        assert httpx.get(url + live, timeout=5).status_code == 200
        r = httpx.post(
            url + "/v1/completions",
            json={"prompt": "hello", "max_tokens": 3, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        metrics = httpx.get(url + "/metrics", timeout=5).text
        assert 'run_id="bot-1234abcd"' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_vllm_init_container_lays_out_base_adapter_and_tokenizer(
    published_run: tuple[str, str], s3_server: Any, tmp_path: Path
) -> None:
    _, run_uri = published_run
    pod = _pod("vllm", s3_server.endpoint_url, run_uri)
    (init,) = pod["initContainers"]
    models = tmp_path / "models"
    argv, env = _process(init, models, 0)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (server,) = pod["containers"]
    args = [a.replace(MODELS_DIR, str(models)) for a in server["args"]]
    # Every path the vLLM server is pointed at exists and holds what vLLM reads there.
    assert (Path(args[args.index("--model") + 1]) / "config.json").is_file()
    assert (Path(args[args.index("--tokenizer") + 1]) / "tokenizer_config.json").is_file()
    adapter = Path(args[args.index("--lora-modules") + 1].split("=", 1)[1])
    assert (adapter / "adapter_config.json").is_file()
    assert any(adapter.glob("adapter_model.*"))
