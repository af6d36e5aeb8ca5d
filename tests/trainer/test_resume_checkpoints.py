"""Checkpoint bookkeeping in real S3: only _COMPLETE checkpoints count, keepLast pruning stays
inside the run's prefix, and fetching the latest restores the Trainer's folder."""

from __future__ import annotations

from pathlib import Path

from finetune_operator.api import FineTuneJobSpec
from finetune_trainer.checkpoint import (
    checkpoint_uri,
    fetch_latest,
    latest_complete,
    list_checkpoints,
    mark_complete,
    prune,
    upload_checkpoint,
)
from finetune_trainer.config import JobRef, TrainerConfig
from finetune_trainer.storage import Store


def _config(bucket: str, keep_last: int) -> TrainerConfig:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": f"s3://{bucket}/models/x/"},
            "datasets": [{"name": "d", "uri": f"s3://{bucket}/d.jsonl", "format": "text"}],
            "output": {"uri": f"s3://{bucket}/team/job/"},
            "checkpointing": {"everySteps": 10, "keepLast": keep_last},
        }
    )
    return TrainerConfig(
        job=JobRef("job"), run_id="r1", spec=spec, base_model_uri=f"s3://{bucket}/models/x/"
    )


def _save(
    store: Store, config: TrainerConfig, tmp_path: Path, step: int, *, complete: bool
) -> None:
    local = tmp_path / f"checkpoint-{step}"
    (local / f"global_step{step}").mkdir(parents=True)
    (local / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (local / f"global_step{step}" / "shard.pt").write_bytes(bytes([step % 256]) * 1000)
    uri = checkpoint_uri(config.checkpoints_uri, step)
    upload_checkpoint(store, local, uri)
    if complete:
        mark_complete(store, uri, step, world_size=2)


def test_incomplete_checkpoints_are_ignored_and_pruning_keeps_last(
    s3_store: Store, s3_bucket: str, tmp_path: Path
) -> None:
    config = _config(s3_bucket, keep_last=2)
    neighbour = f"s3://{s3_bucket}/team/job/runs/other-run/checkpoints/step-10/_COMPLETE"
    s3_store.write_bytes(neighbour, b"{}")  # another run's checkpoint: never touched
    assert latest_complete(s3_store, config.checkpoints_uri) is None
    for step, complete in ((10, True), (20, True), (30, True), (40, False)):
        _save(s3_store, config, tmp_path, step, complete=complete)
    latest = latest_complete(s3_store, config.checkpoints_uri)
    assert (
        latest is not None and latest.step == 30
    )  # step 40 was never completed (killed mid-upload)

    assert prune(s3_store, config) == [10]
    assert [(c.step, c.complete) for c in list_checkpoints(s3_store, config.checkpoints_uri)] == [
        (20, True),
        (30, True),
        (40, False),
    ]
    assert s3_store.exists(neighbour)

    restored = fetch_latest(s3_store, config, tmp_path / "resume")
    assert restored == tmp_path / "resume" / "checkpoint-30"
    assert (restored / "global_step30" / "shard.pt").read_bytes() == bytes([30]) * 1000
    assert not (restored / "_COMPLETE").exists()


def test_nothing_to_resume_from(s3_store: Store, s3_bucket: str, tmp_path: Path) -> None:
    assert fetch_latest(s3_store, _config(s3_bucket, keep_last=1), tmp_path) is None
