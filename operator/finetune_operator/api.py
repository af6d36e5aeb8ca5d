"""The FineTuneJob API (finetune.dev/v1alpha1) as typed Python models.

Why it exists: this module is the one source of truth for the API. The CRD in crds/ is generated
from these models (``finetune_operator.crdgen``), ``finetune validate`` and ``finetune run`` check
manifests with them, the operator renders children from them, and the trainer reads its config
through them. Field names follow ARCHITECTURE.md §3; decimals are strings, as the Kubernetes API
conventions require.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError
from typing_extensions import Self

from finetune_operator.apitypes import (
    DNS1035_LABEL,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    Cel,
    Choice,
    DecimalString,
    Matches,
    ObjectUri,
    cel_list,
)

__all__ = [
    "API_VERSION",
    "FORMAT_COLUMNS",
    "GROUP",
    "KIND",
    "MAX_NAME_LENGTH",
    "METRICS",
    "PLURAL",
    "RULES_ERROR",
    "SHORT_NAME",
    "TASK_FORMATS",
    "TASK_METRICS",
    "TRAINING_FIELDS",
    "VERSION",
    "BaseModelRef",
    "BaselineSpec",
    "CheckpointingSpec",
    "DatasetSpec",
    "DeepSpeedSpec",
    "DistributedSpec",
    "EvalDatasetSpec",
    "EvaluationSpec",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "GateRule",
    "HyperparametersSpec",
    "LoraSpec",
    "MethodSpec",
    "ObjectMeta",
    "OutputSpec",
    "Problem",
    "PromoteSpec",
    "RunPolicySpec",
    "ServingSpec",
    "StorageSpec",
    "TemplateSpec",
    "ValidationSpec",
    "allowed_gate_metrics",
    "default_metrics",
    "effective_epochs",
    "effective_lora",
    "effective_metrics",
    "effective_processes_per_node",
    "format_loc",
    "resolve_spec",
]

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SHORT_NAME = "ftj"

Task = Literal["causal-lm", "sequence-classification", "token-classification"]
DataFormat = Literal["text", "completion", "instruction", "chat", "classification", "ner"]
MethodType = Literal["full", "lora", "qlora"]
Precision = Literal["bf16", "fp16", "fp32"]
LrScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
Engine = Literal["builtin", "vllm"]
GateOp = Literal["<", "<=", ">", ">=", "=="]
Phase = Literal[
    "Pending",
    "Initializing",
    "Training",
    "Evaluating",
    "Uploading",
    "Deploying",
    "Succeeded",
    "Failed",
    "Suspended",
]
Stage = Literal["pulling", "validating", "training", "evaluating", "uploading", "done"]

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-dev/finetune-trainer:0.1.0"

MAX_NAME_LENGTH = 40
"""Longest FineTuneJob name: children such as ``<name>-train-511.<name>-workers`` (pod hostname
and Service, 63-character DNS labels each), ``<name>-trainer`` and ``<name>-config`` must fit."""

TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "causal-lm": ("text", "completion", "instruction", "chat"),
    "sequence-classification": ("classification",),
    "token-classification": ("ner",),
}
"""Which dataset formats each task can learn from."""

METRICS = ("loss", "perplexity", "accuracy", "precision", "recall", "f1")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "causal-lm": ("loss", "perplexity"),
    "sequence-classification": ("loss", "accuracy", "precision", "recall", "f1"),
    "token-classification": ("loss", "accuracy", "precision", "recall", "f1"),
}
"""Metrics each task can measure; all of them are the default. Results are named eval_<metric>."""

FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "completion": ("prompt", "completion"),
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages",),
    "classification": ("text", "text_pair", "label"),
    "ner": ("tokens", "tags"),
}
"""The columns each format reads; ``columns`` maps these names to the file's own."""

