"""The FineTuneJob API (finetune.dev/v1alpha1) as typed Python models.

Why it exists: this module is the one source of truth for the API. The CRD in crds/ is generated
from these models (``finetune_operator.crdgen``), ``finetune validate`` and ``finetune run`` check
manifests with them, the operator renders children from them, and the trainer reads its config
through them. Field names follow ARCHITECTURE.md §3; decimals are strings, as the Kubernetes API
conventions require.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "BaseModelRef",
    "CheckpointingSpec",
    "DatasetSpec",
    "DeepSpeedSpec",
    "DistributedSpec",
    "EvaluationSpec",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "GateRule",
    "HyperparametersSpec",
    "LoraSpec",
    "MethodSpec",
    "OutputSpec",
    "RunPolicySpec",
    "ServingSpec",
    "StorageSpec",
    "TemplateSpec",
    "ValidationSpec",
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


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected (never silently dropped)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The manifest form: camelCase keys, None values left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------------------- spec


class BaseModelRef(_Model):
    """Where the base model comes from: exactly one of uri or fromJob."""

    uri: str | None = Field(
        None,
        description="Base model location: s3://bucket/prefix/ (any S3-compatible store) or, in "
        "`finetune run`, a local directory. The prefix holds a Hugging Face model "
        "(config.json, weights, tokenizer).",
    )
    from_job: str | None = Field(
        None,
        description="Continue from another FineTuneJob in the same namespace: its output "
        "(merged model, or base model plus adapter) becomes this job's base model.",
    )


class DatasetSpec(_Model):
    """One training dataset; several are mixed by weight."""

    name: str = Field(
        description="Short name of this dataset, unique within the job (lowercase, digits, '-').",
        min_length=1,
        max_length=63,
    )
    uri: str = Field(
        description="A .jsonl/.json/.csv/.parquet file, or a prefix (directory) of such files: "
        "s3://bucket/key or, in `finetune run`, a local path."
    )
    format: DataFormat = Field(
        description="Row format: text (raw text for continued pretraining), completion "
        "(prompt/completion), instruction (Alpaca instruction/input/output), chat (OpenAI "
        "messages or ShareGPT conversations), classification (text/label), ner (tokens/tags)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Field mapping from the format's expected column to the column in the file, "
        "e.g. {messages: conversations} or {text: sentence, label: sentiment}.",
    )
    weight: str = Field(
        "1",
        description="Relative sampling weight when several datasets are mixed (a positive "
        "decimal, as a string).",
    )


class ValidationSpec(_Model):
    """Held-out data used for eval loss during training: a file, or a split of the training data."""

    uri: str | None = Field(None, description="Validation file or prefix, same formats as datasets.")
    split_ratio: str | None = Field(
        None,
        description="Fraction of the training rows held out for validation, 0 < ratio < 1 "
        "(a decimal string such as \"0.05\").",
    )


class LoraSpec(_Model):
    """LoRA adapter settings (method lora or qlora only)."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling alpha.")
    dropout: str = Field("0.05", description="LoRA dropout, 0 <= p < 1, as a decimal string.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt, or [all-linear] for every linear layer but the head.",
    )


class MethodSpec(_Model):
    """How the weights are trained."""

    type: MethodType = Field(
        "lora",
        description="full (every weight), lora (low-rank adapters), qlora (LoRA on a 4-bit "
        "quantised base; needs a CUDA GPU).",
    )
    lora: LoraSpec | None = Field(
        None, description="LoRA settings; allowed only with type lora or qlora."
    )


