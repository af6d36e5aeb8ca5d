"""Bad data fails the pod at once (exit 65) with every problem as file:line, before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_trainer.config import EXIT_BAD_INPUT

from tests.support.trainer_jobs import launch, make_config, write_completion_data


def test_bad_rows_are_reported_with_line_numbers_and_training_never_starts(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    train, val = write_completion_data(tmp_path / "data", train_rows=6)
    lines = train.read_text().splitlines()
    lines[2] = json.dumps({"prompt": "only a prompt"})  # line 3: no completion
    lines[4] = "{not json"  # line 5
    train.write_text("\n".join(lines) + "\n")
    config = make_config(
        tmp_path / "job",
        base_uri=str(tiny_llama_dir),
        train_uri=str(train),
        val_uri=str(val),
        output_uri=str(tmp_path / "out"),
    )
    proc = launch(config, tmp_path / "launch.log")
    assert proc.wait(timeout=300) == EXIT_BAD_INPUT
    log = (tmp_path / "launch.log").read_text()
    assert "train.jsonl:3:" in log and "train.jsonl:5:" in log
    assert "torch.distributed.run" not in log  # torchrun never started
    term = json.loads((config.parent / "termination-log").read_text())
    assert term["error"]["reason"] == "DataValidationFailed"
    assert any("train.jsonl:3:" in p for p in term["error"]["problems"])
    assert any("train.jsonl:5:" in p for p in term["error"]["problems"])
    status = json.loads((config.parent / "status.json").read_text())
    assert status["progress"]["stage"] == "validating"
    assert not (tmp_path / "out").exists()  # nothing written to the output


def test_qlora_on_a_machine_without_a_gpu_is_bad_input(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    train, val = write_completion_data(tmp_path / "data", train_rows=6)
    config = make_config(
        tmp_path / "job",
        base_uri=str(tiny_llama_dir),
        train_uri=str(train),
        val_uri=str(val),
        output_uri=str(tmp_path / "out"),
        method="qlora",
        # the API itself requires GPUs for qlora; the trainer must still refuse a GPU-less pod
        spec_extra={"distributed": {"nodes": 1, "gpusPerNode": 1, "processesPerNode": 1}},
    )
    proc = launch(config, tmp_path / "launch.log")
    assert proc.wait(timeout=300) == EXIT_BAD_INPUT
    assert "qlora needs a CUDA GPU" in (tmp_path / "launch.log").read_text()
    term = json.loads((config.parent / "termination-log").read_text())
    assert term["error"]["reason"] == "InvalidConfiguration"
