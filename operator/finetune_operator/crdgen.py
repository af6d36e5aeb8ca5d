"""Generate the FineTuneJob CRD from the pydantic models in ``finetune_operator.api``.

Why it exists: the API has one source of truth, the Python models. This module walks them and
writes the structural OpenAPI v3 schema of crds/finetunejobs.finetune.dev.yaml (and the chart's
byte-identical copy): types, descriptions, defaults, enums, ranges, patterns and maxItems/maxLength
(which CEL cost estimation needs), the cross-field CEL rules declared on the models (``CEL``), and
immutability (``self == oldSelf``) on the training fields. tests/unit/test_crd.py fails when the
committed files differ from what this prints.

    python -m finetune_operator.crdgen           # print the CRD
    python -m finetune_operator.crdgen --write   # write crds/ and helm/finetune-operator/crds/
    finetune crd [--write]                       # the same through the CLI
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from finetune_operator.api import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    ObjectMeta,
)
from finetune_operator.apitypes import FieldMarker

__all__ = [
    "CRD_NAME",
    "CRD_PATHS",
    "build_crd",
    "cli",
    "model_schema",
    "reference_markdown",
    "reference_rows",
    "render",
]

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_PATHS = (
    Path("crds") / f"{CRD_NAME}.yaml",
    Path("helm") / "finetune-operator" / "crds" / f"{CRD_NAME}.yaml",
)
HEADER = (
    "# Generated from operator/finetune_operator/api.py by `make crd`\n"
    "# (python -m finetune_operator.crdgen --write). Do not edit by hand: tests/unit/test_crd.py\n"
    "# fails when this file and the models drift apart.\n"
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase."},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Percent of training steps done.",
    },
    {
        "name": "Loss",
        "type": "string",
        "jsonPath": ".status.metrics.trainLoss",
        "description": "Latest training loss.",
    },
    {
        "name": "Eval",
        "type": "string",
        "jsonPath": ".status.metrics.evalLoss",
        "description": "Latest validation loss.",
    },
    {
        "name": "Endpoint",
        "type": "string",
        "jsonPath": ".status.serving.endpoint",
        "description": "Inference endpoint.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _doc(model: type[BaseModel]) -> str:
    return (inspect.getdoc(model) or model.__name__).split("\n\n")[0].replace("\n", " ")


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of one model: properties, required, and its CEL rules."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        props[wire] = _field_schema(info)
        if info.is_required():
            required.append(wire)
    out: dict[str, Any] = {"type": "object", "description": _doc(model), "properties": props}
    if required:
        out["required"] = required
    rules = [rule.crd() for rule in getattr(model, "CEL", ())]
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def _field_schema(info: FieldInfo) -> dict[str, Any]:
    schema = _type_schema(info.annotation, list(info.metadata))
    if info.description:
        schema["description"] = info.description
    default = _default(info)
    if default is not None:
        schema["default"] = default
    extra = info.json_schema_extra
    if isinstance(extra, dict):
        for key, value in extra.items():
            if key == "items":
                assert isinstance(value, dict)
                _merge(schema["items"], value)
            else:
                _merge(schema, {key: value})
    return _ordered(schema)


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return {}
        return value or None  # empty lists/maps: no default (keeps stored objects small)
    if info.default is PydanticUndefined or info.default is None:
        return None
    return info.default


def _merge(schema: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in copy.deepcopy(extra).items():
        if key == "x-kubernetes-validations":
            schema.setdefault(key, []).extend(value)
        else:
            schema[key] = value


def _type_schema(annotation: Any, metadata: list[Any]) -> dict[str, Any]:
    """Schema of a type: Optional/Annotated unwrapped, constraints from metadata applied."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_schema(args[0], list(annotation.__metadata__) + metadata)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        assert len(non_none) == 1, f"unsupported union {annotation}"
        return _type_schema(non_none[0], metadata)
    schema: dict[str, Any]
    kind = "string"
    if origin is typing.Literal:
        schema = {"type": "string", "enum": list(args)}
    elif annotation is bool:
        schema, kind = {"type": "boolean"}, "bool"
    elif annotation is int:
        schema, kind = {"type": "integer"}, "number"
    elif annotation is str:
        schema = {"type": "string"}
    elif origin is list:
        schema, kind = {"type": "array", "items": _type_schema(args[0], [])}, "array"
    elif origin is dict:
        kind = "object"
        if args[1] is Any:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        else:
            schema = {"type": "object", "additionalProperties": _type_schema(args[1], [])}
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        schema, kind = model_schema(annotation), "object"
    else:
        raise TypeError(f"crdgen: unsupported type {annotation!r}")
    for meta in metadata:
        _apply_constraint(schema, meta, kind)
    return schema


