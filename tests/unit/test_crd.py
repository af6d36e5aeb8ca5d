"""The CRD (crds/finetunejobs.finetune.dev.yaml) is generated from the API models and complete.

Fails when the committed CRD or the chart's copy drifts from `python -m finetune_operator.crdgen`
(run `make crd`), and checks what the kube-apiserver and `kubectl explain` rely on: a structural
schema with a description on every field, the CEL rules of every model, immutability of the
training fields, printer columns and the status subresource.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator import api, crdgen
from finetune_operator.validation import problems_for

CRD_FILE = Path("crds/finetunejobs.finetune.dev.yaml")
CHART_FILE = Path("helm/finetune-operator/crds/finetunejobs.finetune.dev.yaml")


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(crdgen.render())
    return doc


def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    v: dict[str, Any] = only
    return v


def schema(crd: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = version(crd)["schema"]["openAPIV3Schema"]
    return s


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("rel", [CRD_FILE, CHART_FILE])
def test_committed_crd_matches_the_models(repo_root: Path, rel: Path) -> None:
    committed = (repo_root / rel).read_text()
    assert committed == crdgen.render(), (
        f"{rel} is out of date with operator/finetune_operator/api.py: run `make crd`"
    )


def test_write_writes_both_files_identically(tmp_path: Path) -> None:
    assert crdgen.cli(["--write", "--root", str(tmp_path)]) == 0
    a, b = (tmp_path / p for p in crdgen.CRD_PATHS)
    assert a.read_bytes() == b.read_bytes() == crdgen.render().encode()


def test_names_scope_and_subresources(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "finetunejobs.finetune.dev"
    spec = crd["spec"]
    assert spec["group"] == "finetune.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FineTuneJob"
    assert spec["names"]["plural"] == "finetunejobs"
    assert spec["names"]["shortNames"] == ["ftj"]
    assert "ml" in spec["names"]["categories"]
    v = version(crd)
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {"status": {}}
    cols = {c["name"]: c["jsonPath"] for c in v["additionalPrinterColumns"]}
    assert list(cols) == ["Phase", "Progress", "Loss", "Eval", "Endpoint", "Age"]
    assert cols["Phase"] == ".status.phase"
    assert cols["Progress"] == ".status.progress.percent"


def test_structural_and_described(crd: dict[str, Any]) -> None:
    for path, node in walk(schema(crd)):
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node, f"{path}: no type (a structural schema needs one everywhere)"
        assert not any(k in node for k in ("anyOf", "oneOf", "allOf", "$ref")), path
        if path.startswith((".spec.", ".status.")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path}: no description (kubectl explain)"
        if preserve:
            top = path.split("[]")[0].rsplit(".", 1)[-1]
            assert top in {"resources", "tolerations", "affinity", "env"}, path


def test_every_string_under_a_cel_rule_is_bounded(crd: dict[str, Any]) -> None:
    """CEL cost estimation rejects rules over unbounded strings/lists; spec has none."""
    for path, node in walk(schema(crd)["properties"]["spec"], ".spec"):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            continue
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: string without maxLength"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: list without maxItems"


def test_model_rules_are_in_the_crd(crd: dict[str, Any]) -> None:
    in_crd = {
        r["rule"] for _, node in walk(schema(crd)) for r in node.get("x-kubernetes-validations", [])
    }
    models = [
        m
        for m in vars(api).values()
        if isinstance(m, type) and issubclass(m, api.BaseModel) and getattr(m, "CEL", ())
    ]
    assert len(models) >= 8
    for model in models:
        for rule in model.CEL:
            assert rule.rule in in_crd, model.__name__


def test_training_fields_are_immutable_and_the_rest_mutable(crd: dict[str, Any]) -> None:
    props = schema(crd)["properties"]["spec"]["properties"]
    for name, node in props.items():
        rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        if name in api.TRAINING_FIELDS:
            assert "self == oldSelf" in rules, name
        else:
            assert "self == oldSelf" not in rules, name
    assert set(props) - set(api.TRAINING_FIELDS) == {"suspend", "serving", "runPolicy"}


def test_defaults_and_enums_come_from_the_models(crd: dict[str, Any]) -> None:
    spec = schema(crd)["properties"]["spec"]["properties"]
    assert spec["method"]["properties"]["type"]["default"] == "lora"
    assert spec["method"]["properties"]["type"]["enum"] == ["full", "lora", "qlora"]
    lora = spec["method"]["properties"]["lora"]["properties"]
    assert (lora["r"]["minimum"], lora["r"]["maximum"]) == (1, 1024)
    assert spec["distributed"]["properties"]["gpusPerNode"]["maximum"] == 16
    assert spec["datasets"]["x-kubernetes-list-map-keys"] == ["name"]
    assert spec["hyperparameters"]["properties"]["learningRate"]["default"] == "2e-4"
    assert "epochs" not in spec["hyperparameters"].get("required", [])


def test_crd_defaults_are_valid_for_the_python_model(crd: dict[str, Any]) -> None:
    """A minimal manifest with every CRD default filled in still validates in Python."""

    def fill(node: dict[str, Any], value: Any) -> Any:
        if node.get("type") != "object" or not isinstance(value, dict):
            return value
        for name, child in (node.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = child["default"]
            if name in value:
                value[name] = fill(child, value[name])
        return value

    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "defaults"},
        "spec": {
            "baseModel": {"uri": "s3://models/m/"},
            "datasets": [{"name": "d", "uri": "s3://data/d.jsonl", "format": "text"}],
            "output": {"uri": "s3://out/x/"},
        },
    }
    filled = fill(schema(crd), doc)
    assert filled["spec"]["method"]["type"] == "lora"
    assert filled["spec"]["serving"]["promote"]["metric"] == "eval_loss"
    assert problems_for(filled) == []


def test_readme_field_reference_matches_the_crd(repo_root: Path, crd: dict[str, Any]) -> None:
    readme = (repo_root / "README.md").read_text()
    begin, end = "<!-- BEGIN FIELDS", "<!-- END FIELDS -->"
    assert begin in readme and end in readme, "README lost its FineTuneJob reference table"
    block = readme.split(begin, 1)[1].split("\n", 1)[1].split(end, 1)[0]
    assert block == crdgen.reference_markdown(), "run `finetune crd --reference` into README"
    # and every documented field exists in the CRD
    spec = schema(crd)["properties"]["spec"]
    known = {f".spec{path}" for path, _ in walk(spec)}
    for line in block.splitlines()[2:]:
        field = line.split("`")[1]
        assert "." + field in known, field
