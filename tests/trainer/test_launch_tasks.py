"""The classification tasks through launch: label sets reach the model config, labels.json and the
run descriptor; LoRA classification trains the new head too (merged copy loads with its labels)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.config import EXIT_OK

from tests.support.trainer_jobs import launch, make_config

pytestmark = pytest.mark.slow


def _rows(task: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    good, bad = ["great", "good", "wonderful"], ["bad", "boring", "terrible"]
    out: list[dict[str, Any]] = []
    for _ in range(n):
        if task == "sequence-classification":
            label = rng.choice(["positive", "negative"])
            out.append(
                {
                    "text": "the movie was " + rng.choice(good if label == "positive" else bad),
                    "label": label,
                }
            )
        else:
            out.append(
                {
                    "tokens": ["John", "went", "to", rng.choice(["London", "Paris"])],
                    "tags": ["B-PER", "O", "O", "B-LOC"],
                }
            )
    return out


@pytest.mark.parametrize(
    ("task", "fmt", "method", "labels"),
    [
        ("sequence-classification", "classification", "lora", ["negative", "positive"]),
        ("token-classification", "ner", "full", ["O", "B-LOC", "B-PER"]),
    ],
)
def test_task_through_launch(
    task: str, fmt: str, method: str, labels: list[str], tmp_path: Path, tiny_llama_dir: Path
) -> None:
    rng = random.Random(0)
    for name, n in (("train.jsonl", 32), ("val.jsonl", 8)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in _rows(task, n, rng)))
    out = tmp_path / "out"
    config = make_config(
        tmp_path / "job",
        base_uri=str(tiny_llama_dir),
        train_uri=str(tmp_path / "train.jsonl"),
        val_uri=str(tmp_path / "val.jsonl"),
        output_uri=str(out),
        method=method,
        max_steps=4,
        every_steps=4,
        spec_extra={
            "task": task,
            "datasets": [{"name": "d", "uri": str(tmp_path / "train.jsonl"), "format": fmt}],
            "output": {"uri": str(out), "mergeAdapter": method == "lora"},
        },
    )
    proc = launch(config, tmp_path / "launch.log")
    assert proc.wait(timeout=600) == EXIT_OK, (tmp_path / "launch.log").read_text()[-4000:]
    run = out / "runs" / "run-1"
    assert json.loads((run / "labels.json").read_text()) == labels
    descriptor = json.loads((run / "finetune.json").read_text())
    assert descriptor["task"] == task and descriptor["labels"] == labels
    assert descriptor["adapter"] == ("adapter/" if method == "lora" else None)
    merged_config = json.loads((run / "merged" / "config.json").read_text())
    assert merged_config["id2label"] == {str(i): label for i, label in enumerate(labels)}
    results = json.loads((run / "metrics.json").read_text())["evaluation"]["results"]
    assert {"eval_loss", "eval_accuracy", "eval_f1"} <= set(results)
    if method == "lora":  # PEFT saved the trained classification head with the adapter
        from safetensors import safe_open

        with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as fh:
            assert any("score" in key for key in fh.keys())  # noqa: SIM118
