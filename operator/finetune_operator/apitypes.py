"""Field markers shared by the Python validation and the generated CRD.

Why it exists: every rule of the FineTuneJob API must hold identically in two places, pydantic
(``finetune validate``, ``finetune run``, the operator) and the CRD's OpenAPI schema + CEL (the
kube-apiserver at admission). Each marker below is attached to a field with ``Annotated[str,
Marker(...)]``: pydantic calls its ``check`` and ``finetune_operator.crdgen`` asks it for the
schema keywords (``crd()``) that express the same rule, so the two cannot drift apart.

``Cel`` describes a cross-field rule of a model for the CRD; the same rule is written in Python in
the model's ``rule_problems``. The invalid-manifest corpus (tests/unit/invalid/) proves that both
reject the same manifests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, ValidationInfo
from pydantic_core import PydanticCustomError, core_schema

__all__ = [
    "DECIMAL_PATTERN",
    "DNS1035_LABEL",
    "DNS1123_LABEL",
    "DNS1123_SUBDOMAIN",
    "S3_URI_PATTERN",
    "SIGNED_DECIMAL_PATTERN",
    "Cel",
    "Choice",
    "DecimalString",
    "FieldMarker",
    "Matches",
    "ObjectUri",
    "cel_list",
]

DECIMAL_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$"
SIGNED_DECIMAL_PATTERN = r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$"
# s3://bucket[/key]: bucket names per AWS rules (3-63 chars, lowercase, digits, '.', '-').
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_MAX_URI = 1024


def cel_list(values: Sequence[str]) -> str:
    """A CEL list literal of strings: ['a', 'b']."""
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


@dataclass(frozen=True)
class Cel:
    """One CEL ``x-kubernetes-validations`` rule of a model (the CRD side of a Python rule).

    field_path names the offending field relative to the model (``.lora``), so that the
    kube-apiserver reports the same path as ``finetune validate``.
    """

    rule: str
    message: str
    field_path: str | None = None

    def crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


class FieldMarker:
    """Base of the field markers: a pydantic after-validator plus the CRD keywords."""

    def check(self, value: Any, info: ValidationInfo) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def crd(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self.check, handler(source))


def _num(x: float) -> str:
    """A bound as written in messages and CEL: 0 -> '0', 0.5 -> '0.5'."""
    return f"{x:g}"


@dataclass(frozen=True)
class DecimalString(FieldMarker):
    """A decimal written as a string ("2e-4"), as the Kubernetes API conventions require."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    signed: bool = False

    def range_text(self) -> str:
        parts = []
        if self.gt is not None:
            parts.append(f"> {_num(self.gt)}")
        if self.ge is not None:
            parts.append(f">= {_num(self.ge)}")
        if self.lt is not None:
            parts.append(f"< {_num(self.lt)}")
        return " and ".join(parts)

    def _what(self) -> str:
        rng = self.range_text()
        return "a decimal string" + (f" {rng}" if rng else "")

    def check(self, value: Any, info: ValidationInfo) -> Any:
        pattern = SIGNED_DECIMAL_PATTERN if self.signed else DECIMAL_PATTERN
        if not re.match(pattern, value) or not math.isfinite(float(value)):
            raise PydanticCustomError(
                "decimal_string",
                '\'{value}\' is not {what}; write a number such as "0.05" or "2e-4"',
                {"value": value, "what": self._what()},
            )
        x = float(value)
        if (
            (self.gt is not None and not x > self.gt)
            or (self.ge is not None and not x >= self.ge)
            or (self.lt is not None and not x < self.lt)
        ):
            raise PydanticCustomError(
                "decimal_range",
                "{value} is out of range: must be {what}",
                {"value": value, "what": self._what()},
            )
        return value

    def crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pattern": SIGNED_DECIMAL_PATTERN if self.signed else DECIMAL_PATTERN,
            "maxLength": 32,
        }
        conds = []
        if self.gt is not None:
            conds.append(f"double(self) > {float(self.gt)!r}")
        if self.ge is not None:
            conds.append(f"double(self) >= {float(self.ge)!r}")
        if self.lt is not None:
            conds.append(f"double(self) < {float(self.lt)!r}")
        if conds:
            out["x-kubernetes-validations"] = [
                {"rule": " && ".join(conds), "message": f"must be {self._what()}"}
            ]
        return out


@dataclass(frozen=True)
class ObjectUri(FieldMarker):
    """Where data lives: s3://bucket/key in a cluster; ``finetune run`` also takes local paths.

    The local rules are switched on with the validation context ``{"local": True}``.
    """

    def check(self, value: Any, info: ValidationInfo) -> Any:
        local = bool((info.context or {}).get("local"))
        if len(value) > _MAX_URI:
            raise PydanticCustomError(
                "uri_too_long", "is longer than {n} characters", {"n": _MAX_URI}
            )
        if re.match(S3_URI_PATTERN, value):
            return value
        if value.startswith("s3://"):
            raise PydanticCustomError(
                "s3_uri",
                "'{value}' is not a valid S3 URI; write s3://bucket/key with a bucket name of "
                "3-63 lowercase letters, digits, '.' or '-'",
                {"value": value},
            )
        if local:
            if not value.strip() or "://" in value:
                raise PydanticCustomError(
                    "local_uri",
                    "'{value}' is neither s3://bucket/key nor a local path",
                    {"value": value},
                )
            return value
        raise PydanticCustomError(
            "cluster_uri",
            "'{value}' is not an s3://bucket/key URI; in a cluster every location is S3 "
            "(local paths work only with `finetune run` / `finetune validate --local`)",
            {"value": value},
        )

    def crd(self) -> dict[str, Any]:
        return {"pattern": S3_URI_PATTERN, "maxLength": _MAX_URI}


@dataclass(frozen=True)
class Choice(FieldMarker):
    """A string from a fixed set where the Python type stays ``str`` (an enum in the CRD)."""

    values: tuple[str, ...]

    def check(self, value: Any, info: ValidationInfo) -> Any:
        if value not in self.values:
            raise PydanticCustomError(
                "choice",
                "'{value}' is not allowed; use one of: {allowed}",
                {"value": value, "allowed": ", ".join(self.values)},
            )
        return value

    def crd(self) -> dict[str, Any]:
        return {"enum": list(self.values)}


@dataclass(frozen=True)
class Matches(FieldMarker):
    """A string matching a pattern (names, label values), with a message saying what it is."""

    pattern: str
    what: str
    max_length: int
    allow_empty: bool = False

    @property
    def full_pattern(self) -> str:
        return f"^$|{self.pattern}" if self.allow_empty else self.pattern

    def check(self, value: Any, info: ValidationInfo) -> Any:
        if len(value) > self.max_length or not re.match(self.full_pattern, value):
            raise PydanticCustomError(
                "name_format",
                "'{value}' is not {what} of at most {n} characters",
                {"value": value, "what": self.what, "n": self.max_length},
            )
        return value

    def crd(self) -> dict[str, Any]:
        return {"pattern": self.full_pattern, "maxLength": self.max_length}
