"""``finetune run FILE.yaml``: a whole FineTuneJob on this machine, no cluster.

Why it exists: the main job must run on a laptop with the same trainer code the pods run. The
runner plays the operator's part and nothing more: it validates the manifest (local rules: paths
allowed), picks the storage (``local_s3``: the embedded S3 on loopback, or the configured S3),
optionally puts the demo inputs in place (``--demo``, ``local_demo``) or uploads ``--seed`` files,
writes the trainer config (runId ``<name>-<spec_hash[:8]>``, stable, so a re-run resumes from the
last checkpoint), starts one ``launch`` process per node (``local_procs``), follows the trainer's
status file to draw progress (``local_ui``), applies the evaluation gate, writes the status the
operator would have written (``--status-out``, built by ``local_status``), and optionally serves
the result.

    finetune run examples/quickstart.yaml --demo          # what `make demo` runs
    finetune run job.yaml --status-out status.json --serve

Exit codes: 0 done; 2 bad manifest or arguments; 65 bad data; 130 interrupted (checkpoint kept,
run the same command again to resume); 1 anything else. Work files live in ``--workdir`` (default
``.work``): ``s3/`` (the embedded S3's objects) and ``jobs/<runId>/`` (config, logs, scratch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from finetune_operator.api import FineTuneJob, FineTuneJobSpec
from finetune_operator.local_s3 import (
    StorageProblem,
    check_reachable,
    decide_storage,
    free_port,
    is_s3,
    job_uris,
    parse_seed,
)
from finetune_operator.local_status import Outcome, build_status, phase_of_stage
from finetune_operator.local_ui import RunUI, format_duration

__all__ = ["EXIT_BAD_DATA", "EXIT_BAD_MANIFEST", "EXIT_INTERRUPTED", "LocalRunError", "cli", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_MANIFEST = 2
EXIT_BAD_DATA = 65  # the trainer's EXIT_BAD_INPUT
EXIT_RETRIABLE = 75  # the trainer's EXIT_RETRIABLE
EXIT_INTERRUPTED = 130
POLL_SECONDS = 0.5
LOCAL = {"local": True}  # validation context: the local rules (paths allowed besides s3://)


class LocalRunError(Exception):
    """A failure to report as one paragraph, with the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_FAILED, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


@dataclass
class Options:
    """The parsed command line."""

    manifest: Path
    workdir: Path
    status_out: Path | None = None
    serve: bool = False
    debug: bool = False
    demo: bool = False
    fresh: bool = False
    embedded_s3: bool = False
    seeds: list[str] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune run",
        description="Run a FineTuneJob manifest on this machine: validate, pull, train (torchrun, "
        "CPU or local GPUs), evaluate, push, and optionally serve. s3:// URIs go to the embedded "
        "S3 server on 127.0.0.1 unless spec.storage.endpoint or AWS credentials are set.",
    )
    p.add_argument("manifest", type=Path, help="FineTuneJob YAML file")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(".work"),
        help="work files: s3/ (embedded S3 objects), jobs/<runId>/ (default: .work)",
    )
    p.add_argument("--status-out", type=Path, help="write the FineTuneJob status JSON here")
    p.add_argument("--serve", action="store_true", help="serve the model afterwards (Ctrl-C ends)")
    p.add_argument("--debug", action="store_true", help="tracebacks and trainer logs on errors")
    p.add_argument(
        "--demo",
        action="store_true",
        help="generate the demo data and base model into the manifest's input URIs, then after "
        "training query the served model and stop",
    )
    p.add_argument(
        "--fresh", action="store_true", help="discard this run's checkpoints/artifacts first"
    )
    p.add_argument(
        "--embedded-s3", action="store_true", help="use the embedded S3 even if one is configured"
    )
    p.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="s3://BUCKET/KEY=PATH",
        help="upload a local file or directory to an s3:// URI before the run (repeatable)",
    )
    return p


