"""``python -m finetune_trainer pull``: fetch a published run for another server (vLLM).

Why it exists: the vLLM engine cannot read S3 or our run layout, so the operator puts an init
container (this image) in front of it that lays the run out on a shared emptyDir:

    <dest>/base/     the base model (finetune.json baseModelUri), when the run has an adapter
    <dest>/adapter/  the LoRA/QLoRA adapter, served with --enable-lora --lora-modules
    <dest>/model/    the merged or fully fine-tuned model, when there is no adapter
    <dest>/run/      the run's top-level files (finetune.json, tokenizer files, labels.json)

Only a complete run (``_SUCCESS`` and every manifest file present) is pulled. Exit codes: 0 done,
65 the run is incomplete or malformed (fix the run URI; retrying cannot help), 1 a storage error
(the kubelet retries the init container).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from finetune_trainer.config import EXIT_BAD_INPUT, EXIT_OK
from finetune_trainer.storage import StorageError, join_uri, open_store

__all__ = ["cli", "pull_run"]


def _descriptor(store: Any, run_uri: str) -> dict[str, Any]:
    raw = store.read_bytes(join_uri(run_uri, "finetune.json"))
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{join_uri(run_uri, 'finetune.json')}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{join_uri(run_uri, 'finetune.json')}: expected a JSON object")
    return doc


def pull_run(run_uri: str, dest: Path, *, s3_endpoint: str | None = None) -> dict[str, str]:
    """Lay the run out under ``dest``; returns {role: local directory} of what was written.

    Raises ValueError for a run that is incomplete or malformed, StorageError for transfers.
    """
    store = open_store(endpoint_url=s3_endpoint)
    run_uri = run_uri if run_uri.endswith("/") else run_uri + "/"
    if not store.is_complete(run_uri):
        raise ValueError(
            f"{run_uri} is not a complete run (_SUCCESS or a manifest file missing); "
            "point --run at status.artifacts.uri of a succeeded FineTuneJob"
        )
    desc = _descriptor(store, run_uri)
    out: dict[str, str] = {}
    run_dir = dest / "run"
    for obj in store.list(run_uri):
        if "/" not in obj.key:  # top level only: not adapter/, merged/, checkpoints/
            store.download(obj.uri, run_dir)
    out["run"] = str(run_dir)
    adapter, merged = desc.get("adapter"), desc.get("merged")
    if adapter:
        base = desc.get("baseModelUri")
        if not isinstance(base, str) or not base:
            raise ValueError(f"{run_uri}finetune.json: an adapter run needs baseModelUri")
        store.download(base, dest / "base")
        store.download(join_uri(run_uri, str(adapter)), dest / "adapter")
        out["base"], out["adapter"] = str(dest / "base"), str(dest / "adapter")
    elif merged:
        store.download(join_uri(run_uri, str(merged)), dest / "model")
        out["model"] = str(dest / "model")
    else:
        raise ValueError(f"{run_uri}finetune.json names neither an adapter nor a merged model")
    return out


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m finetune_trainer pull",
        description="Fetch a published run (base + adapter, or the merged model) for a server.",
    )
    p.add_argument("--run", required=True, help="run URI: s3://.../runs/<runId>/ or a directory")
    p.add_argument("--dest", required=True, help="directory to lay the run out in")
    p.add_argument(
        "--s3-endpoint",
        default=os.environ.get("FINETUNE_S3_ENDPOINT") or None,
        help="S3-compatible endpoint URL (default: AWS, or $AWS_ENDPOINT_URL)",
    )
    args = p.parse_args(argv)
    try:
        out = pull_run(args.run, Path(args.dest), s3_endpoint=args.s3_endpoint)
    except ValueError as exc:
        print(f"pull: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StorageError as exc:
        print(f"pull: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, sort_keys=True), flush=True)
    return EXIT_OK