_LENGTH_KEYS = {
    "string": ("minLength", "maxLength"),
    "array": ("minItems", "maxItems"),
    "object": ("minProperties", "maxProperties"),
}


def _apply_constraint(schema: dict[str, Any], meta: Any, kind: str) -> None:
    lo, hi = _LENGTH_KEYS.get(kind, ("minLength", "maxLength"))
    if isinstance(meta, annotated_types.Ge):
        schema["minimum"] = meta.ge
    elif isinstance(meta, annotated_types.Le):
        schema["maximum"] = meta.le
    elif isinstance(meta, annotated_types.MinLen):
        schema[lo] = meta.min_length
    elif isinstance(meta, annotated_types.MaxLen):
        schema[hi] = meta.max_length
    elif isinstance(meta, StringConstraints):
        if meta.min_length is not None:
            schema["minLength"] = meta.min_length
        if meta.max_length is not None:
            schema["maxLength"] = meta.max_length
    elif isinstance(meta, FieldMarker):
        _merge(schema, meta.crd())
    else:
        raise TypeError(f"crdgen: unsupported constraint {meta!r}")


_KEY_ORDER = ("type", "description", "default", "enum", "minimum", "maximum")


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Stable, readable key order: type, description, default, ... then the rest."""
    head = {k: schema[k] for k in _KEY_ORDER if k in schema}
    return {**head, **{k: v for k, v in schema.items() if k not in head}}


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict."""
    root = model_schema(FineTuneJob)
    spec = model_schema(FineTuneJobSpec)
    status = model_schema(FineTuneJobStatus)
    schema = {
        "type": "object",
        "description": "A FineTuneJob turns base model + datasets into a fine-tuned model in "
        "S3, evaluated and (optionally) served behind an evaluation gate.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "finetune.dev/v1alpha1"},
            "kind": {"type": "string", "description": "FineTuneJob"},
            # the only metadata restriction a CRD may make: the name (see api.MAX_NAME_LENGTH)
            "metadata": {
                "type": "object",
                "properties": {
                    "name": _type_schema(
                        ObjectMeta.model_fields["name"].annotation,
                        list(ObjectMeta.model_fields["name"].metadata),
                    )
                },
            },
            "spec": {**spec, "description": "The desired fine-tuning run."},
            "status": {**status, "description": "Observed state (written by the operator)."},
        },
        "x-kubernetes-validations": root["x-kubernetes-validations"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["all", "ml"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Never write YAML anchors/aliases: kubectl and readers see every rule in place."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_NUMBER_LIKE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    """Quote strings a YAML 1.2 reader (kubectl) would take for numbers, such as 2e-4."""
    style = '"' if _NUMBER_LIKE.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_NoAliasDumper.add_representer(str, _str)


def render() -> str:
    """The CRD file's text (header comment + YAML)."""
    body = yaml.dump(
        build_crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True
    )
    return HEADER + body


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) for every spec field, in schema order."""
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows: list[tuple[str, str, str, str]] = []

    def visit(node: dict[str, Any], path: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            sub = f"{path}.{name}"
            kind = child["type"]
            if kind == "array":
                item = child["items"]
                kind = f"[]{item['type']}"
                if "enum" in item:
                    kind = "[]" + "\\|".join(item["enum"])
            elif "enum" in child:
                kind = "\\|".join(child["enum"])
            default = json.dumps(child["default"]) if "default" in child else ""
            if default in ("{}",):
                default = ""
            text = child.get("description", "").replace("|", "\\|")
            rows.append((sub, kind, default, text))
            target = child["items"] if child["type"] == "array" else child
            if target.get("properties"):
                visit(target, sub + ("[]" if child["type"] == "array" else ""))

    visit(spec, "spec")
    return rows


def reference_markdown() -> str:
    """The README's field table (kept in sync by tests/unit/test_crd.py)."""
    lines = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for path, kind, default, text in reference_rows():
        dflt = f"`{default}`" if default else ""
        lines.append(f"| `{path}` | {kind} | {dflt} | {text} |")
    return "\n".join(lines) + "\n"


def cli(argv: Sequence[str]) -> int:
    """``finetune crd [--write] [--reference] [--root DIR]``."""
    parser = argparse.ArgumentParser(
        prog="finetune crd", description="Print (or --write) the CRD generated from the API."
    )
    parser.add_argument(
        "--write", action="store_true", help="write crds/ and the chart's crds/ copy"
    )
    parser.add_argument("--root", default=".", help="repository root (default: .)")
    parser.add_argument(
        "--reference", action="store_true", help="print the README's spec field table instead"
    )
    args = parser.parse_args(list(argv))
    if args.reference:
        sys.stdout.write(reference_markdown())
        return 0
    text = render()
    if not args.write:
        sys.stdout.write(text)
        return 0
    for rel in CRD_PATHS:
        path = Path(args.root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
