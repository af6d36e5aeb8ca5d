"""The training recipe: one torchrun worker of a FineTuneJob.

Launch command (what ``finetune_trainer launch`` runs on every node; not meant to be typed)::

    torchrun --nnodes $NNODES --node-rank $NODE_RANK --nproc-per-node $NPROC_PER_NODE \\
        --master-addr $MASTER_ADDR --master-port $MASTER_PORT \\
        -m finetune_trainer train --config /etc/finetune/config.json --inputs $WORK/inputs.json

``--config`` is the TrainerConfig (the resolved FineTuneJob spec); ``--inputs`` is written by
launch: the local copies of the base model and data files, the checkpoint to resume from, and where
to log progress. The recipe, top to bottom:

1. tokenizer + data (``data.prepare_data``: formats, loss masks, packing, mixing, validation split)
2. model for the task (``modeling``: AutoModelFor{CausalLM,SequenceClassification,
   TokenClassification}) and the method: full, LoRA, or QLoRA (4-bit, CUDA only)
3. TrainingArguments from spec.hyperparameters (``build_training_arguments``, a pure function):
   precision (bf16/fp16 on a GPU; fp32 on CPU, logged), gradient checkpointing, seed, schedule,
   warmup ratio, weight decay, eval cadence, checkpoint cadence (spec.checkpointing.everySteps),
   DeepSpeed ZeRO from spec.distributed.deepspeed (``deepspeed.py``) or DDP without it
4. ``Trainer.train(resume_from_checkpoint=...)``: the step, optimizer, scheduler, RNG states and
   data position all come back from the checkpoint
5. callbacks: checkpoints to storage, SIGTERM → checkpoint + exit 75, progress events
6. the final model (adapter for LoRA/QLoRA, full weights otherwise; ZeRO-3 weights gathered) into
   ``<work>/final`` for launch to evaluate and publish.

Why transformers' Trainer and not TRL's SFTTrainer: data.py already renders every format
(chat templates, assistant-only loss masks, packing with per-row position ids) into
input_ids/labels, identically for training, evaluation and the baseline. SFTTrainer would
tokenize, mask and pack a second time with its own rules; for pre-tokenized data it adds nothing
but a dependency. The plain Trainer also serves the two classification tasks the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune_trainer.config import EXIT_BAD_INPUT, EXIT_OK, EXIT_RETRIABLE, TrainerConfig

__all__ = ["build_training_arguments", "cli", "logging_steps"]

log = logging.getLogger("finetune_trainer.train")

LOGGING_STEPS_ENV = "FINETUNE_LOGGING_STEPS"


def logging_steps() -> int:
    """Steps between loss logs (FINETUNE_LOGGING_STEPS, default 10)."""
    return max(1, int(os.environ.get(LOGGING_STEPS_ENV, "10")))


def build_training_arguments(
    config: TrainerConfig,
    *,
    output_dir: str,
    deepspeed_config: dict[str, Any] | None,
    has_eval: bool,
    cuda: bool,
) -> dict[str, Any]:
    """TrainingArguments keyword arguments (transformers 5.x field names) for the job."""
    hp = config.spec.hyperparameters
    precision = hp.precision if cuda else "fp32"
    if hp.eval_steps and has_eval:
        eval_strategy, eval_steps = "steps", hp.eval_steps
    else:
        eval_strategy, eval_steps = ("epoch" if has_eval else "no"), None
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "per_device_train_batch_size": hp.batch_size_per_device,
        "per_device_eval_batch_size": hp.batch_size_per_device,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "num_train_epochs": float(hp.epochs or 1),
        "max_steps": hp.max_steps or -1,
        "learning_rate": float(hp.learning_rate),
        "lr_scheduler_type": hp.lr_scheduler,
        "warmup_steps": float(hp.warmup_ratio),  # a float in [0, 1) is a ratio of total steps
        "weight_decay": float(hp.weight_decay),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "activation_checkpointing": hp.gradient_checkpointing,  # 5.x name of gradient_checkpointing
        "activation_checkpointing_kwargs": {"use_reentrant": False}
        if hp.gradient_checkpointing
        else None,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "save_strategy": "steps",
        "save_steps": config.spec.checkpointing.every_steps,
        "save_total_limit": 1,  # locally; storage keeps spec.checkpointing.keepLast
        "eval_strategy": eval_strategy,
        "eval_steps": eval_steps,
        "logging_strategy": "steps",
        "logging_steps": logging_steps(),
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "remove_unused_columns": False,  # data.py's columns (position_ids for packing) are inputs
        "dataloader_num_workers": 0,
        "use_cpu": not cuda,
        # ddp_backend is left to accelerate: nccl with CUDA, gloo on CPU
        "deepspeed": deepspeed_config,
        "save_only_model": False,  # optimizer, scheduler and RNG states are needed to resume
        "ignore_data_skip": False,  # resume at the same data position
    }
    return kwargs


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="finetune_trainer train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="TrainerConfig JSON")
    parser.add_argument("--inputs", required=True, help="inputs.json written by launch")
    return parser.parse_args(list(argv))


def _write_result(path: str | None, doc: dict[str, Any]) -> None:
    if path and int(os.environ.get("RANK", "0")) == 0:
        Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True))


def cli(argv: Sequence[str]) -> int:
    """Run one worker; exit 0 (done), 65 (bad input), 75 (SIGTERM: checkpoint saved)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse(argv)
    # Install the SIGTERM handler first: a signal during loading must not kill us uncheckpointed.
    from finetune_trainer.callbacks import StopOnSignal

    stopper = StopOnSignal()
    config = TrainerConfig.load(args.config)
    inputs = json.loads(Path(args.inputs).read_text())
    result_path: str | None = inputs.get("result")
    try:
        return _train(config, inputs, stopper, result_path)
    except Exception as exc:
        from finetune_trainer.data import DataValidationError
        from finetune_trainer.deepspeed import DeepSpeedConfigError
        from finetune_trainer.modeling import ConfigurationError

        if isinstance(exc, (DataValidationError, DeepSpeedConfigError, ConfigurationError)):
            log.error("%s", exc)
            _write_result(result_path, {"exit": EXIT_BAD_INPUT, "error": str(exc)})
            return EXIT_BAD_INPUT
        raise


