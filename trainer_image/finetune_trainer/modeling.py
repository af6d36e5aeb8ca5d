"""Load the base model and tokenizer for a task, and apply the fine-tuning method (full/LoRA/QLoRA).

Why it exists: train.py (fitting), launch.py (evaluation, merging) and the preflight checks all
need the same answers to "which Auto class for this task", "which dtype on this machine" and "how
is the adapter attached"; keeping them here keeps the recipe in train.py readable.

- causal-lm → AutoModelForCausalLM; sequence-classification → AutoModelForSequenceClassification
  and token-classification → AutoModelForTokenClassification, with the label set found in the data
  (``id2label``/``label2id`` stored in the model config, so the artifacts carry it).
- full: every weight trains. lora: PEFT LoRA (``all-linear`` or named modules; the classification
  head is trained in full through PEFT's task type). qlora: the base is loaded 4-bit NF4 through
  bitsandbytes, which needs a CUDA GPU; without one the job fails at once with a clear message.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.config import TrainerConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ConfigurationError",
    "apply_method",
    "check_method_supported",
    "cuda_available",
    "load_base_model",
    "load_finetuned_model",
    "load_tokenizer",
    "model_dtype",
    "peft_task_type",
]

log = logging.getLogger(__name__)


class ConfigurationError(ValueError):
    """The job asks for something this machine or model cannot do (bad input: retrying won't help)."""


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_method_supported(config: TrainerConfig, *, cuda: bool | None = None) -> None:
    """Fail fast (before any download or torchrun) on a method this machine cannot run."""
    method = config.spec.method
    has_cuda = cuda_available() if cuda is None else cuda
    if method.type == "qlora":
        if not has_cuda:
            raise ConfigurationError(
                "spec.method.type qlora needs a CUDA GPU (4-bit bitsandbytes kernels), and this "
                "machine has none: request GPUs (spec.distributed.gpusPerNode) or use type: lora"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(
                "spec.method.type qlora needs the bitsandbytes package in the trainer image; "
                "install it (pip install bitsandbytes) or use type: lora"
            ) from exc
        if (
            config.spec.distributed.deepspeed is not None
            and config.spec.distributed.deepspeed.zero_stage == 3
        ):
            raise ConfigurationError(
                "spec.method.type qlora cannot be combined with DeepSpeed zeroStage 3 here; use "
                "zeroStage 0-2 (or type: lora)"
            )


def model_dtype(config: TrainerConfig, *, cuda: bool) -> torch.dtype:
    """Weights dtype at load time: fp32 on CPU and for full fine-tuning (AMP keeps fp32 masters);
    the frozen base of LoRA/QLoRA in the training precision on a GPU."""
    import torch

    precision = config.spec.hyperparameters.precision
    if not cuda or config.spec.method.type == "full" or precision == "fp32":
        return torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float16


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The base model's tokenizer; models without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigurationError(
                f"the tokenizer in {model_dir} has neither a pad nor an EOS token; add a "
                "pad_token to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _auto_class(task: str) -> Any:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    return {
        "causal-lm": AutoModelForCausalLM,
        "sequence-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
    }[task]


def _label_kwargs(task: str, labels: list[str] | None) -> dict[str, Any]:
    if task == "causal-lm":
        return {}
    if not labels:
        raise ConfigurationError(
            f"spec.task {task} needs a label set, and the data gave none: check the datasets' "
            "label/tags columns"
        )
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def load_base_model(
    config: TrainerConfig,
    model_dir: str | Path,
    *,
    labels: list[str] | None = None,
    cuda: bool | None = None,
) -> PreTrainedModel:
    """The base model for the job's task (4-bit quantised for qlora), without adapters."""
    import torch

    has_cuda = cuda_available() if cuda is None else cuda
    task = config.spec.task
    kwargs: dict[str, Any] = {"dtype": model_dtype(config, cuda=has_cuda)}
    kwargs.update(_label_kwargs(task, labels))
    if config.spec.method.type == "qlora":
        check_method_supported(config, cuda=has_cuda)
        from transformers import BitsAndBytesConfig

        compute = (
            torch.bfloat16 if config.spec.hyperparameters.precision == "bf16" else torch.float16
        )
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    if task != "causal-lm":
        # The base checkpoint is usually a causal LM: its head is dropped, a new one initialised.
        kwargs["ignore_mismatched_sizes"] = True
    try:
        model = _auto_class(task).from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot load the base model from {model_dir} for task {task}: {exc}. The base model "
            "URI must hold a Hugging Face model directory (config.json + weights)"
        ) from exc
    if model.config.pad_token_id is None:
        tokenizer_pad = (
            getattr(model.generation_config, "pad_token_id", None) or model.config.eos_token_id
        )
        if isinstance(tokenizer_pad, list):
            tokenizer_pad = tokenizer_pad[0]
        model.config.pad_token_id = tokenizer_pad
    return model  # type: ignore[no-any-return]


def peft_task_type(task: str) -> str:
    return {
        "causal-lm": "CAUSAL_LM",
        "sequence-classification": "SEQ_CLS",
        "token-classification": "TOKEN_CLS",
    }[task]


def apply_method(config: TrainerConfig, model: PreTrainedModel) -> Any:
    """Attach LoRA adapters (lora/qlora) or return the model unchanged (full)."""
    method = config.spec.method
    if method.type == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = method.lora
    r, alpha, dropout, targets = (16, 32, 0.05, ["all-linear"])
    if lora is not None:
        r, alpha, dropout, targets = (
            lora.r,
            lora.alpha,
            float(lora.dropout),
            list(lora.target_modules),
        )
    if method.type == "qlora":
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model,
            use_gradient_checkpointing=config.spec.hyperparameters.gradient_checkpointing,
        )
    peft_config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type=peft_task_type(config.spec.task),
    )
    try:
        peft_model = get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ConfigurationError(
            f"spec.method.lora.targetModules {targets}: {exc}. Use [all-linear] or module names "
            "that exist in the base model (e.g. q_proj, v_proj)"
        ) from exc
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA r=%d alpha=%d: %d of %d parameters trainable", r, alpha, trainable, total)
    return peft_model


def load_finetuned_model(
    config: TrainerConfig,
    base_dir: str | Path,
    trained_dir: str | Path,
    *,
    labels: list[str] | None = None,
) -> PreTrainedModel:
    """The trained model for evaluation/merging: the full model, or the base plus the adapter."""
    import torch

    task = config.spec.task
    if config.spec.method.type == "full":
        return _auto_class(task).from_pretrained(str(trained_dir), dtype=torch.float32)  # type: ignore[no-any-return]
    from peft import PeftModel

    cuda = cuda_available()
    base = load_base_model(config, base_dir, labels=labels, cuda=cuda)
    return PeftModel.from_pretrained(base, str(trained_dir))  # type: ignore[return-value]
