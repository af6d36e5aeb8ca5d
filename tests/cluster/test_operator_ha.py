"""Two operator replicas with Kopf peering on the real control plane: one works, one stands by.

Why it exists: HA is only real if, with two live replicas, exactly one reconciles (children
created once, no Event posted twice, the standby's sweep idle too), and if SIGKILLing the active
one hands the work to the standby within the peering lifetime. Both replicas are real
``finetune operator`` processes watching the same namespace, peering through a KopfPeering object.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_operator import (
    Trainer,
    apply,
    events,
    get,
    manifest,
    pods,
    s3_secret,  # noqa: F401  (a fixture, used below)
    wait_gang_running,
    wait_phase,
)
from tests.support.controlplane import set_pod_result, wait_for
from tests.support.operator import REPO, OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("s3_secret")]

PEERING = "ft-ha"
LIFETIME = 8  # seconds; the chart's default is 60, short here to keep the test quick


def _peering_crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    """The kopf.dev peering CRDs, as the chart's templates/peering.yaml installs them."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "scope": scope,
            "group": "kopf.dev",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"status": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
            }],
        },
    }  # fmt: skip


@pytest.fixture
def peering(control_plane: Any, crd_installed: str, namespace: str) -> Iterator[str]:
    """The peering CRDs and object for this test; the CRDs are cluster-scoped and the control
    plane is shared by the session (the Helm tier installs them from the chart), so they are
    deleted again afterwards."""
    cp = control_plane
    for kind, plural, scope in (
        ("KopfPeering", "kopfpeerings", "Namespaced"),
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
    ):
        cp.kubectl("apply", "-f", "-", input=json.dumps(_peering_crd(kind, plural, scope)))
        cp.kubectl("wait", "--for=condition=Established", f"crd/{plural}.kopf.dev", "--timeout=60s")
    doc = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    yield PEERING
    cp.kubectl(
        "delete",
        "crd",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
        "--wait=true",
        check=False,
        timeout=120,
    )


@pytest.fixture
def replicas(
    control_plane: Any, namespace: str, peering: str, tmp_path: Path
) -> Iterator[dict[str, OperatorProcess]]:
    """Replica "a" (priority 200) and replica "b" (priority 100), started in that order."""
    ops: dict[str, OperatorProcess] = {}
    for name, priority in (("a", 200), ("b", 100)):
        env = dict(control_plane.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["POD_NAME"] = f"operator-{name}"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "operator"), str(REPO / "trainer_image"), env.get("PYTHONPATH", "")]
        )
        op = OperatorProcess(
            env,
            [namespace],
            tmp_path / f"operator-{name}.log",
            [f"--peering={peering}", f"--priority={priority}", f"--peering-lifetime={LIFETIME}"],
        )
        ops[name] = op
        op.start()
    yield ops
    live = [op for op in ops.values() if op.proc is not None and op.proc.poll() is None]
    if live:  # let a live replica release the finalizers before it stops
        control_plane.kubectl(
            "delete", "finetunejobs", "--all", "-n", namespace, "--timeout=60s", check=False
        )
    for name, op in ops.items():
        op.stop()
        print(f"--- operator {name} log tail ---\n{op.log_text()[-4000:]}")


def reconciles(op: OperatorProcess) -> float:
    m = re.search(r"^finetune_operator_reconcile_duration_seconds_count (\S+)$",
                  op.metrics_text(), re.M)  # fmt: skip
    return float(m.group(1)) if m else 0.0


def peers(cp: Any, ns: str) -> dict[str, Any]:
    return dict(get(cp, ns, "kopfpeering", PEERING).get("status") or {})


def duplicated_events(cp: Any, ns: str, job: str) -> list[str]:
    """Events a second worker would double: the same reason posted twice, or a count above 1."""
    evs = events(cp, ns, job)
    counts = collections.Counter(e["reason"] for e in evs)
    return [f"{r} x{n}" for r, n in counts.items() if n > 1] + [
        f"{e['reason']} count {e['count']}" for e in evs if int(e.get("count") or 1) > 1
    ]


