"""The recipe's TrainingArguments (transformers 5.x field names) and the method/precision rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobSpec
from finetune_trainer.config import JobRef, TrainerConfig
from finetune_trainer.deepspeed import build_deepspeed_config
from finetune_trainer.modeling import ConfigurationError, check_method_supported
from finetune_trainer.train import build_training_arguments
from transformers import TrainingArguments


def _config(**spec: Any) -> TrainerConfig:
    wire = {
        "baseModel": {"uri": "s3://models/tiny/"},
        "datasets": [{"name": "d", "uri": "s3://data/d.jsonl", "format": "text"}],
        "output": {"uri": "s3://out/team/"},
        **spec,
    }
    return TrainerConfig(
        job=JobRef("j"),
        run_id="r",
        spec=FineTuneJobSpec.model_validate(wire),
        base_model_uri="s3://models/tiny/",
    )


def test_hyperparameters_map_onto_training_arguments(tmp_path: Path) -> None:
    config = _config(
        hyperparameters={
            "epochs": 3,
            "learningRate": "5e-5",
            "batchSizePerDevice": 2,
            "gradientAccumulationSteps": 4,
            "lrScheduler": "linear",
            "warmupRatio": "0.1",
            "weightDecay": "0.01",
            "precision": "bf16",
            "gradientCheckpointing": True,
            "seed": 7,
            "evalSteps": 50,
        },
        checkpointing={"everySteps": 100, "keepLast": 2},
    )
    kwargs = build_training_arguments(
        config, output_dir=str(tmp_path), deepspeed_config=None, has_eval=True, cuda=False
    )
    args = TrainingArguments(**kwargs)  # every field exists in the installed transformers
    assert (args.num_train_epochs, args.max_steps, args.learning_rate) == (3.0, -1, 5e-5)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 4)
    assert args.lr_scheduler_type.value == "linear" and args.warmup_steps == pytest.approx(0.1)
    assert args.weight_decay == 0.01 and args.seed == 7 and args.data_seed == 7
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {
        "use_reentrant": False
    }
    assert (args.save_strategy.value, args.save_steps) == ("steps", 100)
    assert (args.eval_strategy.value, args.eval_steps) == ("steps", 50)
    assert not args.bf16 and not args.fp16  # no CUDA: fp32
    assert not args.save_only_model and not args.ignore_data_skip  # resumable
    gpu = build_training_arguments(
        config, output_dir=str(tmp_path), deepspeed_config=None, has_eval=True, cuda=True
    )
    assert gpu["bf16"] is True and gpu["fp16"] is False


def test_max_steps_and_no_eval(tmp_path: Path) -> None:
    kwargs = build_training_arguments(
        _config(hyperparameters={"maxSteps": 20}),
        output_dir=str(tmp_path),
        deepspeed_config=None,
        has_eval=False,
        cuda=False,
    )
    args = TrainingArguments(**kwargs)
    assert args.max_steps == 20 and args.eval_strategy.value == "no"


def test_deepspeed_config_goes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    config = _config(distributed={"deepspeed": {"zeroStage": 2}})
    ds = build_deepspeed_config(config.spec.distributed.deepspeed)  # type: ignore[arg-type]
    kwargs = build_training_arguments(
        config, output_dir=str(tmp_path), deepspeed_config=ds, has_eval=False, cuda=False
    )
    assert kwargs["deepspeed"]["zero_optimization"]["stage"] == 2


def test_qlora_without_cuda_is_bad_input_with_the_fix() -> None:
    config = _config(method={"type": "qlora", "lora": {"r": 8}})
    with pytest.raises(ConfigurationError, match=r"qlora needs a CUDA GPU.*use type: lora"):
        check_method_supported(config, cuda=False)
    check_method_supported(_config(method={"type": "lora"}), cuda=False)
