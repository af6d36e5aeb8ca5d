"""Load the invalid-manifest corpus (cases.yaml): each case is the base manifest plus a patch.

Why it exists: the same corpus is checked by the Python validation (tests/unit) and by the real
kube-apiserver (tests/cluster); both build the manifests here, so they test the same documents.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CASES_FILE", "Case", "apply_patch", "base_manifest", "dump_yaml", "load_cases"]

CASES_FILE = Path(__file__).with_name("cases.yaml")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True)
class Case:
    """One invalid manifest and the field path its error must name."""

    id: str
    path: str  # named by `finetune validate`
    crd_path: str  # named by the kube-apiserver
    manifest: dict[str, Any]


def _tokens(path: str) -> list[str | int]:
    return [name if name else int(idx) for name, idx in _TOKEN.findall(path)]


def apply_patch(
    doc: dict[str, Any], set_: dict[str, Any] | None = None, delete: list[str] | None = None
) -> dict[str, Any]:
    """A copy of doc with `set_` ({dotted.path[0].x: value}) and `delete` ([paths]) applied."""
    out = copy.deepcopy(doc)
    for path, value in (set_ or {}).items():
        *parents, last = _tokens(path)
        node: Any = out
        for key in parents:
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        if isinstance(last, int) and last == len(node):
            node.append(copy.deepcopy(value))
        else:
            node[last] = copy.deepcopy(value)
    for path in delete or []:
        *parents, last = _tokens(path)
        node = out
        for key in parents:
            node = node[key]
        del node[last]
    return out


def base_manifest() -> dict[str, Any]:
    data = yaml.safe_load(CASES_FILE.read_text())
    base: dict[str, Any] = data["base"]
    return base


def load_cases() -> list[Case]:
    data = yaml.safe_load(CASES_FILE.read_text())
    cases = []
    for raw in data["cases"]:
        manifest = apply_patch(data["base"], raw.get("set"), raw.get("delete"))
        manifest["metadata"].setdefault("name", "corpus-base")
        cases.append(
            Case(
                id=raw["id"],
                path=raw["path"],
                crd_path=raw.get("crd_path", raw["path"]),
                manifest=manifest,
            )
        )
    return cases


class _QuotingDumper(yaml.SafeDumper):
    """Quotes strings kubectl would read as numbers (PyYAML writes "2e-4" bare)."""


_NUMBER_LIKE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if _NUMBER_LIKE.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_QuotingDumper.add_representer(str, _str)


def dump_yaml(*docs: dict[str, Any]) -> str:
    """Manifests as YAML text that kubectl and `finetune validate` read identically."""
    return yaml.dump_all(list(docs), Dumper=_QuotingDumper, sort_keys=False)
