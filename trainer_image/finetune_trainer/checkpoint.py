"""Checkpoints in object storage: find the latest complete one, fetch it, publish new ones, prune.

Why it exists: a FineTuneJob's pods are disposable (preemption, node loss, suspend), so every
``spec.checkpointing.everySteps`` the Trainer's checkpoint folder goes to
``<run_uri>/checkpoints/step-N/`` and a restarted gang resumes from the newest one. The rules:

- A checkpoint counts only once ``step-N/_COMPLETE`` exists; it is written last, after every
  node uploaded its files, so a pod killed mid-upload leaves a checkpoint that is ignored.
- Pruning keeps the newest ``keepLast`` complete checkpoints and removes older ones (complete or
  not), and only ever deletes inside the run's own prefix (``Store.delete_prefix(within=...)``).

No torch here: launch uses it before torchrun starts; the Trainer callback lives in callbacks.py.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer.config import TrainerConfig
from finetune_trainer.storage import Store, join_uri

__all__ = [
    "COMPLETE_MARKER",
    "RemoteCheckpoint",
    "checkpoint_uri",
    "fetch_latest",
    "latest_complete",
    "list_checkpoints",
    "mark_complete",
    "prune",
    "upload_checkpoint",
]

COMPLETE_MARKER = "_COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)/(.+)$")


@dataclass(frozen=True)
class RemoteCheckpoint:
    """One checkpoint folder in storage."""

    step: int
    uri: str
    complete: bool


def checkpoint_uri(checkpoints_uri: str, step: int) -> str:
    """``<run_uri>/checkpoints/step-N/``."""
    base = checkpoints_uri if checkpoints_uri.endswith("/") else checkpoints_uri + "/"
    return f"{base}step-{step}/"


def list_checkpoints(store: Store, checkpoints_uri: str) -> list[RemoteCheckpoint]:
    """Every step-N folder under the prefix, oldest first, each marked complete or not."""
    steps: dict[int, bool] = {}
    for obj in store.list(checkpoints_uri):
        match = _STEP_DIR.match(obj.key)
        if match is None:
            continue
        step = int(match.group(1))
        steps[step] = steps.get(step, False) or match.group(2) == COMPLETE_MARKER
    return [
        RemoteCheckpoint(step, checkpoint_uri(checkpoints_uri, step), done)
        for step, done in sorted(steps.items())
    ]


def latest_complete(store: Store, checkpoints_uri: str) -> RemoteCheckpoint | None:
    """The newest checkpoint whose ``_COMPLETE`` marker exists, or None."""
    done = [c for c in list_checkpoints(store, checkpoints_uri) if c.complete]
    return done[-1] if done else None


def fetch_latest(store: Store, config: TrainerConfig, dest_root: str | Path) -> Path | None:
    """Download the latest complete checkpoint to ``dest_root/checkpoint-N``; None when none."""
    latest = latest_complete(store, config.checkpoints_uri)
    if latest is None:
        return None
    dest = Path(dest_root) / f"checkpoint-{latest.step}"
    store.download(latest.uri, dest)
    (dest / COMPLETE_MARKER).unlink(missing_ok=True)
    return dest


def upload_checkpoint(store: Store, local_dir: str | Path, uri: str) -> int:
    """Upload one node's files of a checkpoint folder; returns the byte count."""
    return sum(o.size for o in store.upload(Path(local_dir), uri))


def mark_complete(store: Store, uri: str, step: int, *, world_size: int) -> None:
    """Write ``_COMPLETE`` (last, after every node's upload)."""
    doc = {
        "step": step,
        "worldSize": world_size,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.write_bytes(join_uri(uri, COMPLETE_MARKER), json.dumps(doc, sort_keys=True).encode())


def prune(store: Store, config: TrainerConfig) -> list[int]:
    """Delete checkpoints older than the newest ``keepLast`` complete ones; returns their steps."""
    keep = config.spec.checkpointing.keep_last
    all_ckpts = list_checkpoints(store, config.checkpoints_uri)
    complete = [c for c in all_ckpts if c.complete]
    if len(complete) <= keep:
        return []
    oldest_kept = complete[-keep].step
    doomed = [c for c in all_ckpts if c.step < oldest_kept]
    for c in doomed:
        store.delete_prefix(c.uri, within=config.checkpoints_uri)
    return [c.step for c in doomed]
