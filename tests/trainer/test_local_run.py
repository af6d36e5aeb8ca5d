"""`finetune run` end to end: the real command, real trainer processes, the real server.

Each test runs ``python -m finetune_operator.cli run ...`` as a subprocess in a temporary
directory (so relative paths in the manifests land there) with the AWS variables removed, so the
runner decides on its own storage exactly as on a laptop. The examples are used with fewer steps
to keep the tier fast on two CPU cores; everything else about them is as shipped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator.demo_data import sentiment_rows, write_jsonl
from finetune_operator.local_demo import minilm_dir

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = env.get("HOME", "/root")
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"  # no ~/.aws credentials either
    env["OMP_NUM_THREADS"] = "1"
    return env


def _manifest(repo_root: Path, name: str, dest: Path, **hyper: Any) -> Path:
    """A copy of examples/<name> with some hyperparameters/checkpointing changed."""
    doc = yaml.safe_load((repo_root / "examples" / name).read_text())
    changes = hyper.pop("hyperparameters", {})
    if "maxSteps" in changes:
        doc["spec"]["hyperparameters"].pop("epochs", None)  # one or the other
    doc["spec"]["hyperparameters"].update(changes)
    for key, value in hyper.items():
        doc["spec"][key] = value
    path = dest / Path(name).name
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML, and keeps strings quoted
    return path


def _finetune(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finetune_operator.cli", "run", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_instruct_example_local_paths_end_to_end(repo_root: Path, tmp_path: Path) -> None:
    """causal-lm, 1 node x 2 torchrun processes, local paths only, served via /v1/completions."""
    manifest = _manifest(
        repo_root,
        "local/instruct.yaml",
        tmp_path,
        hyperparameters={"maxSteps": 24},
        checkpointing={"everySteps": 12, "keepLast": 1},
    )
    proc = _finetune(tmp_path, str(manifest), "--demo", "--status-out", "status.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    conds = _conditions(status)
    assert conds["Ready"] == conds["Trained"] == conds["Evaluated"] == conds["Deployed"] == "True"
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 24
    assert float(status["metrics"]["trainLoss"]) > 0
    evaluation = status["evaluation"]
    assert set(evaluation["results"]) >= {"eval_loss", "eval_perplexity"}
    assert set(evaluation["baseline"]) >= {"eval_loss", "eval_perplexity"}
    assert evaluation["passed"] is True and "eval_loss" in evaluation["message"]
    run_dir = Path(status["artifacts"]["uri"])
    assert run_dir.is_relative_to(tmp_path / ".work" / "demo" / "instruct-output")
    assert (run_dir / "_SUCCESS").is_file() and (run_dir / "manifest.json").is_file()
    assert (run_dir / "finetune.json").is_file()
    assert status["runId"] == run_dir.name and status["lineage"]["specHash"]
    assert status["serving"]["ready"] is True
    # the answers came back through the server's HTTP API
    assert "/v1/completions" in proc.stdout and "Spell the word backwards." in proc.stdout
    assert "Traceback" not in proc.stderr

    # --serve on the completed run: no training again, the URL printed, up until Ctrl-C
    args = [sys.executable, "-m", "finetune_operator.cli", "run", str(manifest), "--serve"]
    server = subprocess.Popen(
        [*args, "--status-out", "serve.json"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    url = ""
    for line in server.stdout:
        match = re.search(r"Serving (http://127\.0\.0\.1:\d+)", line)
        if match:
            url = match.group(1)
            break
    assert url, "no URL printed"
    import httpx

    answer = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"]
    served = json.loads((tmp_path / "serve.json").read_text())
    assert served["serving"] == {"endpoint": url, "promoted": True, "ready": True}
    server.send_signal(signal.SIGINT)
    rest = server.communicate(timeout=60)[0]
    assert server.returncode == 0, rest
    log = next((tmp_path / ".work" / "jobs").glob("instruct-tiny-*/logs/node-0.log"))
    assert log.read_text().count("===== launch node 0") == 1  # served, not trained again
    stopped = json.loads((tmp_path / "serve.json").read_text())
    assert stopped["serving"]["ready"] is False


def test_quickstart_example_embedded_s3_with_seed(repo_root: Path, tmp_path: Path) -> None:
    """The quickstart's s3:// URIs through the embedded S3, seeded with --seed (MiniLM + data)."""
    manifest = _manifest(
        repo_root,
        "quickstart.yaml",
        tmp_path,
        hyperparameters={"maxSteps": 3, "batchSizePerDevice": 8},
        checkpointing={"everySteps": 3, "keepLast": 1},
        # 3 steps cannot reach the shipped 0.8 accuracy gate; a gate that holds lets it serve
        evaluation={
            "datasets": [{"uri": "s3://data/sentiment/test.jsonl"}],
            "metrics": ["accuracy", "f1", "loss"],
            "baseline": {"enabled": True},
            "gate": [{"metric": "eval_accuracy", "op": ">=", "value": "0"}],
        },
    )
    data = tmp_path / "data"
    seeds = [
        f"s3://data/sentiment/train.jsonl={write_jsonl(sentiment_rows(48, 0), data / 'train.jsonl')}",
        f"s3://data/sentiment/val.jsonl={write_jsonl(sentiment_rows(16, 1), data / 'val.jsonl')}",
        f"s3://data/sentiment/test.jsonl={write_jsonl(sentiment_rows(24, 2), data / 'test.jsonl')}",
        f"s3://models/all-minilm-l6-v2/={minilm_dir()}",
    ]
    args = [str(manifest), "--workdir", "work", "--status-out", "status.json"]
    for seed in seeds:
        args += ["--seed", seed]
    proc = _finetune(tmp_path, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "embedded S3" in proc.stdout
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    results, baseline = status["evaluation"]["results"], status["evaluation"]["baseline"]
    assert {"eval_accuracy", "eval_f1", "eval_loss"} <= set(results) & set(baseline)
    assert status["evaluation"]["passed"] is True
    assert status["evaluation"]["message"].startswith("gate passed: eval_accuracy")
    run_uri = status["artifacts"]["uri"]
    assert run_uri.startswith("s3://artifacts/sentiment-minilm/runs/")
    # the embedded server's objects were kept on disk when the run ended
    kept = tmp_path / "work" / "s3" / run_uri.removeprefix("s3://")
    assert (kept / "_SUCCESS").is_file() and (kept / "adapter").is_dir()
    assert (kept / "labels.json").is_file()
    # a second run finds the completed run and does not train again; with --demo (inputs all
    # present: kept as they are) it serves the run and classifies the demo sentences over HTTP
    again = _finetune(tmp_path, *args[:5], "--demo")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already completed" in again.stdout and "already has data; kept" in again.stdout
    assert "/v1/classify" in again.stdout
    assert "The soup was not good at all." in again.stdout
    assert re.search(r"(positive|negative)\s+.\s+0\.\d{3}", again.stdout), again.stdout


def _first_logged_step_of_last_attempt(log: Path) -> int:
    text = log.read_text(errors="replace")
    last = text.rsplit("===== launch node 0", 1)[-1]
    match = re.search(r"\[finetune-train\] step (\d+)/", last)
    assert match, last[-3000:]
    return int(match.group(1))


def test_ctrl_c_keeps_checkpoint_and_rerun_resumes(repo_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(
        repo_root,
        "local/instruct.yaml",
        tmp_path,
        hyperparameters={"maxSteps": 400, "batchSizePerDevice": 4},
        checkpointing={"everySteps": 10, "keepLast": 2},
        distributed={"nodes": 1, "gpusPerNode": 0, "processesPerNode": 1},
    )
    args = [sys.executable, "-m", "finetune_operator.cli", "run", str(manifest), "--demo"]
    args += ["--status-out", "status.json"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 400
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status = json.loads((tmp_path / "status.json").read_text())
            step = int((status.get("checkpoint") or {}).get("step") or 0)
        except (OSError, ValueError):
            step = 0
        if step >= 10:
            break
        time.sleep(0.2)
    assert step >= 10, "no checkpoint reported in time"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the runner
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "Run the same command again to resume" in err and "Traceback" not in err
    stopped = json.loads((tmp_path / "status.json").read_text())
    assert stopped["phase"] == "Suspended" and stopped["reason"] == "Interrupted"
    kept = re.search(r"checkpoint step (\d+) is kept", err)
    assert kept, err
    kept_step = int(kept.group(1))
    assert kept_step >= 10

    again = _finetune(tmp_path, *args[4:])
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Resuming from checkpoint step {kept_step}" in again.stdout
    final = json.loads((tmp_path / "status.json").read_text())
    assert final["phase"] == "Succeeded" and final["attempts"] == 2
    assert final["progress"]["step"] == 400
    log = next((tmp_path / ".work" / "jobs").glob("instruct-tiny-*/logs/node-0.log"))
    assert _first_logged_step_of_last_attempt(log) > kept_step  # continued, did not restart


def test_bad_data_exit_65_names_the_row(repo_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(
        repo_root, "local/instruct.yaml", tmp_path, hyperparameters={"maxSteps": 4}
    )
    train = tmp_path / ".work" / "demo" / "instruct" / "train.jsonl"
    rows = [{"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"}] * 5
    write_jsonl(rows, train)
    with train.open("a") as fh:
        fh.write('{"instruction": "Add the two numbers.", "input": "2 + 2"}\n')  # no output
        fh.write("this is not json\n")
    proc = _finetune(tmp_path, str(manifest), "--demo", "--status-out", "status.json")
    assert proc.returncode == 65, proc.stdout + proc.stderr
    err = proc.stderr
    assert "train.jsonl" in err and "Traceback" not in err
    assert 'train.jsonl:6: missing field "output"' in err and "train.jsonl:7: not JSON" in err
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["phase"] == "Failed" and status["reason"] == "InvalidData"
    assert _conditions(status)["DataValidated"] == "False"
    # the user's file was not replaced by the demo data
    assert train.read_text().count("\n") == 7


def test_two_local_nodes_rendezvous_on_loopback(repo_root: Path, tmp_path: Path) -> None:
    """nodes: 2 → two `launch` processes (NODE_RANK 0 and 1) meeting at 127.0.0.1."""
    manifest = _manifest(
        repo_root,
        "local/instruct.yaml",
        tmp_path,
        hyperparameters={"maxSteps": 4},
        checkpointing={"everySteps": 2, "keepLast": 1},
        distributed={"nodes": 2, "gpusPerNode": 0, "processesPerNode": 1},
    )
    proc = _finetune(tmp_path, str(manifest), "--demo", "--status-out", "status.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 node(s) x 1 process(es)" in proc.stdout
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["progress"]["step"] == 4
    jobs = next((tmp_path / ".work" / "jobs").glob("instruct-tiny-*"))
    for rank in (0, 1):
        config = json.loads((jobs / f"node-{rank}" / "config.json").read_text())
        assert config["workDir"] == str(jobs / f"node-{rank}" / "work")  # one scratch per node
        assert (jobs / "logs" / f"node-{rank}.log").stat().st_size > 0
    assert Path(status["artifacts"]["uri"], "_SUCCESS").is_file()
