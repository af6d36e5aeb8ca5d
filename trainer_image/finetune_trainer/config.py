"""The trainer config: the contract between whoever launches the trainer and the trainer itself.

Why it exists: the operator renders this JSON into the ``<job>-config`` ConfigMap (mounted at
``/etc/finetune/config.json``), and ``finetune run`` writes the same JSON to its work directory.
The trainer reads nothing else about the job. It holds the resolved spec (defaults applied,
``baseModel.fromJob`` resolved to a URI), the run's identity and where to report. No torch here:
the operator imports this module.

Environment the launcher sets besides the file (ARCHITECTURE.md §4): NNODES, NODE_RANK
(= JOB_COMPLETION_INDEX), NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (from storage.credentialsSecret), FINETUNE_CONFIG (path of this file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_operator.api import FineTuneJobSpec

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_RETRIABLE",
    "JobRef",
    "ReportTarget",
    "TrainerConfig",
    "spec_hash",
]

CONFIG_ENV = "FINETUNE_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/finetune/config.json"

# Exit codes (the Job's podFailurePolicy keys on EXIT_BAD_INPUT: fail at once, no retry).
EXIT_OK = 0
EXIT_BAD_INPUT = 65  # EX_DATAERR: bad data or config; retrying cannot help
EXIT_RETRIABLE = 75  # EX_TEMPFAIL: SIGTERM/preemption/transient error; checkpoint saved, resume


@dataclass(frozen=True)
class JobRef:
    """Which FineTuneJob this run belongs to."""

    name: str
    namespace: str = "default"
    uid: str = ""


@dataclass(frozen=True)
class ReportTarget:
    """Where progress goes besides Prometheus.

    kubernetes: patch the FineTuneJob's status subresource (in-cluster ServiceAccount).
    status_file: write the status JSON to this path (``finetune run --status-out``; the local
    runner also reads it to drive its progress display).
    termination_log: write the final summary here (the pod's termination message).
    """

    kubernetes: bool = False
    status_file: str | None = None
    termination_log: str | None = "/dev/termination-log"
    metrics_port: int | None = 9090
    min_interval_seconds: float = 10.0


@dataclass(frozen=True)
class TrainerConfig:
    """Everything the trainer needs, as rendered by the operator or the local runner."""

    job: JobRef
    run_id: str
    spec: FineTuneJobSpec
    base_model_uri: str  # resolved: spec.baseModel.uri, or the fromJob's output
    attempt: int = 1
    work_dir: str = "/workspace"  # local scratch: downloads, tokenized data, local checkpoints
    report: ReportTarget = field(default_factory=ReportTarget)
    image: str = ""

    @property
    def run_uri(self) -> str:
        """``<output.uri>/runs/<runId>/``: the only prefix this run writes to."""
        return self.spec.output.uri.rstrip("/") + f"/runs/{self.run_id}/"

    @property
    def checkpoints_uri(self) -> str:
        return self.run_uri + "checkpoints/"

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "TrainerConfig",
            "job": {"name": self.job.name, "namespace": self.job.namespace, "uid": self.job.uid},
            "runId": self.run_id,
            "attempt": self.attempt,
            "baseModelUri": self.base_model_uri,
            "workDir": self.work_dir,
            "image": self.image,
            "report": {
                "kubernetes": self.report.kubernetes,
                "statusFile": self.report.status_file,
                "terminationLog": self.report.termination_log,
                "metricsPort": self.report.metrics_port,
                "minIntervalSeconds": self.report.min_interval_seconds,
            },
            "spec": self.spec.to_wire(),
        }
        return json.dumps(doc, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerConfig:
        doc = json.loads(text)
        rep = doc.get("report") or {}
        return cls(
            job=JobRef(**doc["job"]),
            run_id=doc["runId"],
            attempt=int(doc.get("attempt", 1)),
            base_model_uri=doc["baseModelUri"],
            work_dir=doc.get("workDir", "/workspace"),
            image=doc.get("image", ""),
            report=ReportTarget(
                kubernetes=bool(rep.get("kubernetes", False)),
                status_file=rep.get("statusFile"),
                termination_log=rep.get("terminationLog"),
                metrics_port=rep.get("metricsPort"),
                min_interval_seconds=float(rep.get("minIntervalSeconds", 10.0)),
            ),
            # The local rules (paths besides s3://): the launcher already applied its own rules
            # (the CRD/operator: S3 only; `finetune run`: local paths allowed).
            spec=FineTuneJobSpec.model_validate(doc["spec"], context={"local": True}),
        )

    @classmethod
    def load(cls, path: str | Path) -> TrainerConfig:
        return cls.from_json(Path(path).read_text())


def spec_hash(spec: FineTuneJobSpec) -> str:
    """sha256 of the training-relevant spec (serving, runPolicy and suspend excluded)."""
    wire = spec.to_wire()
    for mutable in ("suspend", "serving", "runPolicy"):
        wire.pop(mutable, None)
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()
