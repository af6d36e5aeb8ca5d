"""What a training pod (or one local "node" of ``finetune run``) runs: ``finetune_trainer launch``.

Why it exists: a FineTuneJob pod has a lifecycle around the torchrun workers, and this process owns
it from the first byte pulled to the last byte pushed (ARCHITECTURE.md §4):

1. read the TrainerConfig (``--config``, else $FINETUNE_CONFIG, else /etc/finetune/config.json)
2. pulling: the base model and every data file into the work dir (local paths are used in place);
   the latest complete checkpoint, if any (automatic resume)
3. validating: every row of every dataset, BEFORE any training; bad data → the problems on stderr,
   in the status and the termination message, exit 65 (the Job fails at once, no retries)
4. training: ``torchrun --nnodes $NNODES --node-rank $NODE_RANK --nproc-per-node $NPROC_PER_NODE
   --master-addr $MASTER_ADDR --master-port $MASTER_PORT -m finetune_trainer train ...``;
   SIGTERM is forwarded (the workers checkpoint, then this exits 75 so the gang is restarted and
   resumes); progress events of rank 0 feed the Reporter (Prometheus, status, status file)
5. on node 0 only: evaluating (rank-0 work, one process), uploading (artifacts.py), done.

Exit codes (config.py): 0 done, 65 bad data/config, 75 retriable (SIGTERM/preemption), 1 other
failures (the Job's backoffLimit decides).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from finetune_trainer.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_RETRIABLE,
    TrainerConfig,
    spec_hash,
)

__all__ = ["EXIT_FAILED", "NodeEnv", "cli", "torchrun_command"]

log = logging.getLogger("finetune_trainer.launch")

EXIT_FAILED = 1
SHUTDOWN_TIMEOUT_ENV = "FINETUNE_SHUTDOWN_TIMEOUT"  # seconds torchrun waits for workers on SIGTERM


class Terminated(Exception):
    """SIGTERM arrived before or between the workers' lifetime."""


class BadInput(Exception):
    """Bad data or configuration: retrying cannot help (exit 65)."""

    def __init__(self, reason: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.problems = problems or []


@dataclass(frozen=True)
class NodeEnv:
    """This node's place in the gang, from the environment the operator (or local runner) sets."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @classmethod
    def from_env(cls, config: TrainerConfig, env: dict[str, str] | None = None) -> NodeEnv:
        e = dict(os.environ if env is None else env)
        dist = config.spec.distributed
        default_nproc = dist.processes_per_node or max(1, dist.gpus_per_node)
        try:
            return cls(
                nnodes=int(e.get("NNODES", dist.nodes)),
                node_rank=int(e.get("NODE_RANK", e.get("JOB_COMPLETION_INDEX", "0"))),
                nproc_per_node=int(e.get("NPROC_PER_NODE", default_nproc)),
                master_addr=e.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(e.get("MASTER_PORT", "29500")),
            )
        except ValueError as exc:
            raise BadInput(
                "BadEnvironment",
                f"NNODES/NODE_RANK/NPROC_PER_NODE/MASTER_PORT must be integers: {exc}",
            ) from exc


def torchrun_command(node: NodeEnv, config_path: str, inputs_path: str) -> list[str]:
    """The torchrun command line for this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(node.nnodes),
        "--node-rank",
        str(node.node_rank),
        "--nproc-per-node",
        str(node.nproc_per_node),
        "--master-addr",
        node.master_addr,
        "--master-port",
        str(node.master_port),
        "--shutdown-timeout",
        os.environ.get(SHUTDOWN_TIMEOUT_ENV, "120"),
        "-m",
        "finetune_trainer",
        "train",
        "--config",
        config_path,
        "--inputs",
        inputs_path,
    ]