RULES_ERROR = "finetune_rules"
"""pydantic error type of cross-field problems; ``ctx["problems"]`` lists (loc, message)."""


Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]
"""A cross-field problem: the path relative to the model that found it (wire names), a message."""


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected (never silently dropped).

    Cross-field rules live in ``rule_problems`` (Python) and ``CEL`` (the same rules for the CRD);
    every problem is reported at once as one ``finetune_rules`` error whose context lists them.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        validate_default=False,
    )

    CEL: ClassVar[tuple[Cel, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The manifest form: camelCase keys, None values left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def rule_problems(self) -> list[Problem]:
        """Cross-field problems of this model (none by default)."""
        return []

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        problems = self.rule_problems()
        if problems:
            text = "; ".join(f"{format_loc(loc) or '.'}: {msg}" for loc, msg in problems)
            raise PydanticCustomError(RULES_ERROR, "{text}", {"text": text, "problems": problems})
        return self


def format_loc(loc: Sequence[str | int]) -> str:
    """('spec', 'datasets', 0, 'format') -> 'spec.datasets[0].format'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# ------------------------------------------------------------------------------- field types

Uri = Annotated[str, ObjectUri()]
PositiveDecimal = Annotated[str, DecimalString(gt=0)]
NonNegativeDecimal = Annotated[str, DecimalString(ge=0)]
Fraction = Annotated[str, DecimalString(gt=0, lt=1)]  # 0 < x < 1
HalfOpenFraction = Annotated[str, DecimalString(ge=0, lt=1)]  # 0 <= x < 1
SignedDecimal = Annotated[str, DecimalString(signed=True)]
JobName = Annotated[
    str,
    Matches(
        DNS1035_LABEL,
        "a FineTuneJob name (lowercase letters, digits and '-', starting with a letter)",
        MAX_NAME_LENGTH,
    ),
]
DatasetName = Annotated[
    str, Matches(DNS1123_LABEL, "a dataset name (lowercase letters, digits and '-')", 63)
]
ObjectName = Annotated[
    str, Matches(DNS1123_SUBDOMAIN, "a Kubernetes object name (lowercase, digits, '-', '.')", 253)
]
OptionalObjectName = Annotated[
    str,
    Matches(
        DNS1123_SUBDOMAIN,
        "a Kubernetes object name (lowercase, digits, '-', '.') or empty",
        253,
        allow_empty=True,
    ),
]
LabelValue = Annotated[
    str,
    Matches(
        r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        "a label value (letters, digits, '-', '_', '.') or empty",
        63,
        allow_empty=True,
    ),
]
ServiceName = Annotated[
    str,
    Matches(
        DNS1035_LABEL,
        "a Service name (lowercase letters, digits and '-', starting with a letter)",
        MAX_NAME_LENGTH,
    ),
]
MetricName = Annotated[str, Choice(METRICS)]
EvalMetricName = Annotated[str, Choice(tuple(f"eval_{m}" for m in METRICS))]
ShortString = Annotated[str, StringConstraints(max_length=256)]

_PASSTHROUGH: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}
_SET: JsonDict = {"x-kubernetes-list-type": "set"}
_IMMUTABLE: JsonDict = {
    "x-kubernetes-validations": [
        {
            "rule": "self == oldSelf",
            "message": "is immutable once the job is created (suspend, serving and runPolicy "
            "may change); create a new FineTuneJob instead",
        }
    ]
}


def _columns_cel(var: str) -> str:
    """CEL: every key of <var>.columns is a column of <var>.format."""
    by_format = " : ".join(
        f"{var}.format == '{fmt}' ? k in {cel_list(cols)}" for fmt, cols in FORMAT_COLUMNS.items()
    )
    return f"!has({var}.columns) || {var}.columns.all(k, {by_format} : false)"


def _columns_problems(fmt: str | None, columns: dict[str, str]) -> list[Problem]:
    if fmt is None:
        return []
    allowed = FORMAT_COLUMNS[fmt]
    bad = [k for k in columns if k not in allowed]
    if not bad:
        return []
    return [
        (
            ("columns",),
            f"{', '.join(repr(k) for k in bad)} is not a column of format {fmt}; map only its "
            f"columns: {', '.join(allowed)}",
        )
    ]


# --------------------------------------------------------------------------------------- spec


class BaseModelRef(_Model):
    """Where the base model comes from: exactly one of uri or fromJob."""

    CEL = (
        Cel(
            "has(self.uri) != has(self.fromJob)",
            "set exactly one of uri (a model in storage) or fromJob (another FineTuneJob's output)",
        ),
    )

    uri: Uri | None = Field(
        None,
        description="Base model location: s3://bucket/prefix/ (any S3-compatible store) or, in "
        "`finetune run`, a local directory. The prefix holds a Hugging Face model "
        "(config.json, weights, tokenizer). Exactly one of uri or fromJob.",
    )
    from_job: JobName | None = Field(
        None,
        description="Continue from another FineTuneJob in the same namespace: its output "
        "(merged model, or base model plus adapter) becomes this job's base model. Exactly one "
        "of uri or fromJob.",
    )

    def rule_problems(self) -> list[Problem]:
        if (self.uri is None) == (self.from_job is None):
            both = "both are set" if self.uri is not None else "neither is set"
            return [
                (
                    (),
                    f"{both}; set exactly one of uri (a model in storage) or fromJob (another "
                    "FineTuneJob's output)",
                )
            ]
        return []


class DatasetSpec(_Model):
    """One training dataset; several are mixed by weight."""

    CEL = (
        Cel(
            _columns_cel("self"),
            "columns maps only the columns of the dataset's format (text: text; completion: "
            "prompt, completion; instruction: instruction, input, output; chat: messages; "
            "classification: text, text_pair, label; ner: tokens, tags)",
            ".columns",
        ),
    )

    name: DatasetName = Field(
        description="Short name of this dataset, unique within the job (lowercase, digits, '-').",
    )
    uri: Uri = Field(
        description="A .jsonl/.json/.csv/.parquet file, or a prefix (directory) of such files: "
        "s3://bucket/key or, in `finetune run`, a local path."
    )
    format: DataFormat = Field(
        description="Row format: text (raw text for continued pretraining), completion "
        "(prompt/completion), instruction (Alpaca instruction/input/output), chat (OpenAI "
        "messages or ShareGPT conversations), classification (text/label), ner (tokens/tags). "
        "causal-lm takes text, completion, instruction or chat; sequence-classification takes "
        "classification; token-classification takes ner."
    )
    columns: dict[str, ShortString] = Field(
        default_factory=dict,
        max_length=8,
        description="Field mapping from the format's expected column to the column in the file, "
        "e.g. {messages: conversations} or {text: sentence, label: sentiment}.",
    )
    weight: PositiveDecimal = Field(
        "1",
        description="Relative sampling weight when several datasets are mixed (a positive "
        "decimal, as a string).",
    )

    def rule_problems(self) -> list[Problem]:
        return _columns_problems(self.format, self.columns)


class ValidationSpec(_Model):
    """Held-out data used for eval loss during training: a file, or a split of the training data."""

    CEL = (
        Cel(
            "has(self.uri) != has(self.splitRatio)",
            "set exactly one of uri (a validation file) or splitRatio (a fraction of the "
            "training rows)",
        ),
    )

    uri: Uri | None = Field(
        None, description="Validation file or prefix, same formats as datasets (or splitRatio)."
    )
    split_ratio: Fraction | None = Field(
        None,
        description="Fraction of the training rows held out for validation, 0 < ratio < 1 "
        '(a decimal string such as "0.05"; or uri).',
    )

    def rule_problems(self) -> list[Problem]:
        if (self.uri is None) == (self.split_ratio is None):
            both = "both are set" if self.uri is not None else "neither is set"
            return [
                (
                    (),
                    f"{both}; set exactly one of uri (a validation file) or splitRatio (a "
                    "fraction of the training rows)",
                )
            ]
        return []


class LoraSpec(_Model):
    """LoRA adapter settings (method lora or qlora only)."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank, 1-1024.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling alpha, 1-4096.")
    dropout: HalfOpenFraction = Field(
        "0.05", description="LoRA dropout, 0 <= p < 1, as a decimal string."
    )
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        description="Module names to adapt, or [all-linear] for every linear layer but the head.",
        json_schema_extra=_SET,
    )


