"""``finetune validate``: check FineTuneJob manifests and explain every problem in one line each.

Why it exists: a manifest is written by a person; a wrong one must be caught before a cluster (or
``finetune run``) spends anything on it, with a message that names the field and says what is
allowed. The rules themselves live in ``finetune_operator.api`` (the same ones the CRD enforces at
admission); this module turns YAML into documents, runs the models in strict mode (no silent
coercion of ``"3"`` to 3, no snake_case aliases: exactly what the kube-apiserver accepts), and
formats pydantic's errors as ``FILE: spec.datasets[0].format: what is wrong and what is allowed``.

Used by the ``finetune`` CLI, the local runner (``load_job(path, local=True)``) and the operator
(``problems_for(body)``).
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from finetune_operator.api import API_VERSION, KIND, RULES_ERROR, FineTuneJob, format_loc

__all__ = [
    "ManifestError",
    "check_file",
    "cli",
    "load_documents",
    "load_job",
    "load_manifest",
    "problems_for",
    "validate_document",
]


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` holds one formatted line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ------------------------------------------------------------------------------- documents


class _KubeYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as kubectl does.

    PyYAML follows YAML 1.1, where ``2e-4`` (no dot) is a string; kubectl's YAML reader takes it
    for a number. Without this, ``learningRate: 2e-4`` would pass ``finetune validate`` and then
    be rejected by the cluster ("must be of type string").
    """


_KubeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def load_documents(path: str | Path) -> list[Any]:
    """Every non-empty YAML document of a file; ManifestError (one line) if it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise ManifestError([f"{p}: no such file"])
    if not p.is_file():
        raise ManifestError([f"{p}: not a file"])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"{p}: cannot be read as UTF-8 text: {exc}"]) from exc
    try:
        docs = [d for d in yaml.load_all(text, Loader=_KubeYamlLoader) if d is not None]
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError([f"{p}: not valid YAML{where}: {problem}"]) from exc
    if not docs:
        raise ManifestError([f"{p}: no YAML document in the file; expected a FineTuneJob"])
    return docs


# ------------------------------------------------------------------------------- validation


def validate_document(doc: Any, *, local: bool = False) -> tuple[FineTuneJob | None, list[str]]:
    """(the job, []) if the document is a valid FineTuneJob, else (None, problem lines).

    Lines read ``field.path: message``. ``local`` allows local paths besides s3:// URIs (the
    rules of ``finetune run``); the default is the cluster's rules.
    """
    if not isinstance(doc, dict):
        return None, [
            f"the document is a {type(doc).__name__}, not a mapping; a FineTuneJob is a mapping "
            "with apiVersion, kind, metadata and spec"
        ]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if api_version != API_VERSION or kind != KIND:
        return None, [
            f"apiVersion/kind: expected apiVersion: {API_VERSION} and kind: {KIND}, got "
            f"apiVersion: {api_version!r} and kind: {kind!r}"
        ]
    try:
        job = FineTuneJob.model_validate(
            doc, strict=True, by_alias=True, by_name=False, context={"local": local}
        )
    except ValidationError as exc:
        return None, _format_errors(exc)
    return job, []


def problems_for(doc: Any, *, local: bool = False) -> list[str]:
    """The problems of one document as ``field.path: message`` lines (empty when valid)."""
    return validate_document(doc, local=local)[1]


def check_file(path: str | Path, *, local: bool = False) -> tuple[list[FineTuneJob], list[str]]:
    """Validate every document of a file: (valid jobs, ``FILE: path: message`` lines)."""
    try:
        docs = load_documents(path)
    except ManifestError as exc:
        return [], exc.problems
    jobs: list[FineTuneJob] = []
    lines: list[str] = []
    for i, doc in enumerate(docs):
        prefix = f"{path}" if len(docs) == 1 else f"{path} (document {i + 1})"
        job, problems = validate_document(doc, local=local)
        if job is not None:
            jobs.append(job)
        lines += [f"{prefix}: {p}" for p in problems]
    return jobs, lines


def load_job(path: str | Path, *, local: bool = False) -> FineTuneJob:
    """The one FineTuneJob of a file, or ManifestError with every problem, one line each."""
    jobs, lines = check_file(path, local=local)
    if lines:
        raise ManifestError(lines)
    if len(jobs) != 1:
        raise ManifestError(
            [f"{path}: holds {len(jobs)} FineTuneJob documents; give one job per file"]
        )
    return jobs[0]


load_manifest = load_job


# ------------------------------------------------------------------------------- formatting


def _format_errors(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == RULES_ERROR:
            for sub, msg in (err.get("ctx") or {}).get("problems", []):
                lines.append(f"{format_loc(loc + tuple(sub)) or '(document)'}: {msg}")
            continue
        lines.append(f"{format_loc(loc) or '(document)'}: {_message(err)}")
    return list(dict.fromkeys(lines))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


_TYPE_WORDS = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _message(err: ErrorDetails) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(tuple(err["loc"][:-1]))
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown field (check the spelling; fields are camelCase){hint}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{value!r} is not allowed; use one of: {expected}"
    if kind == "string_type":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f'must be a string, got {_kind(value)}; quote it: "{value}"'
        return f"must be a string, got {_kind(value)}"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {_kind(value)}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}, got {value!r}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}, got {value!r}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"allows at most {ctx.get('max_length')} items/characters"
    if kind == "string_too_short":
        return f"must not be empty (at least {ctx.get('min_length')} character(s))"
    if kind == "string_too_long":
        return f"is too long: at most {ctx.get('max_length')} characters"
    return str(err["msg"])


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """The wire names of the fields of the model found at ``loc`` (for 'unknown field' hints)."""
    model: Any = FineTuneJob
    for part in loc:
        if isinstance(part, int):
            continue
        model = _field_model(model, part)
        if model is None:
            return []
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _field_model(model: Any, wire_name: str) -> Any:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    for name, info in model.model_fields.items():
        if (info.alias or name) == wire_name:
            return _unwrap(info.annotation)
    return None


def _unwrap(annotation: Any) -> Any:
    """list[X] / X | None / Annotated[X, ...] -> X (the model class, when there is one)."""
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


# ------------------------------------------------------------------------------- CLI


def cli(argv: Sequence[str]) -> int:
    """``finetune validate [--local] FILE...``: exit 0 if every document is valid, else 1."""
    parser = argparse.ArgumentParser(
        prog="finetune validate",
        description="Check FineTuneJob manifests: every problem is printed as "
        "FILE: field.path: what is wrong and what is allowed.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML manifests")
    parser.add_argument(
        "--local",
        action="store_true",
        help="the rules of `finetune run`: local paths are allowed besides s3:// URIs",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    args = parser.parse_args(list(argv))
    failed = 0
    for path in args.files:
        jobs, lines = check_file(path, local=args.local)
        for line in lines:
            print(line, file=sys.stderr)
        if lines:
            failed += 1
        elif not args.quiet:
            names = ", ".join(j.metadata.name for j in jobs)
            print(f"{path}: valid ({names})")
    if failed:
        print(f"{failed} of {len(args.files)} file(s) have problems", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
