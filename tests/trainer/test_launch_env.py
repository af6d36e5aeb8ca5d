"""The launcher's view of the gang: pod environment → torchrun command line."""

from __future__ import annotations

from typing import Any

from finetune_operator.api import FineTuneJobSpec
from finetune_trainer.config import JobRef, TrainerConfig
from finetune_trainer.launch import NodeEnv, torchrun_command


def _config(**distributed: Any) -> TrainerConfig:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://models/x/"},
            "datasets": [{"name": "d", "uri": "s3://data/d.jsonl", "format": "text"}],
            "output": {"uri": "s3://out/x/"},
            "distributed": distributed,
        }
    )
    return TrainerConfig(job=JobRef("j"), run_id="r", spec=spec, base_model_uri="s3://models/x/")


def test_pod_environment_wins_over_the_spec() -> None:
    env = {
        "NNODES": "4",
        "NODE_RANK": "3",
        "NPROC_PER_NODE": "8",
        "MASTER_ADDR": "j-train-0.j-workers",
        "MASTER_PORT": "29500",
    }
    node = NodeEnv.from_env(_config(nodes=2, gpusPerNode=8), env)
    assert node == NodeEnv(
        nnodes=4,
        node_rank=3,
        nproc_per_node=8,
        master_addr="j-train-0.j-workers",
        master_port=29500,
    )
    cmd = torchrun_command(node, "/etc/finetune/config.json", "/workspace/inputs.json")
    joined = " ".join(cmd)
    assert "-m torch.distributed.run --nnodes 4 --node-rank 3 --nproc-per-node 8" in joined
    assert "--master-addr j-train-0.j-workers --master-port 29500" in joined
    assert joined.endswith(
        "-m finetune_trainer train --config /etc/finetune/config.json --inputs /workspace/inputs.json"
    )


def test_defaults_come_from_the_spec_and_the_indexed_job() -> None:
    node = NodeEnv.from_env(_config(nodes=2, gpusPerNode=4), {"JOB_COMPLETION_INDEX": "1"})
    assert (node.nnodes, node.node_rank, node.nproc_per_node) == (2, 1, 4)
    cpu = NodeEnv.from_env(_config(nodes=1, gpusPerNode=0), {})
    assert (cpu.nproc_per_node, cpu.master_addr, cpu.master_port) == (1, "127.0.0.1", 29500)
    explicit = NodeEnv.from_env(_config(nodes=1, gpusPerNode=0, processesPerNode=3), {})
    assert explicit.nproc_per_node == 3