class MethodSpec(_Model):
    """How the weights are trained."""

    CEL = (
        Cel(
            "!has(self.lora) || self.type in ['lora', 'qlora']",
            "lora settings are allowed only with method type lora or qlora",
            ".lora",
        ),
    )

    type: MethodType = Field(
        "lora",
        description="full (every weight), lora (low-rank adapters), qlora (LoRA on a 4-bit "
        "quantised base; needs a CUDA GPU).",
    )
    lora: LoraSpec | None = Field(
        None, description="LoRA settings; allowed only with type lora or qlora."
    )

    def rule_problems(self) -> list[Problem]:
        if self.lora is not None and self.type not in ("lora", "qlora"):
            return [
                (
                    ("lora",),
                    f"lora settings are allowed only with type lora or qlora (type is "
                    f"{self.type}); remove the lora block or change the type",
                )
            ]
        return []


class HyperparametersSpec(_Model):
    """Optimisation settings."""

    CEL = (
        Cel(
            "!has(self.epochs) || !has(self.maxSteps)",
            "set epochs or maxSteps, not both",
            ".maxSteps",
        ),
    )

    epochs: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Passes over the training data (default 1 unless maxSteps; not with maxSteps).",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Stop after this many optimiser steps (instead of epochs).",
    )
    learning_rate: PositiveDecimal = Field(
        "2e-4", description="Peak learning rate, a decimal string > 0."
    )
    batch_size_per_device: int = Field(4, ge=1, le=4096, description="Micro-batch per process.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="Micro-batches accumulated per optimiser step."
    )
    max_seq_length: int = Field(
        2048,
        ge=16,
        le=1048576,
        description="Longest tokenized sequence; longer rows are truncated.",
    )
    packing: bool = Field(
        False,
        description="Pack several short rows into one sequence (without attention across rows); "
        "causal-lm only.",
    )
    lr_scheduler: LrScheduler = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: HalfOpenFraction = Field(
        "0.03", description="Fraction of steps spent warming up, 0 <= r < 1 (decimal string)."
    )
    weight_decay: NonNegativeDecimal = Field(
        "0", description="AdamW weight decay, >= 0 (decimal string)."
    )
    precision: Precision = Field(
        "bf16", description="Training precision; on a machine without a GPU, fp32 is used."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory."
    )
    seed: int = Field(
        42, ge=0, le=2**31 - 1, description="Random seed for data order and initialisation."
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Evaluate on the validation set every N steps (default: per epoch).",
    )

    def rule_problems(self) -> list[Problem]:
        if self.epochs is not None and self.max_steps is not None:
            return [(("maxSteps",), "set epochs or maxSteps, not both")]
        return []


class DeepSpeedSpec(_Model):
    """DeepSpeed ZeRO settings; generated into a DeepSpeed config unless configMapRef is given."""

    CEL = (
        Cel(
            "!has(self.offloadParams) || !self.offloadParams "
            "|| (has(self.zeroStage) && self.zeroStage == 3)",
            "offloadParams needs zeroStage 3",
            ".offloadParams",
        ),
    )

    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3.")
    offload_optimizer: bool = Field(False, description="Offload optimizer states to CPU memory.")
    offload_params: bool = Field(
        False, description="Offload parameters to CPU memory (ZeRO stage 3 only)."
    )
    config_map_ref: ObjectName | None = Field(
        None,
        description="Name of a ConfigMap whose key ds_config.json is used verbatim instead of the "
        "generated config.",
    )

    def rule_problems(self) -> list[Problem]:
        if self.offload_params and self.zero_stage != 3:
            return [
                (
                    ("offloadParams",),
                    f"offloadParams needs zeroStage 3 (zeroStage is {self.zero_stage}); set "
                    "zeroStage: 3 or offloadParams: false",
                )
            ]
        return []


