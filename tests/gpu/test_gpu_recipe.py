"""GPU tier: our training recipe on a real CUDA device (the lent H100/H200; never in CI).

Runs the benchmark's own entry points on a tiny model so that the same code paths the benchmark
times (bf16, fused AdamW, packing with per-row position ids, ZeRO-2 through torchrun) are proven to
run on a GPU before anyone trusts their figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device tier)"),
]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "trainer_gpu"


@pytest.fixture(scope="module")
def alpaca(shared_datasets: Path) -> Path:
    return shared_datasets / "alpaca_2000.jsonl"


@pytest.mark.parametrize("only", [["baseline-lora", "ours-lora"], ["ours-full", "ours-full-zero2"]])
def test_bench_runs_on_gpu(alpaca: Path, tmp_path: Path, only: list[str]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--smoke",
            "--data",
            str(alpaca),
            "--work",
            str(tmp_path),
            "--steps",
            "12",
            "--warmup",
            "4",
            "--only",
            *only,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "llama-tiny" / "results.json").read_text())
    assert "cpu" not in results["gpu"].lower()
    for name in only:
        run = results["runs"][name]
        assert run["tokens_per_s"] > 0, run
        assert run["peak_memory_gib"] > 0, run
