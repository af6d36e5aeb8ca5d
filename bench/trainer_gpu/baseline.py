"""The baseline: a plain transformers Trainer + PEFT run with its defaults.

Why it exists: issue 9 measures our trainer against what a user gets by writing the obvious
script: no packing, padding to the longest sequence of each batch, the default attention
implementation, the default optimizer. Only what the comparison needs is set: the same model,
data, sequence length, batch size, precision (bf16) and step count as our run.

    python bench/trainer_gpu/baseline.py --model-dir DIR --data FILE --method lora|full \
        --steps 60 --warmup 10 --max-seq-length 2048 --batch-size 8 --out result.json
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
    alpaca_text,
    device_name,
    flops_per_token,
    load_rows,
    peak_flops,
    peak_memory_gib,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--method", choices=["lora", "full"], required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-seq-length", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)

    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    on_gpu = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    rows = load_rows(args.data, args.rows)

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        prompt, response = alpaca_text(row)
        return tok(
            prompt + response + tok.eos_token, truncation=True, max_length=args.max_seq_length
        )

    ds = Dataset.from_list(rows).map(encode, remove_columns=list(rows[0].keys()))
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.bfloat16 if on_gpu else torch.float32
    )
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    n_params = sum(p.numel() for p in model.parameters())
    meter = ThroughputCallback(args.warmup)
    targs = TrainingArguments(
        output_dir=str(args.out.parent / f"baseline-{args.method}"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=2e-4 if args.method == "lora" else 2e-5,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=ds,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        callbacks=[meter.callback],
    )
    trainer.train()
    tps = meter.tokens_per_second()
    cfg = model.config
    # T = the mean real row length (padding is not counted as work), as for our run.
    mean_len = sum(len(x) for x in ds["input_ids"]) / len(ds)
    fpt = flops_per_token(n_params, cfg.num_hidden_layers, cfg.hidden_size, int(mean_len))
    peak = peak_flops(device_name())
    result = {
        "run": f"baseline-{args.method}",
        "device": device_name(),
        "tokens_per_s": tps,
        "mfu": (tps * fpt / peak) if peak else None,
        "flops_per_token": fpt,
        "params": n_params,
        "peak_memory_gib": peak_memory_gib(),
        "steps_timed": meter.steps_timed,
        "settings": {
            "packing": False,
            "padding": "longest",
            "attn_implementation": getattr(cfg, "_attn_implementation", None),
            "batch_size": args.batch_size,
            "max_seq_length": args.max_seq_length,
            "optim": targs.optim,
        },
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