def cli(argv: Sequence[str]) -> int:
    """Entry point of ``finetune run``; returns the exit code."""
    ns = _parser().parse_args(list(argv))
    opts = Options(
        manifest=ns.manifest,
        workdir=ns.workdir,
        status_out=ns.status_out,
        serve=ns.serve,
        debug=ns.debug,
        demo=ns.demo,
        fresh=ns.fresh,
        embedded_s3=ns.embedded_s3,
        seeds=list(ns.seed),
    )
    ui = RunUI(debug=opts.debug)
    try:
        return run(opts, ui)
    except LocalRunError as exc:
        if opts.debug:
            traceback.print_exc()
        ui.error(str(exc), hint=exc.hint)
        return exc.code
    except KeyboardInterrupt:
        ui.error("interrupted before training started; nothing was lost", title="stopped")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if opts.debug:
            traceback.print_exc()
        ui.error(
            f"{type(exc).__name__}: {exc}",
            hint="Run again with --debug for the traceback and the trainer's log.",
        )
        return EXIT_FAILED


# ------------------------------------------------------------------------------ manifest


def load_job(path: Path) -> FineTuneJob:
    """Parse and validate the manifest with the local rules; LocalRunError(2) names each problem."""
    from finetune_operator.validation import ManifestError
    from finetune_operator.validation import load_job as validated_job

    try:
        return validated_job(path, local=True)
    except ManifestError as exc:
        raise LocalRunError(
            str(exc), EXIT_BAD_MANIFEST, hint="`finetune validate FILE` checks a manifest alone."
        ) from exc


def resolve_local_paths(spec: FineTuneJobSpec, cwd: Path) -> FineTuneJobSpec:
    """The spec with every local path made absolute (relative paths are from ``cwd``)."""
    wire = spec.to_wire()

    def fix(uri: str) -> str:
        if is_s3(uri) or "://" in uri:
            return uri
        trailing = "/" if uri.endswith("/") else ""
        return str((cwd / Path(uri).expanduser()).resolve()) + trailing

    if wire["baseModel"].get("uri"):
        wire["baseModel"]["uri"] = fix(wire["baseModel"]["uri"])
    for d in wire["datasets"]:
        d["uri"] = fix(d["uri"])
    if (wire.get("validation") or {}).get("uri"):
        wire["validation"]["uri"] = fix(wire["validation"]["uri"])
    for d in (wire.get("evaluation") or {}).get("datasets", []):
        d["uri"] = fix(d["uri"])
    wire["output"]["uri"] = fix(wire["output"]["uri"])
    return FineTuneJobSpec.model_validate(wire, context=LOCAL)


def check_unsupported(spec: FineTuneJobSpec) -> None:
    """Fields that have no meaning on one machine and would silently be ignored: refuse them."""
    if spec.distributed.deepspeed is not None and spec.distributed.deepspeed.config_map_ref:
        raise LocalRunError(
            "spec.distributed.deepspeed.configMapRef names a ConfigMap, which does not exist "
            "outside a cluster: remove it to use the generated DeepSpeed config",
            EXIT_BAD_MANIFEST,
        )
    if spec.base_model.from_job:
        raise LocalRunError(
            f"spec.baseModel.fromJob ({spec.base_model.from_job}) names another FineTuneJob, "
            "which only the operator can look up: set spec.baseModel.uri to that job's output "
            "instead (its runs/<runId>/merged/ prefix, written with output.mergeAdapter: true)",
            EXIT_BAD_MANIFEST,
        )
    if spec.suspend:
        raise LocalRunError(
            "spec.suspend is true: the job is suspended, so there is nothing to run; set it to "
            "false (a checkpoint from an earlier run is resumed)",
            EXIT_BAD_MANIFEST,
        )


