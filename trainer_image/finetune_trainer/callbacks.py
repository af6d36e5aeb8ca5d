"""Trainer callbacks of the recipe: publish checkpoints, stop cleanly on SIGTERM, report progress.

Why it exists: these are the places where a FineTuneJob differs from a plain ``Trainer.train()``,
and each one has a distributed-systems subtlety worth keeping out of train.py:

- ``CheckpointPublisher``: after the Trainer saved ``checkpoint-N`` on every node, each node's
  local rank 0 uploads its node's files to ``step-N/``; after a barrier, global rank 0 writes
  ``_COMPLETE`` and prunes. A half-uploaded checkpoint therefore never looks complete.
- ``StopOnSignal``: SIGTERM only sets a flag. At each step end the ranks agree (all-reduce MAX)
  on whether any of them was signalled, so they all save the same step and stop together (ranks
  signalled a few milliseconds apart would otherwise deadlock in the checkpoint's collectives).
- ``ProgressReporter`` (rank 0): step, loss, learning rate, tokens/s, ETA, MFU, GPU memory to the
  ProgressLog that the launcher's Reporter follows.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.checkpoint import checkpoint_uri, mark_complete, prune, upload_checkpoint
from finetune_trainer.config import TrainerConfig
from finetune_trainer.report import ProgressLog, peak_flops_for
from finetune_trainer.storage import COUNTERS, Store

__all__ = ["CheckpointPublisher", "ProgressReporter", "StopOnSignal"]

log = logging.getLogger(__name__)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointPublisher(TrainerCallback):
    """Uploads each saved checkpoint to ``<run_uri>/checkpoints/step-N/`` and marks it complete."""

    def __init__(self, config: TrainerConfig, store: Store, progress: ProgressLog) -> None:
        self.config = config
        self.store = store
        self.progress = progress
        self.published: list[int] = []

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        step = state.global_step
        local = Path(args.output_dir or ".") / f"checkpoint-{step}"
        uri = checkpoint_uri(self.config.checkpoints_uri, step)
        _barrier()  # every rank of this node finished writing its shard files
        if state.is_local_process_zero and local.is_dir():
            started = time.monotonic()
            size = upload_checkpoint(self.store, local, uri)
            log.info(
                "checkpoint step %d: %d bytes to %s in %.1fs",
                step,
                size,
                uri,
                time.monotonic() - started,
            )
        _barrier()  # every node uploaded
        if state.is_world_process_zero:
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            mark_complete(self.store, uri, step, world_size=world)
            pruned = prune(self.store, self.config)
            if pruned:
                log.info(
                    "pruned checkpoints at steps %s (keepLast=%d)",
                    pruned,
                    self.config.spec.checkpointing.keep_last,
                )
            self.progress.emit("checkpoint", step=step, uri=uri)
        self.published.append(step)


class StopOnSignal(TrainerCallback):
    """SIGTERM → every rank saves a checkpoint at the same step and training stops."""

    def __init__(self) -> None:
        self.requested = False  # this process received SIGTERM
        self.stopped_at: int | None = None  # step all ranks agreed to stop at
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting")
        self.requested = True

    def _any_rank_requested(self, args: TrainingArguments) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._any_rank_requested(args):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True


class ProgressReporter(TrainerCallback):
    """Rank 0: per-step progress events (and a human-readable log line per logging step)."""

    def __init__(self, progress: ProgressLog, *, n_params: int) -> None:
        self.progress = progress
        self.n_params = n_params
        self.t0 = 0.0
        self.step0 = 0
        self.tokens0 = 0.0
        self.peak = None
        if torch.cuda.is_available():
            self.peak = peak_flops_for(torch.cuda.get_device_name(0))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.t0 = time.monotonic()
        self.step0 = state.global_step
        self.tokens0 = float(state.num_input_tokens_seen or 0)
        if state.is_world_process_zero:
            self.progress.emit("train_begin", step=state.global_step, total_steps=state.max_steps)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        steps = state.global_step - self.step0
        tokens = float(state.num_input_tokens_seen or 0) - self.tokens0
        fields: dict[str, Any] = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": float(state.epoch or 0.0),
            "tokens_seen": float(state.num_input_tokens_seen or 0),
            "tokens_per_second": tokens / elapsed,
            "samples_per_second": steps
            * args.train_batch_size
            * args.gradient_accumulation_steps
            * args.world_size
            / elapsed,
            "eta_seconds": (state.max_steps - state.global_step) * elapsed / max(steps, 1),
        }
        if self.peak:
            world = args.world_size
            fields["mfu"] = 6.0 * self.n_params * fields["tokens_per_second"] / (self.peak * world)
        if torch.cuda.is_available():
            fields["gpu_memory_bytes"] = float(torch.cuda.max_memory_allocated())
            with contextlib.suppress(Exception):  # needs pynvml; optional
                fields["gpu_utilization"] = torch.cuda.utilization() / 100.0
        transfers = COUNTERS.snapshot()  # this process's checkpoint uploads
        fields["worker_bytes_pulled"] = transfers["bytes_pulled"]
        fields["worker_bytes_pushed"] = transfers["bytes_pushed"]
        self.progress.emit("step", **fields)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        fields = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
        if "eval_loss" in fields or "loss" in fields:
            self.progress.emit("log", step=state.global_step, **fields)
            shown = " ".join(f"{k}={v:.5g}" for k, v in sorted(fields.items()))
            print(
                f"[finetune-train] step {state.global_step}/{state.max_steps} {shown}", flush=True
            )
