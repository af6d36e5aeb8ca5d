"""DeepSpeed config generation from spec.distributed.deepspeed, and the user's file (configMapRef)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_operator.api import DeepSpeedSpec
from finetune_trainer.deepspeed import (
    DEEPSPEED_CONFIG_ENV,
    DeepSpeedConfigError,
    build_deepspeed_config,
    resolve_deepspeed_config,
)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_zero_stage_leaves_batch_fields_to_the_trainer(stage: int) -> None:
    cfg = build_deepspeed_config(DeepSpeedSpec(zero_stage=stage))
    assert cfg["zero_optimization"]["stage"] == stage
    for key in (
        "train_micro_batch_size_per_gpu",
        "train_batch_size",
        "gradient_accumulation_steps",
    ):
        assert cfg[key] == "auto"
    assert cfg["bf16"] == {"enabled": "auto"}
    assert "optimizer" not in cfg  # the Trainer's AdamW unless offloading
    gathers = cfg["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save")
    assert gathers is (True if stage == 3 else None)


def test_offload_adds_cpu_devices_and_deepspeed_adam() -> None:
    cfg = build_deepspeed_config(
        DeepSpeedSpec(zero_stage=3, offload_optimizer=True, offload_params=True)
    )
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert cfg["optimizer"]["type"] == "AdamW"


def test_param_offload_below_stage_3_is_refused_with_the_fix() -> None:
    # The API refuses this at admission too; the trainer must not trust that (user configs).

    with pytest.raises(DeepSpeedConfigError, match=r"offloadParams needs zeroStage 3"):
        build_deepspeed_config(
            DeepSpeedSpec.model_construct(
                zero_stage=2, offload_params=True, offload_optimizer=False
            )
        )


def test_config_map_file_is_used_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(user))
    monkeypatch.setenv(DEEPSPEED_CONFIG_ENV, str(path))
    assert resolve_deepspeed_config(DeepSpeedSpec(config_map_ref="my-ds")) == user


def test_missing_or_broken_config_map_file_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DEEPSPEED_CONFIG_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(DeepSpeedConfigError, match=r"absent\.json does not exist.*ds_config\.json"):
        resolve_deepspeed_config(DeepSpeedSpec(config_map_ref="my-ds"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv(DEEPSPEED_CONFIG_ENV, str(bad))
    with pytest.raises(DeepSpeedConfigError, match=r"bad\.json: not valid JSON"):
        resolve_deepspeed_config(DeepSpeedSpec(config_map_ref="my-ds"))


def test_no_deepspeed_means_ddp() -> None:
    assert resolve_deepspeed_config(None) is None