# ------------------------------------------------------------------------------ the run


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON at ``path``, or {} while it is absent or half-written."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _gpu_count() -> int:
    """GPUs visible here, without importing torch (nvidia-smi -L), honouring CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if shutil.which("nvidia-smi") is None:
        return 0
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def processes_per_node(spec: FineTuneJobSpec, gpus: int) -> int:
    """torchrun processes per local node: processesPerNode, else gpusPerNode (GPUs here), else 1."""
    d = spec.distributed
    if d.processes_per_node:
        return d.processes_per_node
    if gpus > 0 and d.gpus_per_node > 0:
        return min(d.gpus_per_node, gpus)
    return 1


@dataclass
class Context:
    """What the phases of one run share."""

    opts: Options
    ui: RunUI
    job: FineTuneJob
    spec: FineTuneJobSpec  # resolved: absolute local paths, the embedded endpoint
    run_id: str
    run_dir: Path
    started: float
    start_time: str
    env: dict[str, str]
    store: Any = None
    trainer_status: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    conditions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_uri(self) -> str:
        return self.spec.output.uri.rstrip("/") + f"/runs/{self.run_id}/"

    @property
    def trainer_status_path(self) -> Path:
        return self.run_dir / "trainer-status.json"

    def write_status(self, outcome: Outcome, *, final: bool = False) -> dict[str, Any]:
        """The operator's view of the run; also written to --status-out when given."""
        status = build_status(
            self.trainer_status,
            outcome,
            run_id=self.run_id,
            attempts=max(1, self.attempts),
            start_time=self.start_time,
            now=_now(),
            completion_time=_now() if final else None,
            previous_conditions=self.conditions,
        )
        self.conditions = list(status.get("conditions", []))
        if self.opts.status_out is not None:
            _write_json(self.opts.status_out, status)
        return status


def run(opts: Options, ui: RunUI) -> int:
    """All phases of ``finetune run``; raises LocalRunError for reportable failures."""
    started = time.monotonic()
    job = load_job(opts.manifest)
    check_unsupported(job.spec)
    from finetune_trainer.config import spec_hash

    run_id = f"{job.metadata.name}-{spec_hash(job.spec)[:8]}"
    workdir = opts.workdir.resolve()
    run_dir = workdir / "jobs" / run_id
    spec = resolve_local_paths(job.spec, Path.cwd())
    mode = decide_storage(spec, os.environ, force_embedded=opts.embedded_s3)
    ui.header(
        [
            ("job", f"{job.metadata.name}  ({spec.task}, {spec.method.type})"),
            ("run", run_id),
            (
                "storage",
                {
                    "none": "local files",
                    "embedded": f"embedded S3 (objects kept in {_rel(workdir / 's3')})",
                    "real": spec.storage.endpoint or "AWS S3",
                }[mode],
            ),
            ("workdir", _rel(run_dir)),
        ]
    )
    env = dict(os.environ)
    embedded = None
    if mode == "real" and spec.storage.endpoint:
        try:
            check_reachable(spec.storage.endpoint)
        except StorageProblem as exc:
            raise LocalRunError(str(exc)) from exc
    if mode == "embedded":
        embedded = _start_embedded(workdir, ui)
        env.update(embedded.env())
        env["AWS_ENDPOINT_URL"] = embedded.endpoint_url
        env["AWS_ENDPOINT_URL_S3"] = embedded.endpoint_url
        wire = spec.to_wire()
        wire["storage"]["endpoint"] = embedded.endpoint_url
        spec = FineTuneJobSpec.model_validate(wire, context=LOCAL)
    ctx = Context(
        opts=opts,
        ui=ui,
        job=job,
        spec=spec,
        run_id=run_id,
        run_dir=run_dir,
        started=started,
        start_time=_now(),
        env=env,
    )
    try:
        return _run_with_storage(ctx, embedded)
    finally:
        if embedded is not None:
            ui.note(f"Saving the embedded S3's objects to {_rel(workdir / 's3')}")
            embedded.stop()


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _start_embedded(workdir: Path, ui: RunUI) -> Any:
    from finetune_trainer.embedded_s3 import start_embedded_s3

    data_dir = workdir / "s3"
    kept = (
        sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
        if data_dir.is_dir()
        else 0
    )
    if kept:
        ui.note(f"Starting the embedded S3 with the {kept / 1e6:.0f} MB kept in {_rel(data_dir)}")
    try:
        return start_embedded_s3("127.0.0.1", port=0, data_dir=data_dir)
    except Exception as exc:
        raise LocalRunError(f"could not start the embedded S3 server: {exc}") from exc


def _open_store(ctx: Context) -> Any:
    from finetune_trainer.storage import open_store

    return open_store(ctx.spec.storage)