class HyperparametersSpec(_Model):
    """Optimisation settings."""

    epochs: int | None = Field(
        None, ge=1, le=1000, description="Passes over the training data (default 1 unless maxSteps)."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimiser steps (overrides epochs)."
    )
    learning_rate: str = Field("2e-4", description="Peak learning rate, a decimal string > 0.")
    batch_size_per_device: int = Field(4, ge=1, le=4096, description="Micro-batch per process.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="Micro-batches accumulated per optimiser step."
    )
    max_seq_length: int = Field(
        2048, ge=16, le=1048576, description="Longest tokenized sequence; longer rows are truncated."
    )
    packing: bool = Field(
        False,
        description="Pack several short rows into one sequence (without attention across rows).",
    )
    lr_scheduler: LrScheduler = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: str = Field(
        "0.03", description="Fraction of steps spent warming up, 0 <= r < 1 (decimal string)."
    )
    weight_decay: str = Field("0", description="AdamW weight decay, >= 0 (decimal string).")
    precision: Precision = Field(
        "bf16", description="Training precision; on a machine without a GPU, fp32 is used."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory."
    )
    seed: int = Field(42, ge=0, description="Random seed for data order and initialisation.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate on the validation set every N steps (default: per epoch)."
    )


class DeepSpeedSpec(_Model):
    """DeepSpeed ZeRO settings; generated into a DeepSpeed config unless configMapRef is given."""

    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3.")
    offload_optimizer: bool = Field(False, description="Offload optimizer states to CPU memory.")
    offload_params: bool = Field(
        False, description="Offload parameters to CPU memory (ZeRO stage 3 only)."
    )
    config_map_ref: str | None = Field(
        None,
        description="Name of a ConfigMap whose key ds_config.json is used verbatim instead of the "
        "generated config.",
    )


class DistributedSpec(_Model):
    """The training gang: nodes x processes."""

    nodes: int = Field(1, ge=1, le=512, description="Training pods (one per node).")
    gpus_per_node: int = Field(1, ge=0, le=16, description="GPUs requested by each pod.")
    processes_per_node: int | None = Field(
        None,
        ge=1,
        le=64,
        description="torchrun processes per pod (default: gpusPerNode, or 1 without GPUs).",
    )
    deepspeed: DeepSpeedSpec | None = Field(
        None, description="Use DeepSpeed ZeRO; without it, plain PyTorch DDP is used."
    )


class TemplateSpec(_Model):
    """Pod-level knobs passed through to the training pods."""

    image: str = Field(DEFAULT_TRAINER_IMAGE, description="Trainer image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy of the training containers."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Container resources (requests/limits); GPU requests are added from "
        "distributed.gpusPerNode.",
    )
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", description="Extended resource name of the GPU."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")
    affinity: dict[str, Any] = Field(default_factory=dict, description="Pod affinity.")
    priority_class_name: str = Field("", description="Pod priorityClassName.")
    scheduler_name: str = Field("", description="Pod schedulerName (e.g. volcano).")
    env: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra environment variables for the trainer container."
    )


class StorageSpec(_Model):
    """Object storage access for every s3:// URI of the job."""

    endpoint: str = Field(
        "",
        description="S3-compatible endpoint URL (MinIO, Ceph...); empty means AWS S3. In "
        "`finetune run`, empty with no credentials means the embedded local server.",
    )
    region: str = Field("us-east-1", description="S3 region.")
    credentials_secret: str = Field(
        "",
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; empty means the pod's "
        "ambient credentials (IRSA, instance profile).",
    )


class OutputSpec(_Model):
    """Where artifacts go."""

    uri: str = Field(
        description="Artifact prefix: s3://bucket/prefix/ or, in `finetune run`, a local directory. "
        "Runs are written under runs/<runId>/."
    )
    merge_adapter: bool = Field(
        False, description="Also write a merged model (base + adapter) under merged/."
    )


class CheckpointingSpec(_Model):
    """Checkpoint cadence; the latest complete checkpoint is resumed automatically."""

    every_steps: int = Field(500, ge=1, description="Save a checkpoint every N optimiser steps.")
    keep_last: int = Field(3, ge=1, le=100, description="Checkpoints kept in storage.")


class EvalDatasetSpec(_Model):
    """One evaluation dataset."""

    uri: str = Field(description="Evaluation file or prefix.")
    name: str | None = Field(None, description="Name used in results (default eval).")
    format: DataFormat | None = Field(
        None, description="Row format (default: the first training dataset's)."
    )
    columns: dict[str, str] = Field(default_factory=dict, description="Field mapping.")


