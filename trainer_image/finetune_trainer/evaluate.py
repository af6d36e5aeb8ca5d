"""Scoring a model on the job's evaluation data, and scoring the un-tuned base model likewise.

Why it exists: evaluation runs once, on rank 0, after training (and the gate in front of serving
reads its numbers), so it is a plain loop over batches with ``torch.no_grad`` and no
``torch.distributed``. What is measured:

- causal-lm: ``eval_loss`` is the mean cross-entropy over every trained token (the tokens the
  training loss sees: completions, responses, assistant turns, or all text), summed over batches
  and divided by the token count, so batch size does not change it; ``eval_perplexity`` =
  exp(eval_loss).
- sequence-classification: ``eval_loss`` (mean over rows), ``eval_accuracy`` and macro
  ``eval_precision``/``eval_recall``/``eval_f1``; the confusion matrix in :class:`EvalResult`.
- token-classification: ``eval_loss`` (mean over labelled sub-tokens), entity-level
  ``eval_precision``/``eval_recall``/``eval_f1`` (seqeval) and token ``eval_accuracy``.

If ``spec.evaluation.metrics`` is set, only those (plus ``eval_loss``) are returned.

The baseline scores the base model the same way on the same rows. For causal-lm each evaluation
row is prefixed with ``evaluation.baseline.fewShot`` training examples (rendered the same way,
excluded from the loss), so the base model gets the same chance to pick up the format. For
classification and NER the base model has no head for the job's labels: it gets a freshly
initialised one, so its scores are chance level by construction (``EvalResult.notes`` says so).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainerConfig
from .data import PreparedData
from .metrics_calc import classification_metrics, confusion_matrix, ner_metrics
from .tokenization import (
    IGNORE_INDEX,
    Encoded,
    causal_segments,
    encode_segments,
    ensure_chat_template,
)

__all__ = [
    "EvalResult",
    "baseline_detailed",
    "evaluate_baseline",
    "evaluate_detailed",
    "evaluate_model",
    "metric_deltas",
]

log = logging.getLogger(__name__)

SHOT_SEPARATOR = "\n\n"


@dataclass
class EvalResult:
    """Metrics plus what does not fit in a flat dict of floats."""

    metrics: dict[str, float]
    dataset: str
    examples: int
    confusion_matrix: list[list[int]] | None = None  # rows gold, columns predicted
    labels: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "metrics": self.metrics,
            "dataset": self.dataset,
            "examples": self.examples,
        }
        if self.confusion_matrix is not None:
            doc["confusionMatrix"] = {"labels": self.labels, "matrix": self.confusion_matrix}
        if self.notes:
            doc["notes"] = self.notes
        return doc


def _pick(data: PreparedData, dataset: Any) -> tuple[str, Any]:
    """(name, datasets.Dataset) for the ``dataset`` argument: None, a name, or a Dataset."""
    if dataset is None:
        if data.tests:
            name = next(iter(data.tests))
            return name, data.tests[name]
        if data.eval is None:
            raise ValueError(
                "nothing to evaluate on: the job has no evaluation.datasets and no validation "
                "set (set spec.validation.uri or splitRatio)"
            )
        return "validation", data.eval
    if isinstance(dataset, str):
        if dataset == "validation":
            return dataset, data.eval
        return dataset, data.tests[dataset]
    return "custom", dataset


def _batches(ds: Any, collator: Any, size: int) -> Any:
    for start in range(0, len(ds), size):
        yield collator([ds[i] for i in range(start, min(start + size, len(ds)))])


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _filter(config: TrainerConfig, metrics: dict[str, float]) -> dict[str, float]:
    wanted = config.spec.evaluation.metrics
    if not wanted:
        return metrics
    keep = {"eval_loss"} | {f"eval_{m.removeprefix('eval_')}" for m in wanted}
    return {k: v for k, v in metrics.items() if k in keep}


def evaluate_detailed(
    model: Any,
    tokenizer: Any,
    config: TrainerConfig,
    data: PreparedData,
    *,
    dataset: Any = None,
    batch_size: int | None = None,
) -> EvalResult:
    """Score ``model`` on one evaluation set (default: the first test set, else validation)."""
    import torch

    name, ds = _pick(data, dataset)
    if ds is None or len(ds) == 0:
        raise ValueError(f"evaluation set {name!r} is empty")
    size = batch_size or config.spec.hyperparameters.batch_size_per_device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if data.task == "causal-lm":
                result = _eval_causal(model, ds, data.collator, size, name)
            elif data.task == "sequence-classification":
                result = _eval_classification(model, ds, data, size, name)
            else:
                result = _eval_ner(model, ds, data, size, name)
    finally:
        if was_training:
            model.train()
    result.metrics = _filter(config, result.metrics)
    return result


def evaluate_model(
    model: Any, tokenizer: Any, config: TrainerConfig, data: PreparedData, *, dataset: Any = None
) -> dict[str, float]:
    """The ``eval_*`` metrics of ``model`` (see the module docstring)."""
    return evaluate_detailed(model, tokenizer, config, data, dataset=dataset).metrics


def _token_loss_sum(logits: Any, labels: Any) -> tuple[float, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return float(loss), int((shift_labels != IGNORE_INDEX).sum())


def _eval_causal(model: Any, ds: Any, collator: Any, size: int, name: str) -> EvalResult:
    device = _device(model)
    total, count = 0.0, 0
    for batch in _batches(ds, collator, size):
        labels = batch.pop("labels").to(device)
        out = model(**_to(batch, device))
        s, n = _token_loss_sum(out.logits, labels)
        total += s
        count += n
    if count == 0:
        raise ValueError(f"evaluation set {name!r} has no tokens to score")
    loss = total / count
    metrics = {"eval_loss": loss, "eval_perplexity": _safe_exp(loss)}
    return EvalResult(metrics, name, len(ds), notes=[f"{count} tokens scored"])


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def _eval_classification(
    model: Any, ds: Any, data: PreparedData, size: int, name: str
) -> EvalResult:
    import torch.nn.functional as F

    device = _device(model)
    labels = data.labels or []
    gold: list[int] = []
    pred: list[int] = []
    loss_sum = 0.0
    for batch in _batches(ds, data.collator, size):
        y = batch.pop("labels").to(device)
        out = model(**_to(batch, device))
        logits = out.logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        gold.extend(int(v) for v in y.tolist())
        pred.extend(int(v) for v in logits.argmax(-1).tolist())
    scores = classification_metrics(gold, pred, len(labels))
    metrics = {"eval_loss": loss_sum / len(gold)}
    metrics.update({f"eval_{k}": v for k, v in scores.items()})
    return EvalResult(
        metrics,
        name,
        len(gold),
        confusion_matrix=confusion_matrix(gold, pred, len(labels)),
        labels=list(labels),
    )


def _eval_ner(model: Any, ds: Any, data: PreparedData, size: int, name: str) -> EvalResult:
    import torch.nn.functional as F

    device = _device(model)
    tags = data.labels or []
    gold_seqs: list[list[str]] = []
    pred_seqs: list[list[str]] = []
    loss_sum, count = 0.0, 0
    for batch in _batches(ds, data.collator, size):
        y = batch.pop("labels").to(device)
        out = model(**_to(batch, device))
        logits = out.logits.float()
        loss_sum += float(
            F.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                y.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        count += int((y != IGNORE_INDEX).sum())
        best = logits.argmax(-1)
        for row_gold, row_pred in zip(y.tolist(), best.tolist(), strict=True):
            keep = [(g, p) for g, p in zip(row_gold, row_pred, strict=True) if g != IGNORE_INDEX]
            gold_seqs.append([tags[g] for g, _ in keep])
            pred_seqs.append([tags[p] for _, p in keep])
    scores = ner_metrics(gold_seqs, pred_seqs)
    metrics = {"eval_loss": loss_sum / max(count, 1)}
    metrics.update({f"eval_{k}": v for k, v in scores.items()})
    return EvalResult(metrics, name, len(gold_seqs), labels=list(tags))


# ------------------------------------------------------------------------------- baseline


def _fewshot_rows(
    config: TrainerConfig, tokenizer: Any, data: PreparedData, records: list[dict[str, Any]]
) -> list[dict[str, list[int]]]:
    """Evaluation rows with the few-shot prefix (masked), truncated from the left."""
    fmt = data.format
    max_len = config.spec.hyperparameters.max_seq_length
    shots = data.train_examples if fmt != "text" else []
    prefix: list[tuple[str, bool]] = []
    for ex in shots:
        prefix.extend((text, False) for text, _ in causal_segments(fmt, ex, tokenizer))
        prefix.append((SHOT_SEPARATOR, False))
    rows = []
    for rec in records:
        enc: Encoded = encode_segments(
            tokenizer,
            [*prefix, *causal_segments(fmt, rec, tokenizer)],
            add_special_tokens=fmt != "chat",
            add_eos=fmt != "chat",
        )
        ids, labels = enc.input_ids[-max_len:], enc.labels[-max_len:]
        if any(x != IGNORE_INDEX for x in labels[1:]):
            rows.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return rows


def baseline_detailed(
    config: TrainerConfig,
    base_model_dir: str | Path,
    tokenizer: Any,
    data: PreparedData,
    *,
    dataset: str | None = None,
    batch_size: int | None = None,
) -> EvalResult:
    """Score the un-tuned base model on the same evaluation rows (see the module docstring)."""
    import datasets
    import torch

    from .tokenization import CausalCollator

    name, ds = _pick(data, dataset)
    torch.manual_seed(config.spec.hyperparameters.seed)
    notes: list[str] = []
    if data.task == "causal-lm":
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(base_model_dir)
        if data.format == "chat" and ensure_chat_template(tokenizer):
            notes.append("base tokenizer has no chat template: rendered with the default ChatML")
        records = data.eval_records.get(name, [])
        rows = _fewshot_rows(config, tokenizer, data, records)
        k = len(data.train_examples) if data.format != "text" else 0
        notes.append(f"base model, {k}-shot prompted ({len(rows)} rows)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        collator = CausalCollator(int(pad))
        with torch.no_grad():
            model.eval()
            result = _eval_causal(
                model,
                datasets.Dataset.from_list(rows),
                collator,
                batch_size or config.spec.hyperparameters.batch_size_per_device,
                name,
            )
    else:
        model = _headed_base(data, base_model_dir, tokenizer)
        notes.append(
            "base model with a freshly initialised classification head: chance-level by "
            "construction (the base model has no head for this job's labels)"
        )
        result = evaluate_detailed(
            model, tokenizer, config, data, dataset=ds, batch_size=batch_size
        )
        result.dataset = name
    result.notes = notes + result.notes
    result.metrics = _filter(config, result.metrics)
    del model
    return result


def _headed_base(data: PreparedData, base_model_dir: str | Path, tokenizer: Any) -> Any:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    labels = data.labels or []
    cls = (
        AutoModelForSequenceClassification
        if data.task == "sequence-classification"
        else AutoModelForTokenClassification
    )
    model = cls.from_pretrained(
        base_model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def evaluate_baseline(
    config: TrainerConfig, base_model_dir: str | Path, tokenizer: Any, data: PreparedData
) -> dict[str, float]:
    """The base model's ``eval_*`` metrics on the same evaluation set (rank 0, no distributed)."""
    result = baseline_detailed(config, base_model_dir, tokenizer, data)
    for note in result.notes:
        log.info("baseline: %s", note)
    return result.metrics


def metric_deltas(results: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """results - baseline for every metric both have (positive = the tuned model is higher)."""
    return {k: results[k] - baseline[k] for k in results if k in baseline}