def _run_with_storage(ctx: Context, embedded: Any) -> int:
    from finetune_trainer.storage import StorageError

    ctx.store = _open_store(ctx)
    try:
        if embedded is not None:  # a fresh embedded server: the job's buckets, empty
            from finetune_trainer.embedded_s3 import ensure_bucket
            from finetune_trainer.storage import parse_s3_uri

            for bucket in sorted(
                {parse_s3_uri(u).bucket for _, u in job_uris(ctx.spec) if is_s3(u)}
            ):
                ensure_bucket(ctx.store, bucket)
        if ctx.opts.demo:
            _put_demo_inputs(ctx, embedded)
        for arg in ctx.opts.seeds:
            try:
                uri, local = parse_seed(arg)
            except ValueError as exc:
                raise LocalRunError(str(exc), EXIT_BAD_MANIFEST) from exc
            _put(ctx, local, uri, embedded, f"Seeding {uri}")
        _check_inputs(ctx)
        if ctx.opts.fresh:
            _discard_run(ctx)
    except StorageError as exc:
        raise LocalRunError(str(exc)) from exc
    if _already_complete(ctx):
        return _after_training(ctx, resumed_complete=True)
    code = _train(ctx)
    if code != EXIT_OK:
        return code
    return _after_training(ctx, resumed_complete=False)


# ------------------------------------------------------------------------------ inputs


def _put(ctx: Context, local: Path, uri: str, embedded: Any, label: str) -> None:
    """Copy a file/directory to a local path or upload it to an s3:// URI, with a progress bar."""
    from finetune_trainer.embedded_s3 import ensure_bucket
    from finetune_trainer.storage import parse_s3_uri

    total = (
        local.stat().st_size
        if local.is_file()
        else sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    )
    if not is_s3(uri):
        dest = Path(uri)
        if local.is_file():
            if uri.endswith("/"):
                dest = dest / local.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, dest)
        else:
            shutil.copytree(local, dest, dirs_exist_ok=True)
        return
    with ctx.ui.transfer(label, total) as advance:
        last = [0]

        def progress(done: int, _total: int) -> None:
            advance(max(0, done - last[0]))
            last[0] = max(last[0], done)

        if embedded is not None:  # a fresh embedded server may lack the bucket
            ensure_bucket(ctx.store, parse_s3_uri(uri).bucket)
        ctx.store.upload(local, uri, progress)


def _put_demo_inputs(ctx: Context, embedded: Any) -> None:
    from finetune_operator.local_demo import DemoError, plan_demo_inputs

    staging = ctx.opts.workdir.resolve() / "demo-inputs" / ctx.spec.task
    try:
        inputs = plan_demo_inputs(ctx.spec, staging)
    except DemoError as exc:
        raise LocalRunError(str(exc), EXIT_BAD_MANIFEST) from exc
    for item in inputs:
        if ctx.store.exists(item.uri):
            ctx.ui.note(f"{item.field}: {item.uri} already has data; kept as is")
            continue
        _put(ctx, item.source, item.uri, embedded, f"Demo input → {item.uri}")
    ctx.ui.note(
        f"Demo inputs in place ({len(inputs)} locations; generated data in {_rel(staging)})"
    )


def _check_inputs(ctx: Context) -> None:
    """Every input the manifest names exists (clear error naming the field), output writable."""
    missing = []
    for fname, uri in job_uris(ctx.spec):
        if fname == "spec.output.uri":
            continue
        if not ctx.store.exists(uri):
            missing.append(f"{fname} = {uri}")
    if missing:
        if any(is_s3(m.split(" = ", 1)[1]) for m in missing):
            hint = (
                "Upload the data first (--seed s3://BUCKET/KEY=PATH, or put the files under "
                f"{_rel(ctx.opts.workdir.resolve() / 's3')}/BUCKET/KEY for the embedded S3), or "
                "run with --demo to generate the demo inputs."
            )
        else:
            hint = (
                "Fix the paths (relative paths are read from the current directory), or run "
                "with --demo to generate the demo inputs there."
            )
        raise LocalRunError("nothing found at " + "; ".join(missing), EXIT_BAD_MANIFEST, hint=hint)
    if is_s3(ctx.spec.output.uri):
        ctx.store.exists(ctx.spec.output.uri)  # raises StorageError naming a missing bucket


def _discard_run(ctx: Context) -> None:
    if ctx.store.exists(ctx.run_uri):
        n = ctx.store.delete_prefix(ctx.run_uri, within=ctx.run_uri)
        ctx.ui.note(f"--fresh: deleted {n} objects under {ctx.run_uri}")
    if ctx.run_dir.exists():
        shutil.rmtree(ctx.run_dir)


