"""Progress and metrics reporting: Prometheus /metrics, the FineTuneJob status, the status file.

Why it exists: one place owns what the outside world sees of a training pod (ARCHITECTURE.md §4,
docs/DEVELOPING.md "Trainer → status"). Two halves, because a run spans two kinds of process:

- ``ProgressLog`` (rank 0 of the torchrun workers): appends one JSON event per line to
  ``<work_dir>/progress.jsonl`` (train begin, step, log, eval, checkpoint). Cheap, no network.
- ``Reporter`` (the launcher of node 0, which lives for the whole pod): follows that file, keeps
  the trainer-owned status fields (progress incl. stage, metrics, checkpoint, evaluation
  results/baseline, artifacts, lineage), serves Prometheus metrics on ``metrics_port``, writes
  ``status_file`` (FineTuneJobStatus wire format), merge-patches the FineTuneJob's status
  subresource (in-cluster ServiceAccount, rate-limited by ``min_interval_seconds``; failures are
  logged, never fatal) and writes the final summary (<4 KiB) to the termination log.

One process owns the port and the API writes, so a pull → train → evaluate → push run reports
through a single, continuous set of series with no port hand-over between processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer.config import JobRef, TrainerConfig

__all__ = [
    "MAX_TERMINATION_BYTES",
    "PEAK_FLOPS",
    "STAGES",
    "ProgressLog",
    "Reporter",
    "StatusPatcher",
    "decimal",
    "peak_flops_for",
]

log = logging.getLogger(__name__)

STAGES = ("pulling", "validating", "training", "evaluating", "uploading", "done")
MAX_TERMINATION_BYTES = 4096
API_GROUP, API_VERSION, API_PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"

# Dense peak tensor FLOP/s per device for the training precision (bf16/fp16), from vendor sheets.
# Matched by substring of torch.cuda.get_device_name(); unknown devices report no MFU.
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
}


def peak_flops_for(device_name: str) -> float | None:
    """Peak dense bf16/fp16 FLOP/s of a CUDA device by name, or None when unknown."""
    for key, flops in PEAK_FLOPS.items():
        if key in device_name:
            return flops
    return None


def decimal(value: float, digits: int = 6) -> str:
    """Status values are decimal strings (Kubernetes API conventions: no floats)."""
    return f"{value:.{digits}g}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ worker side


class ProgressLog:
    """Append-only JSON-lines event log written by rank 0 of the workers, read by the Reporter."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields}, sort_keys=True)
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


# ------------------------------------------------------------------------------ Kubernetes


class StatusPatcher:
    """Merge-patches ``status`` of one FineTuneJob through the status subresource."""

    def __init__(
        self,
        job: JobRef,
        *,
        token_file: str | None = None,
        ca_file: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        """In-cluster credentials: the pod's ServiceAccount token and CA, KUBERNETES_SERVICE_*.

        The paths and environment default to the standard in-cluster ones; tests point them at
        a token minted for the job's ServiceAccount on a real API server.
        """
        from kubernetes import client
        from kubernetes.config import incluster_config

        configuration = client.Configuration()
        incluster_config.InClusterConfigLoader(
            token_filename=token_file or incluster_config.SERVICE_TOKEN_FILENAME,
            cert_filename=ca_file or incluster_config.SERVICE_CERT_FILENAME,
            environ=os.environ if environ is None else environ,
        ).load_and_set(configuration)
        self._api = client.CustomObjectsApi(client.ApiClient(configuration))
        self._job = job

    def patch(self, status: dict[str, Any]) -> None:
        self._api.patch_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            self._job.namespace,
            API_PLURAL,
            self._job.name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )


# ------------------------------------------------------------------------------ Prometheus