class _Signals:
    """SIGTERM/SIGINT: remember it, forward it to the workers, or abort the current stage."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.child: subprocess.Popen[bytes] | None = None
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if self.child is not None and self.child.poll() is None:
            if first:
                log.warning("signal %d: asking the workers to checkpoint and stop", signum)
                self.child.send_signal(signal.SIGTERM)
            return
        raise Terminated(f"signal {signum}")


# ------------------------------------------------------------------------------ stages


def _local(uri: str) -> bool:
    return not uri.startswith("s3://")


def _pull(store: Any, uri: str, dest: Path) -> Path:
    """A file or prefix, locally: local paths in place, s3:// downloaded under dest."""
    if _local(uri):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise BadInput("InputNotFound", f"{uri} does not exist: check the path")
        return path
    objects = store.download(uri, dest)
    name = PurePosixPath(uri).name
    if len(objects) == 1 and not uri.endswith("/") and objects[0].key == name:
        return dest / name
    return dest


def _pull_inputs(
    config: TrainerConfig, store: Any, work: Path, reporter: Any
) -> tuple[Path, dict[str, Path]]:
    spec = config.spec
    reporter.stage("pulling")
    started = time.monotonic()
    base_dir = _pull(store, config.base_model_uri, work / "base")
    files: dict[str, Path] = {}
    for i, ds in enumerate(spec.datasets):
        files[f"dataset:{ds.name}"] = _pull(store, ds.uri, work / "data" / f"dataset-{i}")
    if spec.validation is not None and spec.validation.uri:
        files["validation"] = _pull(store, spec.validation.uri, work / "data" / "validation")
    for i, eds in enumerate(spec.evaluation.datasets):
        files[f"eval:{i}"] = _pull(store, eds.uri, work / "data" / f"eval-{i}")
    log.info(
        "pulled base model and %d data inputs in %.1fs", len(files), time.monotonic() - started
    )
    return base_dir, files


def _lineage(config: TrainerConfig, store: Any) -> dict[str, Any]:
    spec = config.spec
    uris = [ds.uri for ds in spec.datasets]
    if spec.validation is not None and spec.validation.uri:
        uris.append(spec.validation.uri)
    uris += [e.uri for e in spec.evaluation.datasets]
    return {
        "runId": config.run_id,
        "baseModelUri": config.base_model_uri,
        "baseModelETag": store.etag(config.base_model_uri),
        "datasetETags": [{"uri": u, "etag": store.etag(u)} for u in uris],
        "specHash": spec_hash(spec),
        "image": config.image or None,
    }


def _validate(config: TrainerConfig, files: dict[str, Path], reporter: Any) -> None:
    from finetune_trainer.data import DataValidationError, validate_data
    from finetune_trainer.deepspeed import DeepSpeedConfigError, resolve_deepspeed_config
    from finetune_trainer.modeling import ConfigurationError, check_method_supported

    reporter.stage("validating")
    try:
        check_method_supported(config)
        resolve_deepspeed_config(config.spec.distributed.deepspeed)
    except (ConfigurationError, DeepSpeedConfigError) as exc:
        raise BadInput("InvalidConfiguration", str(exc)) from exc
    try:
        report = validate_data(config, files)
    except DataValidationError as exc:
        raise BadInput("DataValidationFailed", str(exc), list(exc.problems)) from exc
    log.info("data: %s", report.summary())
    for warning in report.warnings:
        log.warning("data: %s", warning)


def _train(
    config: TrainerConfig,
    config_path: str,
    node: NodeEnv,
    work: Path,
    base_dir: Path,
    files: dict[str, Path],
    resume: Path | None,
    reporter: Any,
    signals: _Signals,
) -> dict[str, Any]:
    import torch

    reporter.stage("training")
    progress = work / "progress.jsonl"
    progress.unlink(missing_ok=True)
    result = work / "train_result.json"
    result.unlink(missing_ok=True)
    inputs = {
        "base_model_dir": str(base_dir),
        "files": {k: str(v) for k, v in files.items()},
        "resume_from": str(resume) if resume else None,
        "output_dir": str(work / "checkpoints"),
        "final_dir": str(work / "final"),
        "progress_log": str(progress),
        "result": str(result),
    }
    inputs_path = work / "inputs.json"
    inputs_path.write_text(json.dumps(inputs, indent=2))
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = torchrun_command(node, config_path, str(inputs_path))
    log.info("starting: %s", " ".join(cmd))
    reporter.follow(progress)
    signals.child = subprocess.Popen(cmd, env=env)
    try:
        rc = signals.child.wait()
    finally:
        reporter.stop_following()
    signals.child = None
    doc: dict[str, Any] = json.loads(result.read_text()) if result.is_file() else {}
    doc["returncode"] = rc
    return doc


