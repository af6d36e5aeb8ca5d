"""Evaluation: metric arithmetic on known predictions, and evaluate_model/evaluate_baseline on a
real tiny Llama (tests/support/tiny_models.py) for every task."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_operator.api import FineTuneJobSpec
from finetune_trainer.config import JobRef, TrainerConfig
from finetune_trainer.data import prepare_data
from finetune_trainer.evaluate import (
    _fewshot_rows,
    baseline_detailed,
    evaluate_baseline,
    evaluate_detailed,
    evaluate_model,
    metric_deltas,
)
from finetune_trainer.metrics_calc import classification_metrics, confusion_matrix, ner_metrics
from finetune_trainer.tokenization import IGNORE_INDEX
from transformers import AutoModelForCausalLM, AutoTokenizer

# ------------------------------------------------------------------------- known predictions


def test_classification_metrics_by_hand() -> None:
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    assert confusion_matrix(gold, pred, 3) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = classification_metrics(gold, pred, 3)
    # per class: P = 2/2, 1/2, 1/2; R = 2/3, 1/2, 1/1; F1 = 0.8, 0.5, 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_classification_macro_skips_absent_labels() -> None:
    # Label 2 occurs neither in gold nor predictions: it does not drag the macro average down.
    m = classification_metrics([0, 1], [0, 1], 3)
    assert m == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    m = classification_metrics([0, 0, 0, 0], [0, 0, 0, 0], 2)
    assert m["f1"] == 1.0
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        classification_metrics([0, 1], [0], 2)


def test_ner_metrics_entity_level() -> None:
    gold = [["B-per", "I-per", "O", "B-loc"], ["O", "B-org"]]
    pred = [["B-per", "O", "O", "B-loc"], ["O", "B-org"]]
    m = ner_metrics(gold, pred)
    # Entities: gold {per(0-1), loc, org}; predicted {per(0), loc, org}: per span is wrong.
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert ner_metrics([["O"]], [["B-x"]])["precision"] == 0.0


# ----------------------------------------------------------------------------- real models


def make_config(
    datasets: list[dict[str, Any]], task: str = "causal-lm", **spec: Any
) -> TrainerConfig:
    doc = {
        "task": task,
        "baseModel": {"uri": "/m"},
        "datasets": datasets,
        "output": {"uri": "/out"},
        **spec,
    }
    parsed = FineTuneJobSpec.model_validate(doc, context={"local": True})
    return TrainerConfig(job=JobRef("job"), run_id="run", spec=parsed, base_model_uri="/m")


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


COMPLETIONS = [
    {"prompt": f"Question {i}: what is the capital of France? ", "completion": f"Paris {i}."}
    for i in range(12)
]


def causal_setup(
    tmp_path: Path, tok_dir: Path, packing: bool, max_len: int = 64, **spec: Any
) -> tuple[TrainerConfig, Any, Any]:
    f = jsonl(tmp_path / "c.jsonl", COMPLETIONS)
    cfg = make_config(
        [{"name": "d", "uri": str(f), "format": "completion"}],
        validation={"uri": str(f)},
        hyperparameters={"maxSeqLength": max_len, "packing": packing, "batchSizePerDevice": 3},
        **spec,
    )
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return cfg, tok, prepare_data(cfg, tok, {"dataset:d": f, "validation": f})


def test_causal_loss_is_token_mean_and_packing_changes_nothing(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cfg, tok, plain = causal_setup(tmp_path, tiny_llama_dir, packing=False)
    got = evaluate_model(model, tok, cfg, plain)
    # Reference: each row alone through the model's own loss, weighted by its target count.
    total = count = 0.0
    with torch.no_grad():
        for row in plain.eval:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    assert got["eval_loss"] == pytest.approx(total / count, rel=1e-4)
    assert got["eval_perplexity"] == pytest.approx(math.exp(got["eval_loss"]), rel=1e-6)
    # Packed rows see only themselves: the same loss as unpacked.
    cfg_p, tok_p, packed = causal_setup(tmp_path, tiny_llama_dir, packing=True)
    assert len(packed.eval) < len(plain.eval)
    assert evaluate_model(model, tok_p, cfg_p, packed)["eval_loss"] == pytest.approx(
        got["eval_loss"], rel=1e-4
    )
    model.train()
    evaluate_model(model, tok, cfg, plain)
    assert model.training


def test_packed_rows_do_not_attend_to_each_other(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """What a training step sees: the collated packed batch, model in train mode."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.train()
    _, _, packed = causal_setup(tmp_path, tiny_llama_dir, packing=True)
    batch = packed.collator([packed.eval[0], packed.eval[1]])
    assert batch["use_cache"] is False and "attention_mask" not in batch
    with torch.no_grad():
        logits = model(**batch).logits
        for b in range(2):
            pos = batch["position_ids"][b].tolist()
            starts = [k for k, p in enumerate(pos) if p == 0] + [len(pos)]
            assert len(starts) > 2
            for a, e in itertools.pairwise(starts):
                alone = model(input_ids=batch["input_ids"][b : b + 1, a:e]).logits[0]
                assert torch.allclose(alone, logits[b, a:e], atol=1e-4), (b, a, e)


