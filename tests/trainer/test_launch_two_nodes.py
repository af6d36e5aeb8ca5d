"""Two "nodes": two launchers (NNODES=2, NODE_RANK 0/1) rendezvous over loopback, as two pods do.

Each node pulls into its own work dir and uploads its own ranks' checkpoint files (rank 1's RNG
state comes only from node 1), node 0 alone evaluates, publishes and reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_trainer.config import EXIT_OK

from tests.support.trainer_jobs import free_port, launch, make_config, write_completion_data

pytestmark = pytest.mark.slow


def test_two_nodes_train_one_job(tmp_path: Path, tiny_llama_dir: Path) -> None:
    train, val = write_completion_data(tmp_path / "data")
    out = tmp_path / "out"
    config = make_config(
        tmp_path / "job",
        base_uri=str(tiny_llama_dir),
        train_uri=str(train),
        val_uri=str(val),
        output_uri=str(out),
        method="lora",
        max_steps=4,
        every_steps=2,
        keep_last=2,
        nodes=2,
        nproc=1,
    )
    port = free_port()
    nodes = [
        launch(config, tmp_path / f"node-{r}.log", nnodes=2, node_rank=r, master_port=port)
        for r in (0, 1)
    ]
    codes = [p.wait(timeout=900) for p in nodes]
    logs = [(tmp_path / f"node-{r}.log").read_text() for r in (0, 1)]
    assert codes == [EXIT_OK, EXIT_OK], logs[0][-3000:] + "\n-----\n" + logs[1][-3000:]
    assert "--nnodes 2 --node-rank 1" in logs[1]

    work = config.parent / "work"
    assert (work / "node-0" / "final").is_dir() and not (work / "node-1" / "final").exists()
    ckpt = out / "runs" / "run-1" / "checkpoints" / "step-4"
    assert json.loads((ckpt / "_COMPLETE").read_text())["worldSize"] == 2
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    assert not (
        work / "node-0" / "checkpoints" / "checkpoint-4" / "rng_state_1.pth"
    ).exists()  # came from node 1

    assert (out / "runs" / "run-1" / "_SUCCESS").is_file()
    status = json.loads((config.parent / "status.json").read_text())  # node 0's only
    assert status["progress"]["stage"] == "done" and status["progress"]["step"] == 4
    assert "eval_loss" in status["evaluation"]["results"]
