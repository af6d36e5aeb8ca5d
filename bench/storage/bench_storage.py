"""Transfer throughput of finetune_trainer.storage against a real S3 HTTP server (moto, loopback).

Why it exists: the transfer settings in ``TransferSettings`` (concurrency, part size) were chosen
from these numbers; rerun it after changing them. It uploads and downloads a model-shaped tree
(a few large shards plus many small files, 200 MB by default) and reports MB/s, median of N runs:

  baseline   boto3's ``upload_file``/``download_file`` one file after another, default config
  store(...) ``Store.upload``/``Store.download``: one transfer manager for all files, in parallel

  .venv/bin/python bench/storage/bench_storage.py [--mb 200] [--runs 3] [--out results.json]

The server runs as a separate process (``moto_server``), so client and server do not share a GIL.
moto keeps objects in memory and computes MD5s in Python: absolute numbers are far below a real
S3/MinIO; the comparison between settings is what matters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from finetune_trainer.storage import MiB, Store, TransferSettings


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def make_tree(root: Path, total_mb: int) -> int:
    """4 large shards (80% of the bytes) and 40 small files (20%), like a model directory."""
    root.mkdir(parents=True)
    big = total_mb * MiB * 8 // 10 // 4
    small = total_mb * MiB * 2 // 10 // 40
    block = os.urandom(MiB)
    for i in range(4):
        with (root / f"model-{i:05d}.safetensors").open("wb") as f:
            for _ in range(big // MiB):
                f.write(block)
            f.write(os.urandom(big % MiB))
    for i in range(40):
        (root / "extra" / f"f{i:03d}.bin").parent.mkdir(exist_ok=True)
        (root / "extra" / f"f{i:03d}.bin").write_bytes(os.urandom(small))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def baseline(store: Store, src: Path, uri: str, dest: Path) -> tuple[float, float]:
    """Plain boto3: one managed transfer per file, sequentially, default TransferConfig."""
    client = store.client
    bucket, prefix = uri[5:].split("/", 1)
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    t0 = time.perf_counter()
    for f in files:
        client.upload_file(str(f), bucket, prefix + f.relative_to(src).as_posix())
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in files:
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, prefix + f.relative_to(src).as_posix(), str(target))
    return up, time.perf_counter() - t0


def tuned(store: Store, src: Path, uri: str, dest: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    store.upload(src, uri)
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.download(uri, dest)
    return up, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_REGION", "us-east-1")
    proc, url = start_moto()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        total = make_tree(work / "src", args.mb)
        configs: list[tuple[str, TransferSettings | None]] = [("baseline (boto3 per file)", None)]
        for conc, chunk in ((4, 8), (10, 8), (16, 8), (16, 16), (16, 32), (32, 16)):
            name = f"store conc={conc} chunk={chunk}MiB"
            configs.append(
                (
                    name,
                    TransferSettings(
                        max_concurrency=conc,
                        multipart_chunksize=chunk * MiB,
                        multipart_threshold=chunk * MiB,
                    ),
                )
            )
        results: list[dict[str, Any]] = []
        for n, (name, settings) in enumerate(configs):
            ups, downs = [], []
            for r in range(args.runs):
                store = Store(endpoint_url=url, settings=settings or TransferSettings())
                bucket = f"bench-{n}-{r}"
                store.client.create_bucket(Bucket=bucket)
                dest = work / f"dst-{n}-{r}"
                fn = baseline if settings is None else tuned
                up, down = fn(store, work / "src", f"s3://{bucket}/m/", dest)
                ups.append(total / MiB / up)
                downs.append(total / MiB / down)
                shutil.rmtree(dest)
                store.delete_prefix(f"s3://{bucket}/m/", within=f"s3://{bucket}/m/")
            row = {
                "config": name,
                "upload_MBps_median": round(statistics.median(ups), 1),
                "download_MBps_median": round(statistics.median(downs), 1),
                "upload_runs": [round(x, 1) for x in ups],
                "download_runs": [round(x, 1) for x in downs],
            }
            results.append(row)
            print(
                f"{name:32s} up {row['upload_MBps_median']:7.1f} MB/s  "
                f"down {row['download_MBps_median']:7.1f} MB/s  (median of {args.runs})",
                flush=True,
            )
        doc = {
            "total_MiB": round(total / MiB, 1),
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "results": results,
        }
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=2))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