def test_causal_baseline_fewshot(tmp_path: Path, tiny_llama_dir: Path) -> None:
    cfg, tok, data = causal_setup(
        tmp_path,
        tiny_llama_dir,
        packing=False,
        max_len=256,
        evaluation={"baseline": {"fewShot": 2}},
    )
    assert len(data.train_examples) == 2
    rows = _fewshot_rows(cfg, tok, data, data.eval_records["validation"])
    first = rows[0]
    text = tok.decode(first["input_ids"])
    shots = [ex["prompt"] + ex["completion"] for ex in data.train_examples]
    assert text.startswith(shots[0] + "\n\n" + shots[1] + "\n\n")
    # The scored tokens are exactly the evaluation row's completion + EOS.
    trained = tok.decode(
        [
            t
            for t, lab in zip(first["input_ids"], first["labels"], strict=True)
            if lab != IGNORE_INDEX
        ]
    )
    # (the prompt's trailing space merges into the token " Paris", which is scored whole)
    assert trained == " " + COMPLETIONS[0]["completion"] + "</s>"
    result = baseline_detailed(cfg, tiny_llama_dir, tok, data)
    assert "2-shot" in result.notes[0]
    assert set(result.metrics) == {"eval_loss", "eval_perplexity"}
    assert math.isfinite(result.metrics["eval_loss"])
    assert evaluate_baseline(cfg, tiny_llama_dir, tok, data) == result.metrics
    assert metric_deltas({"eval_loss": 1.0, "x": 2.0}, {"eval_loss": 1.5}) == {"eval_loss": -0.5}


