"""The Flux manifests, and FineTuneJob health as Flux computes it: with the real kstatus library.

Why it exists: Flux's `wait`/`healthChecks` read custom resources through kstatus
(sigs.k8s.io/cli-utils/pkg/kstatus), which only understands observedGeneration and the Reconciling
and Stalled conditions. The statuses here come from the operator's own status code, and a small Go
program (test_gitops_kstatus/) runs kstatus on them, so the mapping Flux users get is the one
documented in deploy/gitops/flux/kustomization-jobs.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator.status import desired_conditions, merge_conditions

REPO = Path(__file__).resolve().parents[2]
FLUX = REPO / "deploy" / "gitops" / "flux"
GO_SRC = Path(__file__).parent / "test_gitops_kstatus"
NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def kstatus() -> Path:
    """Build the kstatus checker once (cached by the hash of its sources, outside the clone)."""
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        pytest.skip("Go is not installed (it is needed for the control plane too)")
    digest = hashlib.sha256(
        b"".join((GO_SRC / f).read_bytes() for f in ("main.go", "go.mod", "go.sum"))
    )
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finetune-operator"
    binary = cache / f"kstatuscheck-{digest.hexdigest()[:16]}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_SRC, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return binary


def compute(kstatus: Path, objs: list[dict[str, Any]]) -> list[dict[str, str]]:
    proc = subprocess.run(
        [str(kstatus)], input=json.dumps(objs), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, str]] = json.loads(proc.stdout)
    return result


def job(phase: str, *, generation: int = 1, observed: int = 1, reason: str = "") -> dict[str, Any]:
    conds = merge_conditions(
        [],
        desired_conditions(phase=phase, reason=reason or phase, message=f"{phase} message", stage=None,
                           evaluation=None, serving_enabled=False),
        now=NOW,
        generation=observed,
    )  # fmt: skip
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bot", "namespace": "team-a", "generation": generation},
        "spec": {},
        "status": {"observedGeneration": observed, "phase": phase, "conditions": conds},
    }


@pytest.mark.slow
def test_kstatus_of_every_phase(kstatus: Path) -> None:
    phases = ["Pending", "Initializing", "Training", "Evaluating", "Uploading", "Deploying",
              "Succeeded", "Failed", "Suspended"]  # fmt: skip
    results = compute(kstatus, [job(p) for p in phases])
    got = {p: r["status"] for p, r in zip(phases, results, strict=True)}
    assert got == {
        "Pending": "InProgress", "Initializing": "InProgress", "Training": "InProgress",
        "Evaluating": "InProgress", "Uploading": "InProgress", "Deploying": "InProgress",
        # kstatus reads Ready=False (which the operator sets while suspended) as InProgress: a
        # Kustomization with wait: true waits on a suspended job (documented in the manifest).
        "Succeeded": "Current", "Failed": "Failed", "Suspended": "InProgress",
    }  # fmt: skip
    failed = compute(kstatus, [job("Failed", reason="InvalidData")])[0]
    assert failed["message"] == "Failed message"


@pytest.mark.slow
def test_kstatus_waits_for_the_operator_to_observe_a_new_generation(kstatus: Path) -> None:
    (result,) = compute(kstatus, [job("Succeeded", generation=2, observed=1)])
    assert result["status"] == "InProgress"
    assert "generation" in result["message"].lower()


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_flux_manifests_fit_together() -> None:
    kustomize = yaml.safe_load((FLUX / "kustomization.yaml").read_text())
    objs = [d for res in kustomize["resources"] for d in _docs(FLUX / res)]
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    assert set(by_kind) == {"GitRepository", "Kustomization"}
    operator = by_kind["Kustomization"]["finetune-operator"]["spec"]
    jobs = by_kind["Kustomization"]["finetune-jobs-team-a"]["spec"]
    # Each sourceRef names a GitRepository defined here; dependsOn names a Kustomization.
    for spec in (operator, jobs):
        assert spec["sourceRef"]["name"] in by_kind["GitRepository"]
    assert [d["name"] for d in jobs["dependsOn"]] == ["finetune-operator"]
    assert jobs["wait"] is True and jobs["prune"] is True
    # The operator Kustomization's path exists in this repository and holds the HelmRelease it
    # health-checks; the HelmRelease's chart path exists too.
    op_dir = REPO / operator["path"].lstrip("./")
    (release,) = [d for f in sorted(op_dir.glob("*.yaml")) for d in _docs(f)]
    assert release["kind"] == "HelmRelease"
    check = operator["healthChecks"][0]
    assert (check["kind"], check["name"]) == ("HelmRelease", release["metadata"]["name"])
    chart = REPO / release["spec"]["chart"]["spec"]["chart"].lstrip("./")
    assert (chart / "Chart.yaml").is_file()
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    for key in release["spec"]["values"]["monitoring"]:
        assert key in defaults["monitoring"]
    text = (FLUX / "kustomization-jobs.yaml").read_text()
    assert "NEW FineTuneJob" in text and "serving.endpoint" in text