class DistributedSpec(_Model):
    """The training gang: nodes x processes."""

    CEL = (
        Cel(
            "!has(self.processesPerNode) || !has(self.gpusPerNode) || self.gpusPerNode == 0 "
            "|| self.processesPerNode == self.gpusPerNode",
            "with GPUs, processesPerNode must equal gpusPerNode (one process per GPU)",
            ".processesPerNode",
        ),
    )

    nodes: int = Field(1, ge=1, le=512, description="Training pods (one per node), 1-512.")
    gpus_per_node: int = Field(1, ge=0, le=16, description="GPUs requested by each pod, 0-16.")
    processes_per_node: int | None = Field(
        None,
        ge=1,
        le=64,
        description="torchrun processes per pod (default: gpusPerNode, or 1 without GPUs; with "
        "GPUs it must equal gpusPerNode).",
    )
    deepspeed: DeepSpeedSpec | None = Field(
        None, description="Use DeepSpeed ZeRO; without it, plain PyTorch DDP is used."
    )

    def rule_problems(self) -> list[Problem]:
        ppn = self.processes_per_node
        if ppn is not None and self.gpus_per_node > 0 and ppn != self.gpus_per_node:
            return [
                (
                    ("processesPerNode",),
                    f"with GPUs, processesPerNode must equal gpusPerNode ({ppn} != "
                    f"{self.gpus_per_node}: one process per GPU); leave it out to default",
                )
            ]
        return []


class TemplateSpec(_Model):
    """Pod-level knobs passed through to the training pods."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        DEFAULT_TRAINER_IMAGE, description="Trainer image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy of the training containers."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Container resources (requests/limits, as in a Pod); GPU requests are added "
        "from distributed.gpusPerNode.",
        json_schema_extra=_PASSTHROUGH,
    )
    gpu_resource_name: Annotated[
        str,
        Matches(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
            "an extended resource name such as nvidia.com/gpu",
            253,
        ),
    ] = Field("nvidia.com/gpu", description="Extended resource name of the GPU.")
    node_selector: dict[str, ShortString] = Field(
        default_factory=dict, max_length=64, description="Pod nodeSelector."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Pod tolerations (as in a Pod).",
        json_schema_extra={"items": _PASSTHROUGH},
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        description="Pod affinity (as in a Pod).",
        json_schema_extra=_PASSTHROUGH,
    )
    priority_class_name: OptionalObjectName = Field("", description="Pod priorityClassName.")
    scheduler_name: OptionalObjectName = Field("", description="Pod schedulerName (e.g. volcano).")
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment variables for the trainer container (as in a Pod).",
        json_schema_extra={"items": _PASSTHROUGH},
    )


class StorageSpec(_Model):
    """Object storage access for every s3:// URI of the job."""

    endpoint: Annotated[
        str,
        Matches(r"^https?://[^\s/]+(/.*)?$", "an http(s):// URL or empty", 512, allow_empty=True),
    ] = Field(
        "",
        description="S3-compatible endpoint URL (MinIO, Ceph...); empty means AWS S3. In "
        "`finetune run`, empty with no credentials means the embedded local server.",
    )
    region: Annotated[str, Matches(r"^[a-z0-9-]+$", "an S3 region such as us-east-1", 64)] = Field(
        "us-east-1", description="S3 region."
    )
    credentials_secret: OptionalObjectName = Field(
        "",
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; empty means the pod's "
        "ambient credentials (IRSA, instance profile).",
    )


class OutputSpec(_Model):
    """Where artifacts go."""

    uri: Uri = Field(
        description="Artifact prefix: s3://bucket/prefix/ or, in `finetune run`, a local directory. "
        "Runs are written under runs/<runId>/."
    )
    merge_adapter: bool = Field(
        False, description="Also write a merged model (base + adapter) under merged/."
    )


class CheckpointingSpec(_Model):
    """Checkpoint cadence; the latest complete checkpoint is resumed automatically."""

    every_steps: int = Field(
        500, ge=1, le=10_000_000, description="Save a checkpoint every N optimiser steps."
    )
    keep_last: int = Field(3, ge=1, le=100, description="Checkpoints kept in storage.")


class EvalDatasetSpec(_Model):
    """One evaluation dataset."""

    CEL = (
        Cel(
            "!has(self.format) || " + _columns_cel("self"),
            "columns maps only the columns of the dataset's format",
            ".columns",
        ),
    )

    uri: Uri = Field(description="Evaluation file or prefix.")
    name: DatasetName | None = Field(None, description="Name used in results (default eval).")
    format: DataFormat | None = Field(
        None, description="Row format (default: the first training dataset's)."
    )
    columns: dict[str, ShortString] = Field(
        default_factory=dict, max_length=8, description="Field mapping."
    )

    def rule_problems(self) -> list[Problem]:
        return _columns_problems(self.format, self.columns)


class BaselineSpec(_Model):
    """Score the un-tuned base model the same way, for comparison."""

    enabled: bool = Field(True, description="Score the base model.")
    few_shot: int = Field(
        0, ge=0, le=64, description="Examples prepended to prompts (causal-lm only)."
    )


class GateRule(_Model):
    """One condition the evaluation must meet before the model may be served."""

    metric: EvalMetricName = Field(
        description="eval_<metric>: eval_loss (always measured) or one of the job's "
        "evaluation.metrics (e.g. eval_f1)."
    )
    op: GateOp = Field(description="Comparison: <, <=, >, >=, ==.")
    value: SignedDecimal = Field(description='Threshold, a decimal string such as "1.2".')


