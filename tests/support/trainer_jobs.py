"""Helpers for tests that run the trainer as pods do: a TrainerConfig on disk, `launch` processes.

Why it exists: the end-to-end, multi-process, two-node and kill-and-resume tests all need the same
few steps: small deterministic data, a config pointing at it (local paths or S3), launching
``python -m finetune_trainer launch`` with the pod environment (NNODES, NODE_RANK, ...), and
reading the per-step events rank 0 logged. Keeping them here keeps each test about its claim.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "data_config",
    "free_port",
    "launch",
    "logged_losses",
    "make_config",
    "write_completion_data",
]

_WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "happy",
    "sad",
    "movie",
    "great",
    "film",
    "bad",
    "good",
    "red",
    "blue",
    "green",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_completion_data(
    dest: Path, *, train_rows: int = 64, val_rows: int = 8, seed: int = 0
) -> tuple[Path, Path]:
    """A copy task in the completion format (learnable by a tiny model in a few steps)."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train.jsonl", train_rows), ("val.jsonl", val_rows)):
        path = dest / name
        with path.open("w") as fh:
            for _ in range(n):
                phrase = " ".join(rng.choice(_WORDS) for _ in range(5))
                fh.write(
                    json.dumps({"prompt": f"Repeat: {phrase}", "completion": f" {phrase}"}) + "\n"
                )
        paths.append(path)
    return paths[0], paths[1]


def make_config(
    dest: Path,
    *,
    base_uri: str,
    train_uri: str,
    val_uri: str | None,
    output_uri: str,
    method: str = "lora",
    max_steps: int = 6,
    every_steps: int = 2,
    keep_last: int = 2,
    nodes: int = 1,
    nproc: int = 1,
    zero_stage: int | None = None,
    endpoint: str = "",
    baseline: bool = False,
    run_id: str = "run-1",
    metrics_port: int | None = None,
    spec_extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``dest/config.json`` (a TrainerConfig) and return its path."""
    from finetune_operator.api import FineTuneJobSpec
    from finetune_trainer.config import JobRef, ReportTarget, TrainerConfig

    distributed: dict[str, Any] = {"nodes": nodes, "gpusPerNode": 0, "processesPerNode": nproc}
    if zero_stage is not None:
        distributed["deepspeed"] = {"zeroStage": zero_stage}
    wire: dict[str, Any] = {
        "task": "causal-lm",
        "baseModel": {"uri": base_uri},
        "datasets": [{"name": "copy", "uri": train_uri, "format": "completion"}],
        "method": {"type": method, **({"lora": {"r": 8, "alpha": 16}} if method != "full" else {})},
        "hyperparameters": {
            "maxSteps": max_steps,
            "batchSizePerDevice": 4,
            "learningRate": "1e-3",
            "maxSeqLength": 64,
            "warmupRatio": "0",
        },
        "distributed": distributed,
        "storage": {"endpoint": endpoint},
        "output": {"uri": output_uri},
        "checkpointing": {"everySteps": every_steps, "keepLast": keep_last},
    }
    if val_uri is not None:
        wire["validation"] = {"uri": val_uri}
    if baseline:
        wire["evaluation"] = {"baseline": {"fewShot": 1}}
    wire.update(spec_extra or {})
    spec = FineTuneJobSpec.model_validate(wire, context={"local": True})
    dest.mkdir(parents=True, exist_ok=True)
    config = TrainerConfig(
        job=JobRef(name="tiny", namespace="team-a"),
        run_id=run_id,
        spec=spec,
        base_model_uri=base_uri,
        work_dir=str(dest / "work"),
        report=ReportTarget(
            status_file=str(dest / "status.json"),
            termination_log=str(dest / "termination-log"),
            metrics_port=metrics_port,
            min_interval_seconds=1.0,
        ),
        image="test",
    )
    path = dest / "config.json"
    path.write_text(config.to_json())
    return path


def launch(
    config: Path,
    log: Path,
    *,
    nnodes: int = 1,
    node_rank: int = 0,
    nproc: int = 1,
    master_port: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m finetune_trainer launch`` as a pod would (output to ``log``)."""
    full_env = {
        **os.environ,
        "NNODES": str(nnodes),
        "NODE_RANK": str(node_rank),
        "NPROC_PER_NODE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port or free_port()),
        "FINETUNE_LOGGING_STEPS": "1",
        "DS_ACCELERATOR": "cpu",
        **(env or {}),
    }
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "finetune_trainer", "launch", "--config", str(config)],
            env=full_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def logged_losses(progress_log: Path) -> dict[int, float]:
    """step → training loss from rank 0's progress events (FINETUNE_LOGGING_STEPS=1)."""
    out: dict[int, float] = {}
    if not progress_log.exists():
        return out
    for line in progress_log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "log" and "loss" in event:
            if event["step"] in out:
                raise AssertionError(f"step {event['step']} logged twice in {progress_log}")
            out[int(event["step"])] = float(event["loss"])
    return out


def data_config(datasets: list[dict[str, Any]], task: str = "causal-lm", **spec: Any) -> Any:
    """A TrainerConfig for data-stage tests: these datasets, local-path rules, nothing to run."""
    from finetune_operator.api import FineTuneJobSpec
    from finetune_trainer.config import JobRef, TrainerConfig

    doc = {
        "task": task,
        "baseModel": {"uri": "/models/base"},
        "datasets": datasets,
        "output": {"uri": "/out"},
        **spec,
    }
    parsed = FineTuneJobSpec.model_validate(doc, context={"local": True})
    return TrainerConfig(
        job=JobRef("job"), run_id="run", spec=parsed, base_model_uri="/models/base"
    )