class _Metrics:
    """The finetune_trainer_* series (labels namespace, job) in a private registry."""

    def __init__(self, job: JobRef) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        labels = ["namespace", "job"]
        self.values = {"namespace": job.namespace, "job": job.name}

        def gauge(name: str, doc: str) -> Any:
            return Gauge(f"finetune_trainer_{name}", doc, labels, registry=self.registry).labels(
                **self.values
            )

        def counter(name: str, doc: str) -> Any:
            return Counter(f"finetune_trainer_{name}", doc, labels, registry=self.registry).labels(
                **self.values
            )

        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned.")
        self.loss = gauge("loss", "Latest training loss.")
        self.eval_loss = gauge("eval_loss", "Latest validation loss.")
        self.learning_rate = gauge("learning_rate", "Current learning rate.")
        self.tokens = counter("tokens", "Training tokens processed (non-padding, all ranks).")
        self.tokens_per_second = gauge("tokens_per_second", "Training throughput, all ranks.")
        self.samples_per_second = gauge("samples_per_second", "Training samples per second.")
        self.eta_seconds = gauge("eta_seconds", "Estimated seconds to the end of training.")
        self.mfu_ratio = gauge("mfu_ratio", "Estimated model FLOPs utilisation (0-1).")
        self.gpu_memory_bytes = gauge("gpu_memory_bytes", "Peak GPU memory allocated on rank 0.")
        self.gpu_utilization_ratio = gauge(
            "gpu_utilization_ratio", "GPU utilisation on rank 0 (0-1)."
        )
        self.bytes_pulled = counter("bytes_pulled", "Bytes downloaded from storage.")
        self.bytes_pushed = counter("bytes_pushed", "Bytes uploaded to storage.")
        self.restarts = counter("restarts", "Restarts of this job before the current attempt.")
        self._tokens_seen = 0.0
        self._pulled = 0
        self._pushed = 0

    def set_tokens_seen(self, total: float) -> None:
        if total > self._tokens_seen:
            self.tokens.inc(total - self._tokens_seen)
            self._tokens_seen = total

    def set_transfer_totals(self, pulled: int, pushed: int) -> None:
        if pulled > self._pulled:
            self.bytes_pulled.inc(pulled - self._pulled)
            self._pulled = pulled
        if pushed > self._pushed:
            self.bytes_pushed.inc(pushed - self._pushed)
            self._pushed = pushed


# ------------------------------------------------------------------------------ Reporter


@dataclass
class _State:
    progress: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("progress", "metrics", "checkpoint", "evaluation", "artifacts", "lineage"):
            value = getattr(self, key)
            if value:
                out[key] = dict(value)
        return out