def _evaluate_and_publish(
    config: TrainerConfig,
    store: Any,
    work: Path,
    base_dir: Path,
    files: dict[str, Path],
    trained: dict[str, Any],
    reporter: Any,
    lineage: dict[str, Any],
) -> None:
    from finetune_trainer import artifacts, modeling
    from finetune_trainer.data import prepare_data
    from finetune_trainer.evaluate import evaluate_baseline, evaluate_detailed, metric_deltas

    final_dir = work / "final"
    reporter.stage("evaluating")
    tokenizer = modeling.load_tokenizer(final_dir)
    data = prepare_data(config, tokenizer, files)
    model = modeling.load_finetuned_model(config, base_dir, final_dir, labels=data.labels)
    evaluation: dict[str, Any] = {}
    if data.test is not None and len(data.test) > 0:
        detailed = evaluate_detailed(model, tokenizer, config, data)
        evaluation = detailed.to_json()
        evaluation["results"] = detailed.metrics
        baseline_spec = config.spec.evaluation.baseline
        baseline: dict[str, float] = {}
        if baseline_spec is not None and baseline_spec.enabled:
            baseline = evaluate_baseline(config, base_dir, modeling.load_tokenizer(base_dir), data)
            evaluation["baseline"] = baseline
            evaluation["deltas"] = metric_deltas(detailed.metrics, baseline)
        reporter.evaluation(detailed.metrics, baseline or None)
        log.info("evaluation: %s", json.dumps(detailed.metrics, sort_keys=True))
    else:
        log.warning("no validation or evaluation data: skipping evaluation")

    reporter.stage("uploading")
    merged = None
    if config.spec.method.type != "full" and config.spec.output.merge_adapter:
        merged = _merged_model(config, base_dir, final_dir, data.labels)
    train_summary = {k: trained.get(k) for k in ("globalStep", "trainLoss", "tokensSeen")}
    metrics = {"train": train_summary, "evaluation": evaluation}
    out_dir = work / "run"
    has_adapter, has_merged = artifacts.assemble_run(
        config,
        out_dir,
        final_dir=final_dir,
        merged_model=merged,
        tokenizer=tokenizer,
        labels=data.labels,
        metrics=metrics,
        lineage=lineage,
    )
    published = artifacts.publish_run(
        store, config, out_dir, has_adapter=has_adapter, has_merged=has_merged
    )
    reporter.artifacts(
        uri=published.uri,
        adapterUri=published.adapter_uri,
        mergedUri=published.merged_uri,
        manifestUri=published.manifest_uri,
    )


def _merged_model(
    config: TrainerConfig, base_dir: Path, final_dir: Path, labels: list[str] | None
) -> Any:
    """Base + adapter merged into plain weights (the base reloaded unquantised for QLoRA)."""
    import torch
    from peft import PeftModel

    from finetune_trainer import modeling

    cls = modeling._auto_class(config.spec.task)
    kwargs: dict[str, Any] = {
        "dtype": torch.float32 if not modeling.cuda_available() else torch.bfloat16
    }
    if labels:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={x: i for i, x in enumerate(labels)},
        )
    base = cls.from_pretrained(str(base_dir), **kwargs)
    return PeftModel.from_pretrained(base, str(final_dir)).merge_and_unload()