class BaselineSpec(_Model):
    """Score the un-tuned base model the same way, for comparison."""

    enabled: bool = Field(True, description="Score the base model.")
    few_shot: int = Field(
        0, ge=0, le=64, description="Examples prepended to prompts (causal-lm only)."
    )


class GateRule(_Model):
    """One condition the evaluation must meet before the model may be served."""

    metric: str = Field(
        description="eval_<metric>, one of the job's evaluation.metrics (e.g. eval_loss, eval_f1)."
    )
    op: GateOp = Field(description="Comparison: <, <=, >, >=, ==.")
    value: str = Field(description="Threshold, a decimal string.")


class EvaluationSpec(_Model):
    """What is measured after training, and the gate in front of the rollout."""

    datasets: list[EvalDatasetSpec] = Field(
        default_factory=list, description="Test sets (default: the validation set)."
    )
    metrics: list[str] = Field(
        default_factory=list,
        description="causal-lm: loss, perplexity; classification: accuracy, precision, recall, "
        "f1 (and loss). Default: every metric of the task.",
    )
    baseline: BaselineSpec | None = Field(None, description="Also score the base model.")
    gate: list[GateRule] = Field(
        default_factory=list, description="Rules that must all hold for the model to be served."
    )


class PromoteSpec(_Model):
    """Champion/challenger: when a new job replaces the served model."""

    require_improvement: bool = Field(
        True, description="Replace the champion only if this job beats its metric."
    )
    metric: str = Field("eval_loss", description="Metric compared (eval_<metric>).")


class ServingSpec(_Model):
    """The inference rollout after a passed gate."""

    enabled: bool = Field(False, description="Roll out an inference deployment.")
    endpoint: str | None = Field(
        None,
        description="Stable Service name shared by successive jobs (default: the job's name).",
    )
    engine: Engine = Field("builtin", description="builtin (trainer image `serve`) or vllm.")
    image: str | None = Field(None, description="Server image (default per engine).")
    replicas: int = Field(1, ge=0, le=100, description="Inference replicas.")
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Inference container resources."
    )
    promote: PromoteSpec = Field(
        default_factory=PromoteSpec, description="Champion/challenger promotion rule."
    )
    rollout_deadline_seconds: int = Field(
        600, ge=30, description="A rollout not available within this time is rolled back."
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
    queue_name: str = Field(
        "", description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label."
    )


class FineTuneJobSpec(_Model):
    """The desired fine-tuning run."""

    suspend: bool = Field(False, description="Stop the pods, keep the checkpoint; resume later.")
    task: Task = Field("causal-lm", description="What the model is trained to do.")
    base_model: BaseModelRef = Field(description="The model to start from.")
    datasets: list[DatasetSpec] = Field(
        min_length=1, max_length=32, description="Training data; several are mixed by weight."
    )
    validation: ValidationSpec | None = Field(None, description="Held-out data for eval loss.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Fine-tuning method.")
    hyperparameters: HyperparametersSpec = Field(
        default_factory=HyperparametersSpec, description="Optimisation settings."
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Nodes, GPUs and DeepSpeed."
    )
    template: TemplateSpec = Field(
        default_factory=TemplateSpec, description="Training pod template knobs."
    )
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Object storage.")
    output: OutputSpec = Field(description="Where artifacts go.")
    checkpointing: CheckpointingSpec = Field(
        default_factory=CheckpointingSpec, description="Checkpoint cadence."
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Metrics and the rollout gate."
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Inference rollout.")
    run_policy: RunPolicySpec = Field(
        default_factory=RunPolicySpec, description="Retries, deadlines, cleanup, queueing."
    )


# ------------------------------------------------------------------------------------- status


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
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
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

    name: str = Field(min_length=1)
    namespace: str | None = None


class FineTuneJob(_Model):
    """A whole manifest."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
