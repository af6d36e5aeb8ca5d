"""Our trainer's recipe, measured the same way as the baseline.

Why it exists: the benchmark must time exactly what a FineTuneJob pod runs: ``data.prepare_data``
(formats, loss masks, packing with per-row position ids), ``modeling`` (model, LoRA/full) and
``train.build_training_arguments`` (the TrainingArguments our pods use), under the same
``ThroughputCallback`` as the baseline. Only storage, checkpoint upload and status reporting are
left out; they run outside the timed steps in a real job. Switches for the speed options under
evaluation (``--liger``, ``--compile``, ``--workers``, ``--zero``) let each default be justified by
a figure before it becomes a default.

    torchrun --nproc-per-node 1 bench/trainer_gpu/ours.py --model-dir DIR --data FILE \
        --method lora|full [--zero none|0|2|3] --steps 60 --warmup 10 --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ThroughputCallback,
    device_name,
    flops_per_token,
    peak_flops,
    peak_memory_gib,
)


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The FineTuneJob spec this benchmark run stands for."""
    spec: dict[str, Any] = {
        "task": "causal-lm",
        "baseModel": {"uri": str(args.model_dir)},
        "datasets": [{"name": "alpaca", "uri": str(args.data), "format": "instruction"}],
        "method": {"type": args.method},
        "hyperparameters": {
            "maxSteps": args.steps,
            "learningRate": "2e-4" if args.method == "lora" else "2e-5",
            "batchSizePerDevice": args.batch_size,
            "maxSeqLength": args.max_seq_length,
            "packing": not args.no_packing,
            "precision": "bf16",
            "gradientCheckpointing": args.gradient_checkpointing,
        },
        "output": {"uri": str(args.out.parent / "ours-output")},
        "checkpointing": {"everySteps": 100000},
    }
    if args.method == "lora":
        spec["method"]["lora"] = {"r": 16, "alpha": 32, "targetModules": ["all-linear"]}
    if args.zero != "none":
        spec["distributed"] = {"deepspeed": {"zeroStage": int(args.zero)}}
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--method", choices=["lora", "full"], required=True)
    ap.add_argument("--zero", choices=["none", "0", "2", "3"], default="none")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-seq-length", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-packing", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument(
        "--liger", action="store_true", help="use_liger_kernel=True (needs liger-kernel)"
    )
    ap.add_argument("--compile", action="store_true", help="torch_compile=True")
    ap.add_argument("--workers", type=int, default=None, help="dataloader_num_workers")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)

    import torch
    from finetune_operator.api import FineTuneJobSpec
    from finetune_trainer import modeling
    from finetune_trainer.config import JobRef, ReportTarget, TrainerConfig
    from finetune_trainer.data import prepare_data
    from finetune_trainer.deepspeed import resolve_deepspeed_config
    from finetune_trainer.train import build_training_arguments
    from transformers import Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    spec = FineTuneJobSpec.model_validate(job_spec(args), context={"local": True})
    config = TrainerConfig(
        job=JobRef(name="bench"),
        run_id="bench",
        spec=spec,
        base_model_uri=str(args.model_dir),
        report=ReportTarget(termination_log=None, metrics_port=None),
    )
    tokenizer = modeling.load_tokenizer(args.model_dir)
    data = prepare_data(config, tokenizer, {"dataset:alpaca": args.data})
    model = modeling.load_base_model(config, args.model_dir, labels=None, cuda=cuda)
    n_params = sum(p.numel() for p in model.parameters())
    model = modeling.apply_method(config, model)
    kwargs = build_training_arguments(
        config,
        output_dir=str(args.out.parent / f"ours-{args.method}"),
        deepspeed_config=resolve_deepspeed_config(spec.distributed.deepspeed),
        has_eval=False,
        cuda=cuda,
    )
    kwargs.update(save_strategy="no", logging_steps=10)
    if args.liger:
        kwargs["use_liger_kernel"] = True
    if args.compile:
        kwargs["torch_compile"] = True
    if args.workers is not None:
        kwargs["dataloader_num_workers"] = args.workers
    meter = ThroughputCallback(args.warmup)
    targs = TrainingArguments(**kwargs)
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=data.train,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=[meter.callback],
    )
    trainer.train()
    tps = meter.tokens_per_second()
    cfg = model.config
    # Packed: each token attends within its own row (position ids restart at 0 per row), so T is
    # the mean row length, not the block length.
    blocks = data.train["input_ids"]
    n_tokens = sum(len(b) for b in blocks)
    if "position_ids" in data.train.column_names:
        n_rows = sum(list(p).count(0) for p in data.train["position_ids"])
    else:
        n_rows = len(blocks)
    fpt = flops_per_token(
        n_params, cfg.num_hidden_layers, cfg.hidden_size, n_tokens // max(1, n_rows)
    )
    peak = peak_flops(device_name())
    result = {
        "run": f"ours-{args.method}" + ("" if args.zero == "none" else f"-zero{args.zero}"),
        "device": device_name(),
        "tokens_per_s": tps,
        "mfu": (tps * fpt / peak) if peak else None,
        "flops_per_token": fpt,
        "params": n_params,
        "peak_memory_gib": peak_memory_gib(),
        "steps_timed": meter.steps_timed,
        "settings": {
            "packing": not args.no_packing,
            "zero": args.zero,
            "liger": args.liger,
            "compile": args.compile,
            "dataloader_num_workers": targs.dataloader_num_workers,
            "gradient_checkpointing": args.gradient_checkpointing,
            "attn_implementation": getattr(cfg, "_attn_implementation", None),
            "optim": targs.optim,
            "batch_size": args.batch_size,
            "max_seq_length": args.max_seq_length,
        },
    }
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