class EvaluationSpec(_Model):
    """What is measured after training, and the gate in front of the rollout."""

    datasets: list[EvalDatasetSpec] = Field(
        default_factory=list, max_length=16, description="Test sets (default: the validation set)."
    )
    metrics: list[MetricName] = Field(
        default_factory=list,
        max_length=len(METRICS),
        description="causal-lm: loss, perplexity; sequence/token-classification: loss, accuracy, "
        "precision, recall, f1. Default: every metric of the task. Loss is always measured.",
        json_schema_extra=_SET,
    )
    baseline: BaselineSpec | None = Field(None, description="Also score the base model.")
    gate: list[GateRule] = Field(
        default_factory=list,
        max_length=16,
        description="Rules that must all hold for the model to be served; they need evaluation "
        "data (spec.validation or evaluation.datasets).",
    )


class PromoteSpec(_Model):
    """Champion/challenger: when a new job replaces the served model."""

    require_improvement: bool = Field(
        True, description="Replace the champion only if this job beats its metric."
    )
    metric: EvalMetricName = Field(
        "eval_loss",
        description="Metric compared (eval_<metric>, eval_loss or one of evaluation.metrics).",
    )


class ServingSpec(_Model):
    """The inference rollout after a passed gate."""

    enabled: bool = Field(False, description="Roll out an inference deployment.")
    endpoint: ServiceName | None = Field(
        None,
        description="Stable Service name shared by successive jobs (default: the job's name).",
    )
    engine: Engine = Field(
        "builtin", description="builtin (trainer image `serve`) or vllm (causal-lm only)."
    )
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        None, description="Server image (default per engine)."
    )
    replicas: int = Field(1, ge=0, le=100, description="Inference replicas.")
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Inference container resources (as in a Pod).",
        json_schema_extra=_PASSTHROUGH,
    )
    promote: PromoteSpec = Field(
        default_factory=PromoteSpec, description="Champion/challenger promotion rule."
    )
    rollout_deadline_seconds: int = Field(
        600,
        ge=30,
        le=86_400,
        description="A rollout not available within this time is rolled back.",
    )


class RunPolicySpec(_Model):
    """Retries, deadlines, cleanup and queueing."""

    backoff_limit: int = Field(3, ge=0, le=100, description="Gang restarts after a failure.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job after this long from start."
    )
    max_pending_seconds: int = Field(
        3600, ge=1, description="Fail (Unschedulable) if the gang is not fully running by then."
    )
    progress_deadline_seconds: int = Field(
        1800, ge=1, description="Restart (Stalled) when the trainer reports nothing for this long."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the FineTuneJob this long after it finished."
    )
    queue_name: LabelValue = Field(
        "", description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label."
    )


def _task_cel(task: str, value: str, table: Mapping[str, Sequence[str]]) -> str:
    """CEL: <value> is allowed for the task in <task>, per table."""
    arms = " : ".join(f"{task} == '{t}' ? {value} in {cel_list(v)}" for t, v in table.items())
    return f"({arms} : false)"


_EVAL_TABLE = {t: tuple(f"eval_{m}" for m in ms) for t, ms in TASK_METRICS.items()}


def _gate_metric_cel(metric: str) -> str:
    """CEL: <metric> is eval_loss or eval_<m> of the job's metrics (task defaults if none)."""
    return (
        f"{metric} == 'eval_loss' || (has(self.evaluation) && has(self.evaluation.metrics) "
        f"&& size(self.evaluation.metrics) > 0 ? self.evaluation.metrics.exists(m, "
        f"'eval_' + m == {metric}) : {_task_cel('self.task', metric, _EVAL_TABLE)})"
    )


_DATASETS_EXTRA: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
    **_IMMUTABLE,
}

TRAINING_FIELDS = (
    "task",
    "baseModel",
    "datasets",
    "validation",
    "method",
    "hyperparameters",
    "distributed",
    "template",
    "storage",
    "output",
    "checkpointing",
    "evaluation",
)
"""Spec fields immutable once the job exists (suspend, serving and runPolicy stay mutable)."""


