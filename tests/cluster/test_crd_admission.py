"""The CRD at a REAL kube-apiserver: the invalid corpus is rejected, the examples accepted, the
training fields immutable, defaults applied, printer columns and `kubectl explain` working.

The same corpus (tests/unit/invalid/cases.yaml) is checked against the Python validation in
tests/unit/test_validation_corpus.py; together they prove the CRD's OpenAPI + CEL and the pydantic
models accept and reject the same manifests. Dry-run creates (`--dry-run=server`) run the full
admission chain (schema, CEL, strict field validation) without storing anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator.api import DEFAULT_TRAINER_IMAGE

from tests.unit.invalid.corpus import Case, apply_patch, base_manifest, load_cases

pytestmark = pytest.mark.cluster

CASES = load_cases()
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def dry_run_create(cp: Any, doc: dict[str, Any], namespace: str = "default") -> Any:
    doc = json.loads(json.dumps(doc))
    doc["metadata"].pop("namespace", None)
    return cp.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-",
        input=json.dumps(doc), check=False,
    )  # fmt: skip


def test_base_manifest_is_accepted(control_plane: Any, crd_installed: str) -> None:
    proc = dry_run_create(control_plane, base_manifest())
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_case_is_rejected_naming_its_path(
    control_plane: Any, crd_installed: str, case: Case
) -> None:
    proc = dry_run_create(control_plane, case.manifest)
    assert proc.returncode != 0, f"{case.id}: the kube-apiserver accepted it"
    assert case.crd_path in proc.stderr, proc.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(control_plane: Any, crd_installed: str, path: Path) -> None:
    proc = dry_run_create(control_plane, yaml.safe_load(path.read_text()))
    assert proc.returncode == 0, proc.stderr


def _patch(cp: Any, ns: str, name: str, body: dict[str, Any], *extra: str) -> Any:
    return cp.kubectl(
        "patch", "-n", ns, f"finetunejob/{name}", "--type=merge", "-p", json.dumps(body), *extra,
        check=False,
    )  # fmt: skip


def test_training_fields_immutable_suspend_serving_run_policy_mutable(
    control_plane: Any, crd_installed: str, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(base_manifest()))
    name = base_manifest()["metadata"]["name"]
    rejected = {
        "spec.hyperparameters": {"hyperparameters": {"learningRate": "1e-3"}},
        "spec.datasets": {
            "datasets": [{"name": "other", "uri": "s3://d/o.jsonl", "format": "chat"}]
        },
        "spec.baseModel": {"baseModel": {"uri": "s3://models/other/"}},
        "spec.method": {"method": {"lora": {"r": 32}}},
        "spec.validation": {"validation": None},
    }
    for field, body in rejected.items():
        proc = _patch(cp, namespace, name, {"spec": body})
        assert proc.returncode != 0, f"{field} changed"
        assert field in proc.stderr and "immutable" in proc.stderr, proc.stderr
    for body in (
        {"suspend": True},
        {"serving": {"enabled": True, "replicas": 2}},
        {"runPolicy": {"ttlSecondsAfterFinished": 60, "backoffLimit": 1}},
    ):
        proc = _patch(cp, namespace, name, {"spec": body})
        assert proc.returncode == 0, proc.stderr
    got = json.loads(cp.kubectl("get", "-n", namespace, f"ftj/{name}", "-o", "json").stdout)
    assert got["spec"]["suspend"] is True
    assert got["spec"]["serving"]["replicas"] == 2
    assert got["spec"]["hyperparameters"]["learningRate"] == "2e-4"


def test_defaults_status_subresource_and_printer_columns(
    control_plane: Any, crd_installed: str, namespace: str
) -> None:
    cp = control_plane
    doc = apply_patch(base_manifest(), {"metadata.name": "columns"})
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(doc))
    got = json.loads(cp.kubectl("get", "-n", namespace, "ftj/columns", "-o", "json").stdout)
    spec = got["spec"]
    assert spec["template"]["image"] == DEFAULT_TRAINER_IMAGE
    assert spec["hyperparameters"]["lrScheduler"] == "cosine"
    assert spec["serving"]["promote"]["metric"] == "eval_loss"
    status = {
        "status": {
            "phase": "Training",
            "progress": {"step": 1200, "totalSteps": 5000, "percent": 24},
            "metrics": {"trainLoss": "0.91", "evalLoss": "1.05"},
            "serving": {"endpoint": "http://support-bot.ns.svc:8000"},
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Training"},
                {"type": "Reconciling", "status": "True", "reason": "Training"},
            ],
        }
    }
    proc = _patch(cp, namespace, "columns", status, "--subresource=status")
    assert proc.returncode == 0, proc.stderr
    table = cp.kubectl("get", "-n", namespace, "ftj").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "ENDPOINT", "AGE"]
    row = next(line.split() for line in table[1:] if line.startswith("columns "))
    assert row[1:6] == ["Training", "24", "0.91", "1.05", "http://support-bot.ns.svc:8000"]
    # a status write through the main resource is ignored (status subresource)
    _patch(cp, namespace, "columns", {"status": {"phase": "Failed"}})
    got = json.loads(cp.kubectl("get", "-n", namespace, "ftj/columns", "-o", "json").stdout)
    assert got["status"]["phase"] == "Training"
    assert [c["type"] for c in got["status"]["conditions"]] == ["Ready", "Reconciling"]


def test_kubectl_explain_describes_fields(control_plane: Any, crd_installed: str) -> None:
    out = control_plane.kubectl("explain", "ftj.spec.method.lora").stdout
    assert "LoRA" in out and "dropout" in out and "targetModules" in out