# ------------------------------------------------------------------------------ entry point


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="finetune_trainer launch", description="Run one node of a FineTuneJob."
    )
    parser.add_argument(
        "--config",
        default=None,
        help=f"TrainerConfig JSON (default ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    return parser.parse_args(list(argv))


def cli(argv: Sequence[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse(argv)
    config_path = args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    try:
        config = TrainerConfig.load(config_path)
    except Exception as exc:
        print(
            f"finetune-trainer: cannot read the trainer config {config_path}: {exc}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    signals = _Signals()
    from finetune_trainer.report import Reporter

    node = NodeEnv.from_env(config)
    reporter = Reporter(config, enabled=node.node_rank == 0)
    try:
        rc = _run(config, str(Path(config_path).resolve()), node, reporter, signals)
    except Terminated:
        log.warning("terminated before training finished; exiting %d (retriable)", EXIT_RETRIABLE)
        rc = EXIT_RETRIABLE
        reporter.finish()
    except BadInput as exc:
        print(f"finetune-trainer: {exc}", file=sys.stderr)
        reporter.finish(
            error={
                "reason": exc.reason,
                "message": str(exc).split("\n")[0],
                "problems": exc.problems,
            }
        )
        return EXIT_BAD_INPUT
    except Exception as exc:
        from finetune_trainer.storage import StorageError

        log.exception("run failed")
        reason = "StorageError" if isinstance(exc, StorageError) else "TrainerError"
        reporter.finish(error={"reason": reason, "message": str(exc)[:1000]})
        return EXIT_FAILED
    return rc


def _run(
    config: TrainerConfig, config_path: str, node: NodeEnv, reporter: Any, signals: _Signals
) -> int:
    from finetune_trainer.checkpoint import fetch_latest
    from finetune_trainer.storage import COUNTERS, open_store

    work = Path(config.work_dir)
    if node.nnodes > 1:
        work = work / f"node-{node.node_rank}"  # nodes sharing a filesystem must not collide
    work.mkdir(parents=True, exist_ok=True)
    store = open_store(config.spec.storage)
    if store.is_complete(config.run_uri):
        log.info("run %s is already complete at %s: nothing to do", config.run_id, config.run_uri)
        reporter.stage("done")
        reporter.finish()
        return EXIT_OK
    base_dir, files = _pull_inputs(config, store, work, reporter)
    resume = fetch_latest(store, config, work / "resume")
    if resume is not None:
        log.info("resuming from the latest complete checkpoint: %s", resume.name)
        reporter.checkpoint(int(resume.name.split("-")[-1]), _resume_uri(config, resume))
    lineage = _lineage(config, store)
    reporter.lineage(**lineage)
    _validate(config, files, reporter)
    reporter.transfers(**_counters(COUNTERS))
    if signals.received is not None:
        raise Terminated("signal before training")
    trained = _train(config, config_path, node, work, base_dir, files, resume, reporter, signals)
    reporter.transfers(**_counters(COUNTERS))
    if signals.received is not None:
        step = trained.get("checkpointStep")
        log.warning(
            "stopped by signal; checkpoint at step %s; exiting %d (retriable)", step, EXIT_RETRIABLE
        )
        reporter.finish()
        return EXIT_RETRIABLE
    if trained.get("exit") == EXIT_BAD_INPUT:
        raise BadInput("InvalidConfiguration", str(trained.get("error", "bad input")))
    if trained["returncode"] != 0:
        raise RuntimeError(
            f"training failed: torchrun exited {trained['returncode']} (see the worker logs above)"
        )
    if node.node_rank != 0:
        reporter.finish()
        return EXIT_OK
    _evaluate_and_publish(config, store, work, base_dir, files, trained, reporter, lineage)
    reporter.transfers(**_counters(COUNTERS))
    reporter.stage("done")
    reporter.finish()
    return EXIT_OK


def _resume_uri(config: TrainerConfig, resume: Path) -> str:
    from finetune_trainer.checkpoint import checkpoint_uri

    return checkpoint_uri(config.checkpoints_uri, int(resume.name.split("-")[-1]))


def _counters(counters: Any) -> dict[str, int]:
    snap = counters.snapshot()
    return {"pulled": snap["bytes_pulled"], "pushed": snap["bytes_pushed"]}
