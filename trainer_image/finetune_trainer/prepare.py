"""Tokenizing validated records into Hugging Face datasets, per task (the torch half of data.py).

Why it exists: ``data.py`` stays importable without torch (launch validates data before starting
torchrun); everything that needs the tokenizer, ``datasets`` or torch lives here. Called only
through :func:`finetune_trainer.data.prepare_data`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from .config import TrainerConfig
from .data import DataReport, DataValidationError, Item, PreparedData
from .tokenization import (
    IGNORE_INDEX,
    CausalCollator,
    Encoded,
    causal_segments,
    encode_classification,
    encode_ner,
    encode_segments,
    ensure_chat_template,
    group_texts,
    pack_rows,
)

__all__ = ["build_prepared", "encode_causal_rows"]

log = logging.getLogger(__name__)

Rows = Sequence[Item]
Evals = dict[str, tuple[str, list[Item]]]


def build_prepared(
    config: TrainerConfig,
    tokenizer: Any,
    train: Rows,
    validation: Rows,
    evals: Evals,
    labels: list[str] | None,
    report: DataReport,
) -> PreparedData:
    spec = config.spec
    fmt = spec.datasets[0].format
    shots = spec.evaluation.baseline.few_shot if spec.evaluation.baseline else 0
    eval_records = {"validation": [it.record for it in validation]}
    eval_records.update({name: [it.record for it in items] for name, (_, items) in evals.items()})
    common = {
        "task": spec.task,
        "format": fmt,
        "labels": labels,
        "report": report,
        "train_examples": [it.record for it in train if it.format == fmt][:shots],
        "eval_records": eval_records,
    }
    if getattr(tokenizer, "pad_token_id", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        report.warnings.append("tokenizer has no pad token: using its EOS token for padding")
    if spec.task == "causal-lm":
        return _causal(config, tokenizer, train, validation, evals, common)
    if spec.task == "sequence-classification":
        return _classification(config, tokenizer, train, validation, evals, common)
    return _ner(config, tokenizer, train, validation, evals, common)


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)


# -------------------------------------------------------------------------------- causal-lm


def encode_causal_rows(
    config: TrainerConfig, tokenizer: Any, rows: Rows, warnings: list[str], what: str
) -> list[dict[str, list[int]]]:
    """Tokenize, mask, truncate/pack causal-lm rows as training and evaluation see them."""
    hp = config.spec.hyperparameters
    max_len = hp.max_seq_length
    texts: list[Encoded] = []
    others: list[Encoded] = []
    truncated = dropped = 0
    problems: list[str] = []
    for fmt, rec, where in rows:
        try:
            segments = causal_segments(fmt, rec, tokenizer)
        except Exception as exc:  # jinja2 raises its own types (e.g. roles must alternate)
            problems.append(
                f"{where}: the tokenizer's chat template cannot render this conversation: {exc}"
            )
            continue
        enc = encode_segments(
            tokenizer,
            segments,
            add_special_tokens=fmt != "chat",  # chat templates add their own BOS
            add_eos=fmt != "chat",  # ... and their own end-of-turn markers
        )
        if fmt == "text":
            texts.append(enc)
            continue
        if len(enc.input_ids) > max_len:
            truncated += 1
            enc = Encoded(enc.input_ids[:max_len], enc.labels[:max_len])
        if enc.trained_tokens == 0:
            dropped += 1
            continue
        others.append(enc)
    if problems:
        raise DataValidationError(problems)
    if truncated:
        warnings.append(f"{what}: {truncated} rows longer than maxSeqLength {max_len} truncated")
    if dropped:
        warnings.append(
            f"{what}: {dropped} rows dropped: nothing left to train on after truncation to "
            f"maxSeqLength {max_len} (the prompt alone fills it)"
        )
    out = group_texts(texts, max_len, restart_positions=hp.packing) if texts else []
    if hp.packing:
        out.extend(pack_rows(others, max_len))
    else:
        out.extend(
            {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in others
        )
    if texts and others:
        random.Random(hp.seed).shuffle(out)
    return out


def _causal(
    config: TrainerConfig,
    tokenizer: Any,
    train: Rows,
    validation: Rows,
    evals: Evals,
    common: dict[str, Any],
) -> PreparedData:
    report: DataReport = common["report"]
    defaulted = False
    if any(it.format == "chat" for it in train) or any(f == "chat" for f, _ in evals.values()):
        defaulted = ensure_chat_template(tokenizer)
        if defaulted:
            report.warnings.append(
                "tokenizer has no chat template: using the default ChatML template "
                "(saved with the tokenizer)"
            )
    w = report.warnings
    train_rows = encode_causal_rows(config, tokenizer, train, w, "training data")
    val_rows = encode_causal_rows(config, tokenizer, validation, w, "validation data")
    tests = {
        name: _dataset(encode_causal_rows(config, tokenizer, items, w, name))
        for name, (_, items) in evals.items()
    }
    for msg in w:
        log.warning("%s", msg)
    return PreparedData(
        train=_dataset(train_rows),
        eval=_dataset(val_rows) if val_rows else None,
        tests=tests,
        collator=CausalCollator(int(tokenizer.pad_token_id)),
        num_train_tokens=sum(len(r["input_ids"]) for r in train_rows),
        chat_template_defaulted=defaulted,
        **common,
    )


# ----------------------------------------------------------------------------- classification


def _classification(
    config: TrainerConfig,
    tokenizer: Any,
    train: Rows,
    validation: Rows,
    evals: Evals,
    common: dict[str, Any],
) -> PreparedData:
    from transformers import DataCollatorWithPadding

    labels: list[str] = common["labels"]
    index = {name: i for i, name in enumerate(labels)}
    max_len = config.spec.hyperparameters.max_seq_length

    def encode(rows: Sequence[dict[str, Any]]) -> Any:
        if not rows:
            return None
        feats = encode_classification(
            tokenizer,
            [r["text"] for r in rows],
            [index[r["label"]] for r in rows],
            max_len,
            pairs=[r.get("text_pair") for r in rows],
        )
        import datasets

        return datasets.Dataset.from_dict(feats)

    train_ds = encode([it.record for it in train])
    return PreparedData(
        train=train_ds,
        eval=encode([it.record for it in validation]),
        tests={name: encode([it.record for it in items]) for name, (_, items) in evals.items()},
        collator=DataCollatorWithPadding(tokenizer),
        num_train_tokens=sum(sum(m) for m in train_ds["attention_mask"]),
        **common,
    )


# ------------------------------------------------------------------------------------ NER


def _ner(
    config: TrainerConfig,
    tokenizer: Any,
    train: Rows,
    validation: Rows,
    evals: Evals,
    common: dict[str, Any],
) -> PreparedData:
    from transformers import DataCollatorForTokenClassification

    labels: list[str] = common["labels"]
    index = {name: i for i, name in enumerate(labels)}
    max_len = config.spec.hyperparameters.max_seq_length
    report: DataReport = common["report"]

    def encode(rows: Sequence[dict[str, Any]], what: str) -> Any:
        if not rows:
            return None
        feats = []
        cut = 0
        for r in rows:
            f, dropped = encode_ner(tokenizer, r["tokens"], [index[t] for t in r["tags"]], max_len)
            cut += dropped > 0
            feats.append(f)
        if cut:
            report.warnings.append(
                f"{what}: {cut} sentences longer than maxSeqLength {max_len} tokens truncated"
            )
        return _dataset(feats)

    train_ds = encode([it.record for it in train], "training data")
    return PreparedData(
        train=train_ds,
        eval=encode([it.record for it in validation], "validation data"),
        tests={
            name: encode([it.record for it in items], name) for name, (_, items) in evals.items()
        },
        collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX),
        num_train_tokens=sum(len(x) for x in train_ds["input_ids"]),
        **common,
    )
