"""Benchmark: how long the operator takes from "training finished" to a served (or kept) model.

Why: the rollout adds a phase after training; this measures its latency on the real control
plane (etcd, kube-apiserver, controller-manager, scheduler, kwok; the operator as a process with
a 1 s sweep), apart from model loading, which kwok does not do. Each round: a challenger's
training pod exits with its summary → the job reaches Succeeded (Deployed: the new ReplicaSet is
available and the old one scaled down; or ChampionKept). Writes bench/serving/results.json.

Run from the repository root: .venv/bin/python bench/serving/rollout_bench.py [rounds]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.cluster.test_rollout import get, manifest, status  # noqa: E402
from tests.support.controlplane import CRD_FILE, cp_module, set_pod_result, wait_for  # noqa: E402
from tests.support.operator import OperatorProcess  # noqa: E402


def one_round(cp: Any, ns: str, name: str, loss: str) -> tuple[str, float]:
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest(name)))

    def running() -> Any:
        doc = get(cp, ns, "pods", "", "-l", f"finetune.dev/job={name}")
        items = [p for p in (doc or {}).get("items", []) if p["status"].get("phase") == "Running"]
        return items[0]["metadata"]["name"] if items else None

    pod = wait_for(running, timeout=120, message=f"{name} training pod")
    summary = {
        "evaluation": {"results": {"eval_loss": loss}},
        "artifacts": {"uri": f"s3://a/{name}/"},
    }
    t0 = time.monotonic()
    set_pod_result(cp, ns, pod, 0, json.dumps(summary))
    st = wait_for(
        lambda: (s := status(cp, ns, name)).get("phase") in ("Succeeded", "Failed") and s,
        timeout=120,
        interval=0.1,
        message=f"{name} finished",
    )
    return str(st["reason"]), time.monotonic() - t0


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    tools = Path(os.environ.get("TOOLS_DIR") or cp_module.build_tools(REPO))
    logs = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    cp = cp_module.start(tools, logs_dir=logs)
    try:
        cp.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
        cp.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev")
        ns = "bench"
        cp.kubectl("create", "namespace", ns)
        wait_for(lambda: get(cp, ns, "serviceaccount", "default"), timeout=30)
        cp.kubectl(
            "create", "secret", "generic", "s3-creds", "-n", ns,
            "--from-literal=AWS_ACCESS_KEY_ID=x", "--from-literal=AWS_SECRET_ACCESS_KEY=x",
        )  # fmt: skip
        env = dict(cp.env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")])
        op = OperatorProcess(env, [ns], logs / "operator.log")
        op.start()
        try:
            samples: dict[str, list[float]] = {}
            for i in range(rounds):
                # Alternate better and worse challengers: promotions and kept champions.
                loss = f"{1.0 - 0.1 * i:.2f}" if i % 2 == 0 else "1.10"
                reason, seconds = one_round(cp, ns, f"r{i}", loss)
                samples.setdefault(reason, []).append(seconds)
                print(f"round {i}: eval_loss {loss} -> {reason} in {seconds:.2f}s", flush=True)
        finally:
            op.stop()
    finally:
        cp.stop()
    out = {
        reason: {
            "n": len(v),
            "median_s": round(statistics.median(v), 2),
            "max_s": round(max(v), 2),
        }
        for reason, v in samples.items()
    }
    (Path(__file__).parent / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