class FineTuneJobSpec(_Model):
    """The desired fine-tuning run."""

    CEL = (
        Cel(
            "self.datasets.all(d, " + _task_cel("self.task", "d.format", TASK_FORMATS) + ")",
            "a dataset's format does not fit the task: causal-lm takes text, completion, "
            "instruction or chat; sequence-classification takes classification; "
            "token-classification takes ner",
            ".datasets",
        ),
        Cel(
            "!has(self.evaluation) || !has(self.evaluation.datasets) || "
            "self.evaluation.datasets.all(d, !has(d.format) || "
            + _task_cel("self.task", "d.format", TASK_FORMATS)
            + ")",
            "an evaluation dataset's format does not fit the task",
            ".evaluation.datasets",
        ),
        Cel(
            "!has(self.evaluation) || !has(self.evaluation.metrics) || "
            "self.evaluation.metrics.all(m, " + _task_cel("self.task", "m", TASK_METRICS) + ")",
            "a metric does not fit the task: causal-lm measures loss, perplexity; "
            "classification tasks measure loss, accuracy, precision, recall, f1",
            ".evaluation.metrics",
        ),
        Cel(
            "!has(self.evaluation) || !has(self.evaluation.gate) || "
            "self.evaluation.gate.all(g, " + _gate_metric_cel("g.metric") + ")",
            "a gate metric is not measured by this job: use eval_loss or eval_<m> for a metric "
            "m of evaluation.metrics (default: the task's metrics)",
            ".evaluation.gate",
        ),
        Cel(
            "!has(self.evaluation) || !has(self.evaluation.gate) || "
            "size(self.evaluation.gate) == 0 || has(self.validation) || "
            "(has(self.evaluation.datasets) && size(self.evaluation.datasets) > 0)",
            "a gate needs evaluation data: set spec.validation or spec.evaluation.datasets",
            ".evaluation.gate",
        ),
        Cel(
            "!has(self.serving) || !has(self.serving.promote) || "
            "!has(self.serving.promote.metric) || "
            + _gate_metric_cel("self.serving.promote.metric"),
            "the promotion metric is not measured by this job: use eval_loss or eval_<m> for a "
            "metric m of evaluation.metrics (default: the task's metrics)",
            ".serving.promote.metric",
        ),
        Cel(
            "!has(self.method) || !has(self.method.type) || self.method.type != 'qlora' || "
            "!has(self.distributed) || !has(self.distributed.gpusPerNode) || "
            "self.distributed.gpusPerNode >= 1",
            "qlora needs a CUDA GPU: set distributed.gpusPerNode >= 1 or use method lora",
            ".method.type",
        ),
        Cel(
            "!has(self.hyperparameters) || !has(self.hyperparameters.packing) || "
            "!self.hyperparameters.packing || self.task == 'causal-lm'",
            "packing is for causal-lm only",
            ".hyperparameters.packing",
        ),
        Cel(
            "!has(self.evaluation) || !has(self.evaluation.baseline) || "
            "!has(self.evaluation.baseline.fewShot) || self.evaluation.baseline.fewShot == 0 "
            "|| self.task == 'causal-lm'",
            "few-shot prompting of the baseline is for causal-lm only; set fewShot: 0",
            ".evaluation.baseline.fewShot",
        ),
        Cel(
            "!has(self.serving) || !has(self.serving.engine) || self.serving.engine != 'vllm' "
            "|| self.task == 'causal-lm'",
            "the vllm engine serves causal-lm models only; use engine builtin",
            ".serving.engine",
        ),
        Cel(
            "has(self.validation) == has(oldSelf.validation)",
            "spec.validation is immutable once the job is created",
            ".validation",
        ),
    )

    suspend: bool = Field(False, description="Stop the pods, keep the checkpoint; resume later.")
    task: Task = Field(
        "causal-lm", description="What the model is trained to do.", json_schema_extra=_IMMUTABLE
    )
    base_model: BaseModelRef = Field(
        description="The model to start from.", json_schema_extra=_IMMUTABLE
    )
    datasets: list[DatasetSpec] = Field(
        min_length=1,
        max_length=32,
        description="Training data; several are mixed by weight. Names are unique.",
        json_schema_extra=_DATASETS_EXTRA,
    )
    validation: ValidationSpec | None = Field(
        None, description="Held-out data for eval loss.", json_schema_extra=_IMMUTABLE
    )
    method: MethodSpec = Field(
        default_factory=MethodSpec, description="Fine-tuning method.", json_schema_extra=_IMMUTABLE
    )
    hyperparameters: HyperparametersSpec = Field(
        default_factory=HyperparametersSpec,
        description="Optimisation settings.",
        json_schema_extra=_IMMUTABLE,
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec,
        description="Nodes, GPUs and DeepSpeed.",
        json_schema_extra=_IMMUTABLE,
    )
    template: TemplateSpec = Field(
        default_factory=TemplateSpec,
        description="Training pod template knobs.",
        json_schema_extra=_IMMUTABLE,
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="Object storage.", json_schema_extra=_IMMUTABLE
    )
    output: OutputSpec = Field(description="Where artifacts go.", json_schema_extra=_IMMUTABLE)
    checkpointing: CheckpointingSpec = Field(
        default_factory=CheckpointingSpec,
        description="Checkpoint cadence.",
        json_schema_extra=_IMMUTABLE,
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec,
        description="Metrics and the rollout gate.",
        json_schema_extra=_IMMUTABLE,
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec, description="Inference rollout (mutable)."
    )
    run_policy: RunPolicySpec = Field(
        default_factory=RunPolicySpec,
        description="Retries, deadlines, cleanup, queueing (mutable).",
    )

    def rule_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        task = self.task
        formats = TASK_FORMATS[task]
        seen: dict[str, int] = {}
        for i, ds in enumerate(self.datasets):
            if ds.format not in formats:
                problems.append(
                    (
                        ("datasets", i, "format"),
                        f"format {ds.format} does not fit task {task}; use one of: "
                        f"{', '.join(formats)}",
                    )
                )
            if ds.name in seen:
                problems.append(
                    (
                        ("datasets", i, "name"),
                        f"duplicate dataset name {ds.name!r} (also datasets[{seen[ds.name]}]); "
                        "names must be unique",
                    )
                )
            seen.setdefault(ds.name, i)
        ev = self.evaluation
        for i, eds in enumerate(ev.datasets):
            if eds.format is not None and eds.format not in formats:
                problems.append(
                    (
                        ("evaluation", "datasets", i, "format"),
                        f"format {eds.format} does not fit task {task}; use one of: "
                        f"{', '.join(formats)}",
                    )
                )
        for i, m in enumerate(ev.metrics):
            if m not in TASK_METRICS[task]:
                problems.append(
                    (
                        ("evaluation", "metrics", i),
                        f"metric {m} is not measured for task {task}; use one of: "
                        f"{', '.join(TASK_METRICS[task])}",
                    )
                )
        if len(set(ev.metrics)) != len(ev.metrics):
            problems.append((("evaluation", "metrics"), "lists a metric twice"))
        allowed = allowed_gate_metrics(self)
        for i, rule in enumerate(ev.gate):
            if rule.metric not in allowed:
                problems.append(
                    (
                        ("evaluation", "gate", i, "metric"),
                        f"{rule.metric} is not measured by this job; use one of: "
                        f"{', '.join(allowed)}",
                    )
                )
        if ev.gate and self.validation is None and not ev.datasets:
            problems.append(
                (
                    ("evaluation", "gate"),
                    "a gate needs evaluation data: set spec.validation or spec.evaluation.datasets",
                )
            )
        if self.serving.promote.metric not in allowed:
            problems.append(
                (
                    ("serving", "promote", "metric"),
                    f"{self.serving.promote.metric} is not measured by this job; use one of: "
                    f"{', '.join(allowed)}",
                )
            )
        if self.method.type == "qlora" and self.distributed.gpus_per_node < 1:
            problems.append(
                (
                    ("method", "type"),
                    "qlora needs a CUDA GPU: set distributed.gpusPerNode >= 1 or use method lora",
                )
            )
        if self.hyperparameters.packing and task != "causal-lm":
            problems.append(
                (("hyperparameters", "packing"), f"packing is for causal-lm only (task {task})")
            )
        if ev.baseline is not None and ev.baseline.few_shot > 0 and task != "causal-lm":
            problems.append(
                (
                    ("evaluation", "baseline", "fewShot"),
                    f"few-shot prompting of the baseline is for causal-lm only (task {task}); "
                    "set fewShot: 0",
                )
            )
        if self.serving.engine == "vllm" and task != "causal-lm":
            problems.append(
                (
                    ("serving", "engine"),
                    f"the vllm engine serves causal-lm models only (task {task}); use builtin",
                )
            )
        return problems