def _train(
    config: TrainerConfig, inputs: dict[str, Any], stopper: Any, result_path: str | None
) -> int:
    import torch
    from transformers import Trainer, TrainingArguments

    from finetune_trainer import modeling
    from finetune_trainer.callbacks import CheckpointPublisher, ProgressReporter
    from finetune_trainer.data import prepare_data
    from finetune_trainer.deepspeed import resolve_deepspeed_config
    from finetune_trainer.report import ProgressLog
    from finetune_trainer.storage import open_store

    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if not cuda and config.spec.hyperparameters.precision != "fp32" and rank == 0:
        log.info(
            "no CUDA device: training in fp32 instead of spec.hyperparameters.precision=%s",
            config.spec.hyperparameters.precision,
        )
    modeling.check_method_supported(config, cuda=cuda)
    base_dir = Path(inputs["base_model_dir"])
    files = {k: Path(v) for k, v in inputs["files"].items()}
    progress = ProgressLog(inputs.get("progress_log") if rank == 0 else None)

    # 1. tokenizer + data
    tokenizer = modeling.load_tokenizer(base_dir)
    data = prepare_data(config, tokenizer, files)
    # 2. model + method
    model = modeling.load_base_model(config, base_dir, labels=data.labels, cuda=cuda)
    n_params = sum(p.numel() for p in model.parameters())
    model = modeling.apply_method(config, model)
    # 3. arguments
    ds_config = resolve_deepspeed_config(config.spec.distributed.deepspeed)
    output_dir = str(Path(inputs["output_dir"]))
    training_args = TrainingArguments(
        **build_training_arguments(
            config,
            output_dir=output_dir,
            deepspeed_config=ds_config,
            has_eval=data.eval is not None and len(data.eval) > 0,
            cuda=cuda,
        )
    )
    # 5. callbacks
    store = open_store(config.spec.storage)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval if data.eval is not None and len(data.eval) > 0 else None,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=[
            stopper,  # first: decides should_save before the checkpoint publisher runs
            CheckpointPublisher(config, store, progress),
            ProgressReporter(progress, n_params=n_params),
        ],
    )
    # 4. train (resuming where the last complete checkpoint left off)
    resume = inputs.get("resume_from")
    if resume and rank == 0:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume or None)
    if stopper.stopped_at is not None:
        _write_result(result_path, {"exit": EXIT_RETRIABLE, "checkpointStep": stopper.stopped_at})
        progress.emit("stopped", step=stopper.stopped_at)
        return EXIT_RETRIABLE
    # 6. final model (every rank takes part: ZeRO-3 gathers the shards)
    final_dir = Path(inputs["final_dir"])
    trainer.save_model(str(final_dir))
    if rank == 0:
        tokenizer.save_pretrained(str(final_dir))
        state = trainer.state
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        summary = {
            "exit": EXIT_OK,
            "globalStep": state.global_step,
            "trainLoss": losses[-1] if losses else None,
            "tokensSeen": int(state.num_input_tokens_seen or 0),
            "labels": data.labels,
            "logHistory": state.log_history,
        }
        _write_result(result_path, summary)
        progress.emit("train_end", step=state.global_step, total_steps=state.max_steps)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
