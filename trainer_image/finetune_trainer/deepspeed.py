"""DeepSpeed config for a FineTuneJob: generated from spec.distributed.deepspeed, or the user's file.

Why it exists: the API exposes a handful of ZeRO knobs (stage, optimizer/parameter offload) and an
escape hatch (``configMapRef``: the operator mounts that ConfigMap's ``ds_config.json``). This
module turns either into the dict handed to ``TrainingArguments(deepspeed=...)``. Batch sizes,
gradient accumulation, clipping, precision and bucket sizes are left as ``"auto"`` so
transformers' DeepSpeed integration fills them from the TrainingArguments: one source of truth.

Pure functions, no torch import: unit-testable and usable by launch's preflight.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from finetune_operator.api import DeepSpeedSpec

__all__ = [
    "DEEPSPEED_CONFIG_ENV",
    "DEFAULT_DEEPSPEED_CONFIG_PATH",
    "DeepSpeedConfigError",
    "build_deepspeed_config",
    "load_user_config",
    "resolve_deepspeed_config",
]

# Where the operator mounts the configMapRef's ds_config.json; FINETUNE_DEEPSPEED_CONFIG overrides.
DEFAULT_DEEPSPEED_CONFIG_PATH = "/etc/finetune/deepspeed/ds_config.json"
DEEPSPEED_CONFIG_ENV = "FINETUNE_DEEPSPEED_CONFIG"


class DeepSpeedConfigError(ValueError):
    """The DeepSpeed settings cannot be used (bad user file, impossible combination)."""


def build_deepspeed_config(ds: DeepSpeedSpec) -> dict[str, Any]:
    """The generated config for ZeRO stage 0-3 with optional CPU offload.

    Offloading parameters needs ZeRO-3 (DeepSpeed's rule); the API documents it, so it is an
    error here rather than a silent downgrade.
    """
    if ds.offload_params and ds.zero_stage != 3:
        raise DeepSpeedConfigError(
            f"spec.distributed.deepspeed.offloadParams needs zeroStage 3 (got {ds.zero_stage}): "
            "set zeroStage: 3 or offloadParams: false"
        )
    if ds.offload_optimizer and ds.zero_stage == 0:
        raise DeepSpeedConfigError(
            "spec.distributed.deepspeed.offloadOptimizer needs zeroStage 1, 2 or 3 (got 0)"
        )
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(
            {
                "overlap_comm": True,
                "contiguous_gradients": True,
                "reduce_bucket_size": "auto",
            }
        )
    if ds.zero_stage == 2:
        zero.update(
            {"allgather_partitions": True, "allgather_bucket_size": 2e8, "reduce_scatter": True}
        )
    if ds.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1e9,
                "stage3_max_reuse_distance": 1e9,
                # save_model() writes a normal (consolidated) state dict, usable without DeepSpeed
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # progress goes through report.py, not DeepSpeed's prints
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        # ZeRO-Offload wants DeepSpeed's CPU Adam; "auto" params come from TrainingArguments.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def load_user_config(path: str | Path) -> dict[str, Any]:
    """Read the user's ds_config.json (from the configMapRef); errors name the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise DeepSpeedConfigError(
            f"spec.distributed.deepspeed.configMapRef is set but {p} does not exist: the ConfigMap "
            "must have a key ds_config.json (mounted there by the operator), or set "
            f"{DEEPSPEED_CONFIG_ENV} to the file's path"
        )
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepSpeedConfigError(f"{p}: not valid JSON ({exc}); fix ds_config.json") from exc
    if not isinstance(doc, dict):
        raise DeepSpeedConfigError(f"{p}: a DeepSpeed config must be a JSON object")
    return doc


def resolve_deepspeed_config(ds: DeepSpeedSpec | None) -> dict[str, Any] | None:
    """The DeepSpeed config dict for the job, or None (plain DDP)."""
    if ds is None:
        return None
    if ds.config_map_ref:
        return load_user_config(os.environ.get(DEEPSPEED_CONFIG_ENV, DEFAULT_DEEPSPEED_CONFIG_PATH))
    return build_deepspeed_config(ds)
