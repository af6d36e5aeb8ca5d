"""One command for the GPU trainer benchmark: the plain baseline and our trainer, same inputs.

Why it exists: issue 9's comparison, reproducible with one command on the lent H100/H200:

    python bench/trainer_gpu/run.py --data ../shared/datasets/alpaca_2000.jsonl     # on a GPU
    python bench/trainer_gpu/run.py --data ../shared/datasets/alpaca_2000.jsonl --smoke  # CPU

Runs (each in its own process, one after another, so every run starts with an empty GPU):
  lora: baseline (Trainer + PEFT defaults: no packing, pad to longest, default attention) vs ours
  full: baseline vs ours without DeepSpeed, with ZeRO-2 and with ZeRO-3 (the DeepSpeed overhead
        on one GPU)
Each run reports steady-state tokens/s (real tokens, after warm-up), peak GPU memory and MFU.
Writes results.json (keys: gpu, lora.baseline_tokens_per_s, lora.ours_tokens_per_s,
full.baseline_tokens_per_s, full.ours_tokens_per_s, full.ours_mfu, peak_memory_gib per run) and
results.md beside this file (``--smoke`` writes to the work directory instead: CPU figures are not
results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import LLAMA_1B, LLAMA_TINY, build_model_dir, load_rows  # noqa: E402


def clean_rows(src: Path, dst: Path, limit: int | None) -> int:
    """Alpaca rows with a non-empty instruction and output (our validation rejects the others,
    and the baseline must train on exactly the same rows)."""
    rows = [
        r
        for r in load_rows(src)
        if r.get("instruction", "").strip() and r.get("output", "").strip()
    ]
    rows = rows[:limit] if limit else rows
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def run(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    out = Path(cmd[cmd.index("--out") + 1])
    t0 = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out.is_file():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); log {log}:\n{tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


def table(results: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    lines = [
        f"GPU: {results['gpu']}; torch {results['versions']['torch']}, transformers "
        f"{results['versions']['transformers']}, peft {results['versions']['peft']}, deepspeed "
        f"{results['versions']['deepspeed']}; model {results['model']} ({results['params']:,} "
        f"parameters), maxSeqLength {results['max_seq_length']}, batch {results['batch_size']}, "
        f"{results['steps']} steps ({results['warmup']} warm-up).",
        "",
        "| run | tokens/s | MFU | peak GiB | settings |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        s = r["settings"]
        desc = ", ".join(
            f"{k}={v}" for k, v in s.items() if k not in ("batch_size", "max_seq_length")
        )
        lines.append(
            f"| {r['run']} | {r['tokens_per_s']:,.0f} | {mfu} | {r['peak_memory_gib']:.1f} | {desc} |"
        )
    lines += [
        "",
        f"LoRA speed-up: {results['lora']['speedup']:.2f}x; full speed-up: "
        f"{results['full']['speedup']:.2f}x; full MFU (ours): "
        + (f"{results['full']['ours_mfu']:.1%}" if results["full"]["ours_mfu"] else "n/a"),
        "",
        "MFU = tokens/s x (6N + 12*L*H*T) / peak bf16 FLOP/s (PaLM appendix B); N parameters, L "
        "layers, H hidden size, T the attended length (mean packed-row length for ours, mean row "
        "length for the baseline). For LoRA, N is still the whole model (the frozen weights run "
        "forward and backward through activations), which over-states LoRA's work by the skipped "
        "weight gradients (about 1/3 of 6N); LoRA rows are reported as tokens/s first.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", type=Path, default=HERE.parents[2] / "shared" / "datasets" / "alpaca_2000.jsonl"
    )
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ftbench")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, CPU")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="subset of run names")
    ap.add_argument(
        "--extra", nargs="*", default=[], help="extra flags for our full/lora runs, e.g. --liger"
    )
    args = ap.parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(
            f"{args.data}: no such file (pass --data; the shared datasets live beside the checkout)"
        )

    shape = LLAMA_TINY if args.smoke else LLAMA_1B
    steps = args.steps or (6 if args.smoke else 60)
    warmup = args.warmup or (2 if args.smoke else 10)
    bs = args.batch_size or (4 if args.smoke else 8)
    seq = args.max_seq_length or (256 if args.smoke else 2048)
    work = args.work / shape.name
    work.mkdir(parents=True, exist_ok=True)
    data = work / "alpaca_clean.jsonl"
    n_rows = clean_rows(args.data, data, 400 if args.smoke else None)
    model_dir = build_model_dir(shape, load_rows(data), work / "model")

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    py = sys.executable
    common = [
        "--model-dir",
        str(model_dir),
        "--data",
        str(data),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--batch-size",
        str(bs),
        "--max-seq-length",
        str(seq),
    ]
    torchrun = [
        py,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "1",
        "--master-port",
        "29531",
    ]
    plan = {
        "baseline-lora": [py, str(HERE / "baseline.py"), "--method", "lora"],
        "ours-lora": [*torchrun, str(HERE / "ours.py"), "--method", "lora", *args.extra],
        "baseline-full": [py, str(HERE / "baseline.py"), "--method", "full"],
        "ours-full": [*torchrun, str(HERE / "ours.py"), "--method", "full", *args.extra],
        "ours-full-zero2": [
            *torchrun,
            str(HERE / "ours.py"),
            "--method",
            "full",
            "--zero",
            "2",
            *args.extra,
        ],
        "ours-full-zero3": [
            *torchrun,
            str(HERE / "ours.py"),
            "--method",
            "full",
            "--zero",
            "3",
            *args.extra,
        ],
    }
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only}
    runs: dict[str, dict[str, Any]] = {}
    for name, cmd in plan.items():
        print(f"== {name}", flush=True)
        runs[name] = run(
            [*cmd, *common, "--out", str(work / f"{name}.json")], env, work / f"{name}.log"
        )
        print(
            f"   {runs[name]['tokens_per_s']:,.0f} tokens/s, {runs[name]['peak_memory_gib']:.1f} GiB",
            flush=True,
        )

    import deepspeed
    import peft
    import torch
    import transformers

    def tps(name: str) -> float:
        return float(runs[name]["tokens_per_s"]) if name in runs else 0.0

    first = next(iter(runs.values()))
    results: dict[str, Any] = {
        "gpu": first["device"],
        "model": shape.name,
        "params": first["params"],
        "rows": n_rows,
        "steps": steps,
        "warmup": warmup,
        "batch_size": bs,
        "max_seq_length": seq,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "deepspeed": deepspeed.__version__,
        },
        "lora": {
            "baseline_tokens_per_s": tps("baseline-lora"),
            "ours_tokens_per_s": tps("ours-lora"),
        },
        "full": {
            "baseline_tokens_per_s": tps("baseline-full"),
            "ours_tokens_per_s": tps("ours-full"),
            "ours_mfu": runs.get("ours-full", {}).get("mfu"),
            "zero2_tokens_per_s": tps("ours-full-zero2"),
            "zero3_tokens_per_s": tps("ours-full-zero3"),
        },
        "peak_memory_gib": {k: v["peak_memory_gib"] for k, v in runs.items()},
        "runs": runs,
    }
    for part in ("lora", "full"):
        b, o = results[part]["baseline_tokens_per_s"], results[part]["ours_tokens_per_s"]
        results[part]["speedup"] = o / b if b else 0.0
    dest = work if args.smoke else HERE
    (dest / "results.json").write_text(json.dumps(results, indent=2))
    (dest / "results.md").write_text(table(results, list(runs.values())))
    print((dest / "results.md").read_text())
    print(f"wrote {dest / 'results.json'} and {dest / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