class Reporter:
    """The launcher's view of a run; every method is safe to call from any thread.

    ``enabled=False`` (launchers of nodes other than 0) keeps the state but reports nothing.
    """

    def __init__(
        self,
        config: TrainerConfig,
        *,
        enabled: bool = True,
        patcher: StatusPatcher | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.config = config
        self.target = config.report
        self.enabled = enabled
        self._clock = clock
        self._lock = threading.RLock()
        self._state = _State()
        self._last_patch = -1e18
        self._last_file = -1e18
        self._pending_file = False
        self._own_bytes = (0, 0)  # storage bytes moved by this process (pulled, pushed)
        self._worker_bytes = (0, 0)  # by rank 0 of the workers (checkpoint uploads)
        self._pending_patch = False
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._server: Any = None
        self.metrics: _Metrics | None = None
        self.patcher = patcher
        if not enabled:
            return
        self.metrics = _Metrics(config.job)
        if config.attempt > 1:
            self.metrics.restarts.inc(config.attempt - 1)
        if self.target.metrics_port is not None:
            from prometheus_client import start_http_server

            try:
                self._server, _ = start_http_server(
                    self.target.metrics_port, registry=self.metrics.registry
                )
            except OSError as exc:
                log.warning(
                    "metrics port %s unavailable (%s); serving no /metrics",
                    self.target.metrics_port,
                    exc,
                )
        if self.target.kubernetes and self.patcher is None:
            try:
                self.patcher = StatusPatcher(config.job)
            except Exception as exc:  # no in-cluster config: log, keep training
                log.warning(
                    "cannot report to the Kubernetes API (%s); status goes to files only", exc
                )

    # -- state updates ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The trainer-owned status fields, in FineTuneJobStatus wire format."""
        with self._lock:
            return self._state.to_status()

    def stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        with self._lock:
            self._state.progress["stage"] = stage
        self.flush(force=True)

    def lineage(self, **fields: Any) -> None:
        with self._lock:
            self._state.lineage.update({k: v for k, v in fields.items() if v is not None})
        self.flush(force=True)

    def checkpoint(self, step: int, uri: str) -> None:
        with self._lock:
            self._state.checkpoint = {"step": int(step), "uri": uri}
        self.flush(force=True)

    def evaluation(
        self, results: dict[str, float], baseline: dict[str, float] | None = None
    ) -> None:
        with self._lock:
            self._state.evaluation["results"] = {k: decimal(float(v)) for k, v in results.items()}
            if baseline:
                self._state.evaluation["baseline"] = {
                    k: decimal(float(v)) for k, v in baseline.items()
                }
            if "eval_loss" in results:
                self._state.metrics["evalLoss"] = decimal(float(results["eval_loss"]))
        if self.metrics is not None and "eval_loss" in results:
            self.metrics.eval_loss.set(float(results["eval_loss"]))
        self.flush(force=True)

    def artifacts(self, **uris: str | None) -> None:
        with self._lock:
            self._state.artifacts.update({k: v for k, v in uris.items() if v})
        self.flush(force=True)

    def transfers(self, pulled: int, pushed: int) -> None:
        """This process's storage byte totals (the workers' arrive in their events)."""
        with self._lock:
            self._own_bytes = (pulled, pushed)
        self._sync_transfers()

    def _sync_transfers(self) -> None:
        if self.metrics is not None:
            with self._lock:
                pulled = self._own_bytes[0] + self._worker_bytes[0]
                pushed = self._own_bytes[1] + self._worker_bytes[1]
            self.metrics.set_transfer_totals(pulled, pushed)

    def on_event(self, ev: dict[str, Any]) -> None:
        """Apply one ProgressLog event from the workers."""
        kind = ev.get("event")
        force = False
        with self._lock:
            p, m = self._state.progress, self._state.metrics
            if kind == "train_begin":
                p["totalSteps"] = int(ev["total_steps"])
                p.setdefault("step", int(ev.get("step", 0)))
                p["stage"] = "training"
                force = True
            if "step" in ev and kind in ("step", "log", "checkpoint", "train_end", "eval"):
                p["step"] = int(ev["step"])
            if "total_steps" in ev:
                p["totalSteps"] = int(ev["total_steps"])
            if p.get("totalSteps"):
                p["percent"] = min(100, int(100 * p.get("step", 0) // p["totalSteps"]))
            if "epoch" in ev:
                p["epoch"] = decimal(float(ev["epoch"]), 3)
            if "tokens_per_second" in ev:
                p["tokensPerSecond"] = decimal(float(ev["tokens_per_second"]), 4)
            if "eta_seconds" in ev:
                p["etaSeconds"] = int(ev["eta_seconds"])
            p["lastHeartbeatTime"] = _now()
            if "loss" in ev:
                m["trainLoss"] = decimal(float(ev["loss"]))
            if "learning_rate" in ev:
                m["learningRate"] = decimal(float(ev["learning_rate"]))
            if "eval_loss" in ev:
                m["evalLoss"] = decimal(float(ev["eval_loss"]))
            if kind == "checkpoint":
                self._state.checkpoint = {"step": int(ev["step"]), "uri": str(ev["uri"])}
                force = True
        self._update_metrics(ev)
        self.flush(force=force)

    def _update_metrics(self, ev: dict[str, Any]) -> None:
        mx = self.metrics
        if mx is None:
            return
        simple = {
            "step": mx.step,
            "total_steps": mx.total_steps,
            "loss": mx.loss,
            "eval_loss": mx.eval_loss,
            "learning_rate": mx.learning_rate,
            "tokens_per_second": mx.tokens_per_second,
            "samples_per_second": mx.samples_per_second,
            "eta_seconds": mx.eta_seconds,
            "mfu": mx.mfu_ratio,
            "gpu_memory_bytes": mx.gpu_memory_bytes,
            "gpu_utilization": mx.gpu_utilization_ratio,
        }
        for key, series in simple.items():
            if ev.get(key) is not None:
                series.set(float(ev[key]))
        if ev.get("tokens_seen") is not None:
            mx.set_tokens_seen(float(ev["tokens_seen"]))
        if ev.get("worker_bytes_pushed") is not None:
            with self._lock:
                self._worker_bytes = (
                    int(ev.get("worker_bytes_pulled", 0)),
                    int(ev["worker_bytes_pushed"]),
                )
            self._sync_transfers()

    # -- following the workers' event log --------------------------------------------------

    def follow(self, path: str | Path, poll_seconds: float = 0.5) -> None:
        """Start a thread applying events appended to ``path`` (until ``stop_following``)."""
        self._stop.clear()
        self._follower = threading.Thread(
            target=self._follow, args=(Path(path), poll_seconds), daemon=True
        )
        self._follower.start()

    def _follow(self, path: Path, poll: float) -> None:
        offset = 0
        buf = ""
        while True:
            stopping = self._stop.is_set()
            if path.exists():
                with path.open("r", encoding="utf-8") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                    offset = fh.tell()
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    if line.strip():
                        try:
                            self.on_event(json.loads(line))
                        except (ValueError, KeyError, TypeError) as exc:
                            log.warning("ignoring bad progress event %r: %s", line[:200], exc)
            if stopping:
                return
            self.flush(changed=False)
            self._stop.wait(poll)

    def stop_following(self) -> None:
        """Apply every event written so far, then stop the follower thread."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=30)
            self._follower = None

    # -- output ----------------------------------------------------------------------------

    def flush(self, *, force: bool = False, changed: bool = True) -> None:
        """Write the status file (≤1/s unless forced) and patch the API (≤1/min_interval).

        ``changed=False`` (the follower's periodic call) only writes what earlier calls held back.
        """
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            if changed:
                self._pending_file = self._pending_patch = True
            status = self._state.to_status()
            write_file = (
                bool(self.target.status_file)
                and self._pending_file
                and (force or now - self._last_file >= 1.0)
            )
            do_patch = (
                self.patcher is not None
                and self._pending_patch
                and (force or now - self._last_patch >= self.target.min_interval_seconds)
            )
            if write_file:
                self._last_file, self._pending_file = now, False
            if do_patch:
                self._last_patch, self._pending_patch = now, False
        if write_file and self.target.status_file:
            _write_json_atomic(Path(self.target.status_file), status)
        if do_patch and self.patcher is not None:
            try:
                self.patcher.patch(status)
            except Exception as exc:
                log.warning(
                    "status patch of %s/%s failed (will retry): %s",
                    self.config.job.namespace,
                    self.config.job.name,
                    exc,
                )
                with self._lock:
                    self._pending_patch = True

    def finish(self, *, error: dict[str, Any] | None = None) -> None:
        """Final flush of every output, and the summary to the termination log."""
        self.stop_following()
        if not self.enabled and error is None:
            return
        if self.enabled:
            self.flush(force=True)
        path = self.target.termination_log
        if path:
            summary = self.summary(error=error)
            try:
                Path(path).write_text(summary)
            except OSError as exc:
                log.warning("cannot write the termination log %s: %s", path, exc)
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
            self._server = None

    def summary(self, *, error: dict[str, Any] | None = None) -> str:
        """The status JSON (trainer fields; plus ``error`` on failure), cut to under 4 KiB.

        What goes first when it does not fit: the dataset ETags, the baseline and the results
        (all also in the status and metrics.json), then lineage and artifacts; then the list of
        problems is halved (the first ones kept, ``problemCount`` says how many there were).
        """
        doc: dict[str, Any] = self.status()
        if error is not None:
            doc["error"] = dict(error)

        def encoded() -> int:
            return len(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())

        trims: list[tuple[str, ...]] = [
            ("lineage", "datasetETags"),
            ("evaluation", "baseline"),
            ("evaluation", "results"),
            ("lineage",),
            ("artifacts",),
        ]
        for path in trims:
            if encoded() < MAX_TERMINATION_BYTES:
                break
            node: Any = doc
            for key in path[:-1]:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(path[-1], None)
        err = doc.get("error") or {}
        problems = list(err.get("problems") or [])
        while encoded() >= MAX_TERMINATION_BYTES and problems:
            err.setdefault("problemCount", len(problems))
            problems = problems[: len(problems) // 2]
            err["problems"] = problems
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        if len(text.encode()) >= MAX_TERMINATION_BYTES:
            text = text.encode()[: MAX_TERMINATION_BYTES - 1].decode(errors="ignore")
        return text


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.replace(tmp, path)