# --------------------------------------------------------------------------- resolved defaults


def default_metrics(task: str) -> list[str]:
    """The metrics measured when evaluation.metrics is empty."""
    return list(TASK_METRICS[task])


def effective_metrics(spec: FineTuneJobSpec) -> list[str]:
    """evaluation.metrics, or the task's defaults."""
    return list(spec.evaluation.metrics) or default_metrics(spec.task)


def allowed_gate_metrics(spec: FineTuneJobSpec) -> list[str]:
    """Names a gate or promotion rule may use: eval_loss (always measured) + eval_<metric>."""
    names = ["eval_loss"] + [f"eval_{m}" for m in effective_metrics(spec)]
    return list(dict.fromkeys(names))


def effective_epochs(spec: FineTuneJobSpec) -> int | None:
    """epochs, or 1 when neither epochs nor maxSteps is set (None: maxSteps decides)."""
    hp = spec.hyperparameters
    if hp.epochs is not None:
        return hp.epochs
    return None if hp.max_steps is not None else 1


def effective_processes_per_node(spec: FineTuneJobSpec) -> int:
    """processesPerNode, or gpusPerNode, or 1 without GPUs."""
    dist = spec.distributed
    return dist.processes_per_node or dist.gpus_per_node or 1


def effective_lora(spec: FineTuneJobSpec) -> LoraSpec | None:
    """The LoRA settings for lora/qlora (defaults when the block is left out); None for full."""
    if spec.method.type == "full":
        return None
    return spec.method.lora or LoraSpec()


def resolve_spec(spec: FineTuneJobSpec) -> FineTuneJobSpec:
    """A copy with the defaults that depend on other fields filled in (epochs, processesPerNode,
    method.lora, evaluation.metrics), so the operator and the trainer read the same values."""
    hp = spec.hyperparameters.model_copy(update={"epochs": effective_epochs(spec)})
    dist = spec.distributed.model_copy(
        update={"processes_per_node": effective_processes_per_node(spec)}
    )
    method = spec.method.model_copy(update={"lora": effective_lora(spec)})
    evaluation = spec.evaluation.model_copy(update={"metrics": effective_metrics(spec)})
    return spec.model_copy(
        update={
            "hyperparameters": hp,
            "distributed": dist,
            "method": method,
            "evaluation": evaluation,
        }
    )


# ------------------------------------------------------------------------------------- status


