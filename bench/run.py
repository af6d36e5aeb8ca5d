"""`make bench`: run the benchmarks that need no GPU, one after another, and say where results go.

Why it exists: each part keeps its own benchmark beside its README table (bench/<part>/); this
script is the one entry point. The GPU trainer benchmark needs the lent H100/H200 and is only
smoke-tested here (``--smoke``): its real command is printed at the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"

RUNS: list[tuple[str, list[str], bool]] = [
    # (name, argv after the interpreter, needs ../shared/datasets)
    ("operator reconcile", [str(HERE / "operator" / "reconcile_bench.py")], False),
    (
        "storage transfers",
        [str(HERE / "storage" / "bench_storage.py"), "--mb", "200", "--runs", "3"],
        False,
    ),
    ("data stage", [str(HERE / "data" / "bench_data.py"), "--runs", "3"], True),
    ("serving rollout", [str(HERE / "serving" / "rollout_bench.py")], False),
    (
        "trainer (CPU smoke of the GPU benchmark)",
        [str(HERE / "trainer_gpu" / "run.py"), "--smoke"],
        True,
    ),
]


def main() -> int:
    failed = []
    for name, argv, needs_shared in RUNS:
        print(f"\n=== {name}", flush=True)
        if needs_shared and not SHARED.is_dir():
            print(f"skipped: {SHARED} not found (the shared datasets live beside the checkout)")
            continue
        if subprocess.run([sys.executable, *argv]).returncode != 0:
            failed.append(name)
    print(
        "\nGPU trainer benchmark (on the lent H100/H200): "
        "python bench/trainer_gpu/run.py --data ../shared/datasets/alpaca_2000.jsonl"
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