def _already_complete(ctx: Context) -> bool:
    if not ctx.store.is_complete(ctx.run_uri):
        return False
    ctx.trainer_status = _read_json(ctx.trainer_status_path)
    ctx.ui.note(
        f"This run already completed ({ctx.run_uri}); showing its results. "
        "Use --fresh to train again."
    )
    return True


def _latest_checkpoint(ctx: Context) -> int | None:
    """Step of the newest complete checkpoint in storage (the one the trainer resumes from)."""
    from finetune_trainer.checkpoint import latest_complete

    try:
        latest = latest_complete(ctx.store, ctx.run_uri + "checkpoints/")
    except Exception:
        return None
    return None if latest is None else int(latest.step)


# ------------------------------------------------------------------------------ training


def _trainer_configs(ctx: Context, nnodes: int) -> list[Path]:
    """One TrainerConfig per node (own scratch dir each, as pods have); node 0 reports."""
    from finetune_trainer.config import JobRef, ReportTarget, TrainerConfig

    paths = []
    for rank in range(nnodes):
        node_dir = ctx.run_dir / f"node-{rank}"
        node_dir.mkdir(parents=True, exist_ok=True)
        config = TrainerConfig(
            job=JobRef(
                name=ctx.job.metadata.name, namespace=ctx.job.metadata.namespace or "default"
            ),
            run_id=ctx.run_id,
            spec=ctx.spec,
            base_model_uri=ctx.spec.base_model.uri or "",
            attempt=ctx.attempts,
            work_dir=str(node_dir / "work"),
            report=ReportTarget(
                kubernetes=False,
                status_file=str(ctx.trainer_status_path) if rank == 0 else None,
                termination_log=str(node_dir / "termination-log"),
                metrics_port=free_port() if rank == 0 else None,
                min_interval_seconds=1.0,
            ),
            image="local",
        )
        path = node_dir / "config.json"
        path.write_text(config.to_json())
        paths.append(path)
    return paths


class _Signals:
    """Ctrl-C / SIGTERM while training: first asks the trainer to stop, second kills."""

    def __init__(self) -> None:
        self.count = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _train(ctx: Context) -> int:
    """Launch the nodes, follow them, restart retriable failures up to backoffLimit."""
    from finetune_operator.local_procs import node_env, start_nodes

    spec = ctx.spec
    gpus = _gpu_count()
    nnodes = spec.distributed.nodes
    nproc = processes_per_node(spec, gpus)
    state_path = ctx.run_dir / "state.json"
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    ctx.attempts = int(_read_json(state_path).get("attempts", 0))
    ctx.ui.note(
        f"{nnodes} node(s) x {nproc} process(es) on "
        + (f"{gpus} local GPU(s)" if gpus and spec.distributed.gpus_per_node else "CPU")
    )
    retries_left = spec.run_policy.backoff_limit
    deadline = spec.run_policy.active_deadline_seconds
    while True:
        ctx.attempts += 1
        _write_json(state_path, {"attempts": ctx.attempts, "runId": ctx.run_id})
        step = _latest_checkpoint(ctx)
        if step is not None:
            ctx.ui.note(
                f"Resuming from checkpoint step {step} ({ctx.run_uri}checkpoints/step-{step}/)"
            )
        ctx.trainer_status_path.unlink(missing_ok=True)
        configs = _trainer_configs(ctx, nnodes)
        port = free_port()
        envs = [
            node_env(
                ctx.env,
                config_path=configs[rank],
                nnodes=nnodes,
                node_rank=rank,
                nproc=nproc,
                master_port=port,
                cpu_only=gpus == 0 or spec.distributed.gpus_per_node == 0,
            )
            for rank in range(nnodes)
        ]
        ctx.write_status(Outcome(phase="Initializing", reason="Starting"))
        nodes = start_nodes(envs, ctx.run_dir / "logs", Path.cwd())
        try:
            codes, interrupted = _follow(ctx, nodes, deadline)
        finally:
            nodes.close()
        if interrupted:
            return _interrupted(ctx)
        if deadline and time.monotonic() - ctx.started > deadline:
            return _failed(
                ctx,
                "DeadlineExceeded",
                f"the run exceeded spec.runPolicy.activeDeadlineSeconds ({deadline}s) and was "
                "stopped; its checkpoint is kept",
                nodes.logs[0],
                EXIT_FAILED,
            )
        code = next((c for c in codes if c not in (0, None)), 0)
        if code == 0:
            return EXIT_OK
        if code == EXIT_BAD_DATA:
            return _failed(
                ctx,
                "InvalidData",
                _trainer_message(ctx, nodes.logs[0]),
                nodes.logs[0],
                EXIT_BAD_DATA,
            )
        if code == EXIT_RETRIABLE and retries_left > 0:
            retries_left -= 1
            ctx.ui.warn(
                f"the trainer stopped with a retriable error (exit 75); restarting from the last "
                f"checkpoint ({retries_left} retries left, spec.runPolicy.backoffLimit)"
            )
            continue
        return _failed(
            ctx,
            "TrainerFailed",
            f"the trainer exited with code {code}: {_trainer_message(ctx, nodes.logs[0])}",
            nodes.logs[0],
            EXIT_FAILED,
        )


