"""Benchmark: cost of one pure reconcile (observed state → decision), without API I/O.

Why: the operator reconciles every FineTuneJob on every watch event and every sweep; this shows
how much CPU the decision itself takes, apart from the API round trips (measured in the cluster
tests' wall times instead). Run: .venv/bin/python bench/operator/reconcile_bench.py
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from finetune_operator.reconcile import Create, Observed, reconcile
from finetune_operator.resources import LABEL_ATTEMPT, LABEL_JOB
from finetune_operator.status import format_time

T0 = datetime(2026, 11, 22, tzinfo=timezone.utc)


def body(nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": "bench",
            "namespace": "ns",
            "uid": "0123456789abcdef",
            "generation": 1,
            "creationTimestamp": format_time(T0),
        },
        "spec": {
            "baseModel": {"uri": "s3://models/base/"},
            "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "chat"}],
            "output": {"uri": "s3://artifacts/bench/"},
            "distributed": {"nodes": nodes, "gpusPerNode": 8},
        },
        "status": {},
    }


def steady_state(nodes: int) -> Observed:
    """A running gang in phase Training: the common case (nothing to do)."""
    first = reconcile(Observed(body=body(nodes), now=T0))
    children = {a.manifest["kind"]: a.manifest for a in first.actions if isinstance(a, Create)}
    job = children.pop("Job")
    job["metadata"]["creationTimestamp"] = format_time(T0)
    b = body(nodes)
    b["status"] = dict(first.status_patch)
    b["status"]["progress"] = {
        "stage": "training",
        "step": 5,
        "totalSteps": 10,
        "lastHeartbeatTime": format_time(T0 + timedelta(seconds=30)),
    }
    pods = [
        {
            "metadata": {
                "name": f"p{i}",
                "labels": {LABEL_JOB: "bench", LABEL_ATTEMPT: "1"},
                "annotations": {"batch.kubernetes.io/job-completion-index": str(i)},
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "trainer", "state": {"running": {"startedAt": format_time(T0)}}}
                ],
            },
        }
        for i in range(nodes)
    ]
    now = T0 + timedelta(seconds=31)
    settled = reconcile(Observed(body=b, now=now, children=children, job=job, pods=pods))
    b["status"].update(settled.status_patch)
    return Observed(body=b, now=now, children=children, job=job, pods=pods)


def main() -> None:
    print("| case | nodes | median µs | p95 µs |")
    print("| --- | --- | --- | --- |")
    for nodes in (1, 8, 64):
        for name, obs in (
            ("new job", Observed(body=body(nodes), now=T0)),
            ("steady Training", steady_state(nodes)),
        ):
            samples = []
            for _ in range(300):
                t = time.perf_counter()
                reconcile(obs)
                samples.append((time.perf_counter() - t) * 1e6)
            samples.sort()
            print(
                f"| {name} | {nodes} | {statistics.median(samples):.0f} | "
                f"{samples[int(len(samples) * 0.95)]:.0f} |"
            )


if __name__ == "__main__":
    main()