def test_metrics_filter(tmp_path: Path, tiny_llama_dir: Path) -> None:
    cfg, tok, data = causal_setup(
        tmp_path, tiny_llama_dir, packing=False, evaluation={"metrics": ["perplexity"]}
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert set(evaluate_model(model, tok, cfg, data)) == {"eval_loss", "eval_perplexity"}
    cfg, tok, data = causal_setup(
        tmp_path, tiny_llama_dir, packing=False, evaluation={"metrics": ["loss"]}
    )
    assert set(evaluate_model(model, tok, cfg, data)) == {"eval_loss"}


def test_classification_eval_matches_manual_argmax(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    rows = [
        {
            "text": f"review {i} great" if i % 2 else f"review {i} awful",
            "label": "pos" if i % 2 else "neg",
        }
        for i in range(10)
    ]
    f = jsonl(tmp_path / "cls.jsonl", rows)
    cfg = make_config(
        [{"name": "d", "uri": str(f), "format": "classification"}],
        task="sequence-classification",
        validation={"uri": str(f)},
        hyperparameters={"batchSizePerDevice": 4},
    )
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = prepare_data(cfg, tok, {"dataset:d": f, "validation": f})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2)
    result = evaluate_detailed(model, tok, cfg, data)
    with torch.no_grad():
        preds = [
            int(model(input_ids=torch.tensor([r["input_ids"]])).logits.argmax(-1))
            for r in data.eval
        ]
    gold = list(data.eval["labels"])
    expected = classification_metrics(gold, preds, 2)
    for k, v in expected.items():
        assert result.metrics[f"eval_{k}"] == pytest.approx(v)
    assert result.confusion_matrix == confusion_matrix(gold, preds, 2)
    assert result.labels == ["neg", "pos"]
    base = baseline_detailed(cfg, tiny_llama_dir, tok, data)
    assert "chance-level" in base.notes[0]
    assert set(base.metrics) == set(result.metrics)


def test_ner_eval_on_tiny_model(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForTokenClassification

    rows = [
        {"tokens": ["John", "lives", "in", "London"], "tags": ["B-person", "O", "O", "B-location"]},
        {
            "tokens": ["Alice", "went", "to", "New", "York"],
            "tags": ["B-person", "O", "O", "B-location", "I-location"],
        },
    ]
    f = jsonl(tmp_path / "ner.jsonl", rows)
    cfg = make_config(
        [{"name": "d", "uri": str(f), "format": "ner"}],
        task="token-classification",
        validation={"uri": str(f)},
    )
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = prepare_data(cfg, tok, {"dataset:d": f, "validation": f})
    model = AutoModelForTokenClassification.from_pretrained(
        tiny_llama_dir, num_labels=len(data.labels or [])
    )
    result = evaluate_detailed(model, tok, cfg, data)
    assert set(result.metrics) == {
        "eval_loss",
        "eval_precision",
        "eval_recall",
        "eval_f1",
        "eval_accuracy",
    }
    assert result.examples == 2
    # Recompute from the model's own predictions, word by word.
    gold_seqs, pred_seqs = [], []
    tags = data.labels or []
    with torch.no_grad():
        for r in data.eval:
            logits = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            keep = [k for k, lab in enumerate(r["labels"]) if lab != IGNORE_INDEX]
            gold_seqs.append([tags[r["labels"][k]] for k in keep])
            pred_seqs.append([tags[int(logits[k].argmax())] for k in keep])
    assert [len(s) for s in gold_seqs] == [4, 5]
    for k, v in ner_metrics(gold_seqs, pred_seqs).items():
        assert result.metrics[f"eval_{k}"] == pytest.approx(v)


def test_nothing_to_evaluate_is_a_clear_error(tmp_path: Path, tiny_llama_dir: Path) -> None:
    f = jsonl(tmp_path / "c.jsonl", COMPLETIONS)
    cfg = make_config([{"name": "d", "uri": str(f), "format": "completion"}])
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = prepare_data(cfg, tok, {"dataset:d": f})
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ValueError, match="no validation set"):
        evaluate_model(model, tok, cfg, data)


def test_chat_baseline_with_template_less_base_tokenizer(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    convo = {
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi there"},
        ]
    }
    f = jsonl(tmp_path / "chat.jsonl", [convo] * 4)
    cfg = make_config(
        [{"name": "d", "uri": str(f), "format": "chat"}],
        validation={"uri": str(f)},
        evaluation={"baseline": {"fewShot": 1}},
        hyperparameters={"maxSeqLength": 128},
    )
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = prepare_data(cfg, tok, {"dataset:d": f, "validation": f})
    base_tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    base_tok.chat_template = None
    result = baseline_detailed(cfg, tiny_llama_dir, base_tok, data)
    assert "default ChatML" in result.notes[0] and "1-shot" in result.notes[1]
    assert math.isfinite(result.metrics["eval_loss"])