_CONDITIONS_EXTRA: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class Condition(_Model):
    """A kstatus-style condition."""

    type: str = Field(description="Ready, Reconciling, Stalled, or a domain condition.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="When status last changed.")
    observed_generation: int | None = Field(None, description="Generation this was computed for.")


class ProgressStatus(_Model):
    """Live training progress, reported by the trainer."""

    stage: Stage | None = Field(None, description="Trainer stage.")
    step: int | None = Field(None, description="Optimiser steps done.")
    total_steps: int | None = Field(None, description="Optimiser steps planned.")
    epoch: str | None = Field(None, description="Fractional epoch.")
    percent: int | None = Field(None, description="Percent of steps done.")
    tokens_per_second: str | None = Field(None, description="Training throughput.")
    eta_seconds: int | None = Field(None, description="Estimated seconds to the end of training.")
    last_heartbeat_time: str | None = Field(None, description="Last report from the trainer.")


class MetricsStatus(_Model):
    """Latest training metrics."""

    train_loss: str | None = Field(None, description="Latest training loss.")
    eval_loss: str | None = Field(None, description="Latest validation loss.")
    learning_rate: str | None = Field(None, description="Current learning rate.")


class EvaluationStatus(_Model):
    """Results of the evaluation and the gate."""

    passed: bool | None = Field(None, description="Whether every gate rule held.")
    results: dict[str, str] = Field(default_factory=dict, description="Metric name to value.")
    baseline: dict[str, str] = Field(
        default_factory=dict, description="The base model's values of the same metrics."
    )
    message: str | None = Field(None, description="The gate's verdict with the numbers.")


class CheckpointStatus(_Model):
    """Latest complete checkpoint."""

    step: int | None = Field(None, description="Step of the checkpoint.")
    uri: str | None = Field(None, description="Where it is stored.")


class ArtifactsStatus(_Model):
    """Where the outputs were written."""

    uri: str | None = Field(None, description="runs/<runId>/ prefix.")
    adapter_uri: str | None = Field(None, description="LoRA adapter (if any).")
    merged_uri: str | None = Field(None, description="Merged or full model (if any).")
    manifest_uri: str | None = Field(None, description="manifest.json with sha256 of every file.")


class DatasetLineage(_Model):
    """One input's identity."""

    uri: str = Field(description="Dataset URI.")
    etag: str = Field("", description="ETag (S3) or sha256 (local) of the data.")


class LineageStatus(_Model):
    """What exactly produced the artifacts."""

    run_id: str | None = Field(None, description="Run identifier.")
    base_model_uri: str | None = Field(None, description="Resolved base model URI.")
    base_model_e_tag: str | None = Field(
        None, alias="baseModelETag", description="ETag of the base model's config/weights."
    )
    dataset_e_tags: list[DatasetLineage] = Field(
        default_factory=list, alias="datasetETags", description="Each dataset with its ETag."
    )
    spec_hash: str | None = Field(None, description="sha256 of the training spec.")
    image: str | None = Field(None, description="Trainer image.")


class ServingStatus(_Model):
    """The inference endpoint."""

    endpoint: str | None = Field(None, description="In-cluster URL of the endpoint.")
    promoted: bool | None = Field(None, description="Whether this job serves the endpoint.")
    ready: bool | None = Field(None, description="Whether the rollout is available.")
    message: str | None = Field(None, description="The promotion decision with both numbers.")


class FineTuneJobStatus(_Model):
    """Observed state; written by the operator, progress/metrics by the trainer."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    observed_generation: int | None = Field(None, description="Spec generation last reconciled.")
    phase: Phase | None = Field(None, description="Lifecycle phase.")
    reason: str | None = Field(None, description="CamelCase reason of the phase.")
    message: str | None = Field(None, description="Human-readable detail of the phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="kstatus conditions (Ready, Reconciling, Stalled) and the domain ones, one "
        "per type.",
        json_schema_extra=_CONDITIONS_EXTRA,
    )
    attempts: int | None = Field(None, description="Gang starts so far.")
    run_id: str | None = Field(None, description="Stable identifier of this run's outputs.")
    start_time: str | None = Field(None, description="When training pods were first created.")
    completion_time: str | None = Field(None, description="When the job finished.")
    progress: ProgressStatus | None = Field(None, description="Live progress.")
    metrics: MetricsStatus | None = Field(None, description="Training metrics.")
    evaluation: EvaluationStatus | None = Field(None, description="Evaluation and gate.")
    checkpoint: CheckpointStatus | None = Field(None, description="Latest checkpoint.")
    artifacts: ArtifactsStatus | None = Field(None, description="Output locations.")
    lineage: LineageStatus | None = Field(None, description="Inputs' identity.")
    serving: ServingStatus | None = Field(None, description="Inference endpoint.")
    gpu_seconds: int | None = Field(None, description="GPU-seconds consumed by training pods.")


class ObjectMeta(BaseModel):
    """The part of metadata the API cares about (everything else passes through)."""

    model_config = ConfigDict(extra="allow")

    name: JobName = Field(
        description=f"Job name: a DNS label of at most {MAX_NAME_LENGTH} characters, so that "
        "the names of its children fit in 63."
    )
    namespace: str | None = None


class FineTuneJob(_Model):
    """A whole manifest."""

    CEL = (
        Cel(
            "!has(self.spec.baseModel.fromJob) || self.spec.baseModel.fromJob != "
            "self.metadata.name",
            "a job cannot continue from itself",
            ".spec.baseModel.fromJob",
        ),
    )

    api_version: Literal["finetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    def rule_problems(self) -> list[Problem]:
        if self.spec.base_model.from_job == self.metadata.name:
            return [
                (
                    ("spec", "baseModel", "fromJob"),
                    "a job cannot continue from itself; name another FineTuneJob",
                )
            ]
        return []