def _follow(ctx: Context, nodes: Any, deadline: int | None) -> tuple[list[int | None], bool]:
    """Poll status file and processes until every node exits; handle Ctrl-C and the deadline."""
    interrupted = False
    last_mtime = 0.0
    with _Signals() as signals, ctx.ui.training() as update:
        while True:
            try:
                mtime = ctx.trainer_status_path.stat().st_mtime
            except OSError:
                mtime = 0.0
            if mtime != last_mtime:
                last_mtime = mtime
                fresh = _read_json(ctx.trainer_status_path)
                if fresh:
                    ctx.trainer_status = fresh
                    update(fresh)
                    stage = (fresh.get("progress") or {}).get("stage")
                    ctx.write_status(Outcome(phase=phase_of_stage(stage), reason="Running"))
            if signals.count == 1 and not interrupted:
                interrupted = True
                nodes.terminate()
                ctx.ui.warn(
                    "Stopping: the trainer saves a checkpoint, then exits (Ctrl-C again to kill)"
                )
            elif signals.count >= 2:
                nodes.kill()
            if (
                deadline
                and time.monotonic() - ctx.started > deadline
                and nodes.terminated_at is None
            ):
                nodes.terminate()
            if nodes.terminated_at is not None and time.monotonic() - nodes.terminated_at > 300:
                nodes.kill()
            codes = nodes.returncodes()
            if any(c not in (None, 0) for c in codes) and any(c is None for c in codes):
                nodes.terminate()  # one node failed: stop the gang, as the Job would
            if all(c is not None for c in codes):
                final = _read_json(ctx.trainer_status_path)
                if final:
                    ctx.trainer_status = final
                    update(final)
                return codes, interrupted
            time.sleep(POLL_SECONDS)


def _trainer_message(ctx: Context, log: Path) -> str:
    """The trainer's own words: its termination message, else the last error line of its log."""
    from finetune_operator.local_procs import tail

    term = ctx.run_dir / "node-0" / "termination-log"
    if term.is_file():
        text = term.read_text(errors="replace").strip()
        try:
            doc = json.loads(text)
        except ValueError:
            doc = text
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            return _error_text(doc["error"])
        if isinstance(doc, str) and doc:
            return doc
    lines = tail(log, 40).splitlines()
    errors = [ln for ln in lines if "error" in ln.lower() or "invalid" in ln.lower()]
    return (errors or lines or ["no output"])[-1].strip()


def _error_text(error: Mapping[str, Any]) -> str:
    """The trainer's error summary: its message and the first problems (field/file/row)."""
    text = str(error.get("message") or error.get("reason") or "the trainer failed")
    problems = error.get("problems") or []
    if isinstance(problems, list) and problems:
        shown = [str(p) for p in problems[:5]]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        text = text.rstrip(".: ") + ": " + "; ".join(shown) + more
    return text


def _failed(ctx: Context, reason: str, message: str, log: Path, code: int) -> int:
    from finetune_operator.local_procs import tail

    ctx.write_status(Outcome(phase="Failed", reason=reason, message=message), final=True)
    hint = f"Trainer log: {_rel(log)}"
    if ctx.opts.debug:
        hint += "\n" + tail(log, 30)
    raise LocalRunError(message, code, hint=hint)


