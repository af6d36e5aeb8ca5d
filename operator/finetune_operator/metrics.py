"""The operator's Prometheus metrics (base units, labels bounded to namespace and phase).

Why it exists: one place defines every metric the operator exports, so the Grafana dashboard,
the alerts and the docs can rely on their names (docs/DEVELOPING.md). A private registry keeps
tests independent of whatever else lives in the process; ``serve`` exposes it on /metrics.
"""

from __future__ import annotations

import threading
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from finetune_operator.api import Phase

__all__ = [
    "REGISTRY",
    "OperatorMetrics",
    "metrics",
    "serve",
]

REGISTRY = CollectorRegistry(auto_describe=True)

PHASES: tuple[str, ...] = get_args(Phase)


class OperatorMetrics:
    """The metric objects, plus the per-job phase table behind the jobs gauge."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Gauge(
            "finetune_operator_jobs",
            "FineTuneJobs known to this operator, by namespace and phase.",
            ["namespace", "phase"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "finetune_operator_reconcile_duration_seconds",
            "Wall time of one reconcile (observe, decide, apply).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "finetune_operator_reconcile_errors_total",
            "Reconciles that ended in an error (retried).",
            registry=registry,
        )
        self.phase_transitions = Counter(
            "finetune_operator_phase_transitions_total",
            "Phase changes of FineTuneJobs, by the phase entered.",
            ["to"],
            registry=registry,
        )
        self.time_to_training = Histogram(
            "finetune_operator_time_to_training_seconds",
            "Seconds from a FineTuneJob's creation to its first Training phase.",
            buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
            registry=registry,
        )
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[str, str]] = {}  # uid -> (namespace, phase)

    def set_phase(self, uid: str, namespace: str, phase: str) -> None:
        """Record a job's current phase and refresh the jobs gauge."""
        with self._lock:
            self._phases[uid] = (namespace, phase)
            self._refresh()

    def forget(self, uid: str) -> None:
        """Drop a deleted job from the jobs gauge."""
        with self._lock:
            self._phases.pop(uid, None)
            self._refresh()

    def _refresh(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for ns, phase in self._phases.values():
            counts[(ns, phase)] = counts.get((ns, phase), 0) + 1
        namespaces = {ns for ns, _ in self._phases.values()} | {
            labels[0] for labels in self._known_label_sets()
        }
        for ns in namespaces:
            for phase in PHASES:
                self.jobs.labels(namespace=ns, phase=phase).set(counts.get((ns, phase), 0))

    def _known_label_sets(self) -> list[tuple[str, ...]]:
        return [
            tuple(s.labels[k] for k in ("namespace", "phase"))
            for metric in self.jobs.collect()
            for s in metric.samples
        ]


metrics = OperatorMetrics(REGISTRY)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose the registry on http://addr:port/metrics (a daemon thread)."""
    start_http_server(port, addr=addr, registry=REGISTRY)