def test_one_active_replica_and_failover_on_sigkill(
    control_plane: Any, namespace: str, replicas: dict[str, OperatorProcess]
) -> None:
    cp, ns = control_plane, namespace
    a, b = replicas["a"], replicas["b"]
    wait_for(
        lambda: {"operator-a", "operator-b"} <= set(peers(cp, ns)),
        timeout=30,
        message="both replicas' keep-alives in the KopfPeering",
    )
    st = peers(cp, ns)
    assert (st["operator-a"]["priority"], st["operator-b"]["priority"]) == (200, 100)

    # Only "a" works: the job goes through its first phases, its children exist once.
    apply(cp, ns, manifest("ha", distributed={"nodes": 2, "gpusPerNode": 1}))
    wait_gang_running(cp, ns, "ha", 2)
    wait_phase(cp, ns, "ha", "Initializing", 60)
    trainer = Trainer(cp, ns, "ha")
    trainer.report("training", 10, metrics={"trainLoss": "2.0"})
    wait_phase(cp, ns, "ha", "Training", 60)
    time.sleep(3)  # a few sweep rounds (1 s timer) in which a wrongly active standby would act
    assert reconciles(a) > 0
    assert reconciles(b) == 0, "the standby reconciled while the active replica was alive"
    assert "sweep: active" not in b.log_text()
    assert "sweep: standing by for operator-a (priority 200 > 100)" in b.log_text()
    assert [j["metadata"]["name"] for j in get(cp, ns, "jobs")["items"]] == ["ha-train"]
    assert len(pods(cp, ns, "ha")) == 2
    assert not duplicated_events(cp, ns, "ha")

    # SIGKILL the active replica: no goodbye in the peering, so "b" must wait out its keep-alive.
    a.kill()
    killed = time.monotonic()
    wait_for(lambda: reconciles(b) > 0, timeout=LIFETIME + 20, message="the standby takes over")
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL: {takeover:.1f}s (peering lifetime {LIFETIME}s)")
    assert takeover <= LIFETIME + 5, f"takeover took {takeover:.1f}s"
    wait_for(  # the sweep follows within a round (1 s) of Kopf's resume
        lambda: "sweep: active in peering" in b.log_text(), timeout=10, message="b's sweep active"
    )

    # "b" finishes the job without a second gang or a second set of children.
    trainer.report("evaluating", 100)
    wait_phase(cp, ns, "ha", "Evaluating", 60)
    trainer.report("uploading", 100, evaluation={"results": {"eval_loss": "0.9"}})
    wait_phase(cp, ns, "ha", "Uploading", 60)
    running = sorted(
        pods(cp, ns, "ha"),
        key=lambda p: int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]),
    )
    summary = {"artifacts": {"uri": "s3://artifacts/team-a/bot/runs/ha/",
                             "manifestUri": "s3://artifacts/team-a/bot/runs/ha/manifest.json"}}  # fmt: skip
    set_pod_result(cp, ns, running[1]["metadata"]["name"], 0)
    set_pod_result(cp, ns, running[0]["metadata"]["name"], 0, json.dumps(summary))
    final = wait_phase(cp, ns, "ha", "Succeeded", 90)
    assert final["attempts"] == 1 and final["artifacts"]["uri"] == summary["artifacts"]["uri"]
    assert [j["metadata"]["name"] for j in get(cp, ns, "jobs")["items"]] == ["ha-train"]
    reasons = [e["reason"] for e in events(cp, ns, "ha")]
    for r in ("Initializing", "Training", "Evaluating", "Uploading", "Succeeded"):
        assert r in reasons, reasons
    assert not duplicated_events(cp, ns, "ha")


def test_graceful_stop_hands_over_at_once(
    control_plane: Any, namespace: str, replicas: dict[str, OperatorProcess]
) -> None:
    cp, ns = control_plane, namespace
    a, b = replicas["a"], replicas["b"]
    wait_for(
        lambda: {"operator-a", "operator-b"} <= set(peers(cp, ns)),
        timeout=30,
        message="both replicas' keep-alives in the KopfPeering",
    )
    time.sleep(2)  # a few sweep rounds of the standby
    assert "sweep: active" not in b.log_text()
    stopped = time.monotonic()
    a.stop()  # SIGTERM: Kopf removes its keep-alive on the way out
    assert "operator-a" not in peers(cp, ns)
    wait_for(
        lambda: "sweep: active in peering" in b.log_text(),
        timeout=LIFETIME,
        message="b's sweep active before a's keep-alive would have expired",
    )
    handover = time.monotonic() - stopped
    print(f"hand-over after SIGTERM: {handover:.1f}s (peering lifetime {LIFETIME}s)")
    apply(cp, ns, manifest("after", distributed={"nodes": 1, "gpusPerNode": 1}))
    wait_phase(cp, ns, "after", "Initializing", 60)
    assert reconciles(b) > 0