def _interrupted(ctx: Context) -> int:
    step = _latest_checkpoint(ctx)
    where = f"checkpoint step {step} is kept" if step is not None else "no checkpoint was saved yet"
    message = f"stopped by Ctrl-C; {where}"
    ctx.write_status(Outcome(phase="Suspended", reason="Interrupted", message=message), final=True)
    cmd = (
        " ".join(["finetune", "run", *sys.argv[2:]])
        if sys.argv[1:2] == ["run"]
        else "finetune run ..."
    )
    ctx.ui.error(
        message + ".",
        title="interrupted",
        hint=f"Run the same command again to resume:\n  {cmd}",
    )
    return EXIT_INTERRUPTED


# ------------------------------------------------------------------------------ after training


def _gate(ctx: Context) -> tuple[bool | None, str | None]:
    rules = ctx.spec.evaluation.gate
    results = (ctx.trainer_status.get("evaluation") or {}).get("results") or {}
    if not rules:
        return None, None
    from finetune_operator.gate import evaluate_gate

    verdict = evaluate_gate(rules, results)
    return bool(verdict.passed), str(verdict.message)


def _after_training(ctx: Context, *, resumed_complete: bool) -> int:
    passed, gate_message = _gate(ctx)
    status = ctx.write_status(
        Outcome(
            phase="Succeeded",
            reason="Succeeded",
            message="the run finished and its artifacts are stored",
            gate_passed=passed,
            gate_message=gate_message,
        ),
        final=True,
    )
    duration = time.monotonic() - ctx.started
    extra: list[tuple[str, str]] = []
    if ctx.opts.status_out is not None:
        extra.append(("status", _rel(ctx.opts.status_out.resolve())))
    ctx.ui.summary(status, duration=duration, extra=extra)
    if not (ctx.opts.serve or ctx.opts.demo):
        return EXIT_OK
    if passed is False:
        ctx.ui.warn("the evaluation gate failed: the model is not served (as in the cluster)")
        return EXIT_OK
    return _serve(ctx, passed, gate_message)


def _serve(ctx: Context, passed: bool | None, gate_message: str | None) -> int:
    from finetune_operator.local_procs import start_server

    port = free_port()
    server = start_server(
        ctx.run_uri,
        port,
        ctx.env,
        ctx.run_dir / "logs" / "serve.log",
        Path.cwd(),
        s3_endpoint=ctx.spec.storage.endpoint or None,
    )
    ctx.ui.note(f"Starting the inference server on {ctx.run_uri}")
    try:
        try:
            server.wait_ready()
        except RuntimeError as exc:
            raise LocalRunError(str(exc)) from exc
        serving = {"endpoint": server.url, "promoted": True, "ready": True}
        ctx.write_status(
            Outcome(
                phase="Succeeded",
                reason="Succeeded",
                message="the run finished and its artifacts are stored",
                gate_passed=passed,
                gate_message=gate_message,
                serving=serving,
            ),
            final=True,
        )
        ctx.ui.console.print(f"[bold green]Serving[/bold green] {server.url}")
        if ctx.opts.demo and not ctx.opts.serve:
            from finetune_operator.local_demo import demo_queries

            t0 = time.monotonic()
            ctx.ui.console.print(demo_queries(ctx.spec.task, server.url))
            took = format_duration(time.monotonic() - t0)
            ctx.ui.note(f"answered in {took}; stopping the server")
            return EXIT_OK
        ctx.ui.note("Press Ctrl-C to stop the server.")
        with _Signals() as signals:
            while signals.count == 0 and server.proc.poll() is None:
                time.sleep(POLL_SECONDS)
        if server.proc.poll() not in (None, 0) and signals.count == 0:
            raise LocalRunError(f"the inference server exited; see {server.log}")
        ctx.ui.note("Stopping the server (requests in flight finish first)")
        server.stop()
        ctx.write_status(
            Outcome(
                phase="Succeeded",
                reason="Succeeded",
                message="the run finished and its artifacts are stored",
                gate_passed=passed,
                gate_message=gate_message,
                serving={**serving, "ready": False, "message": "stopped by Ctrl-C"},
            ),
            final=True,
        )
        return EXIT_OK
    finally:
        server.stop()


def main() -> None:  # pragma: no cover - `python -m finetune_operator.local`
    sys.exit(cli(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
