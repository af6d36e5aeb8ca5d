"""The real public datasets in ../shared/datasets pass validation and tokenize as documented.

Validation runs on every full file (pure Python, fast); tokenization on a slice (copied to the
test's temporary directory, never into the repo) with the tiny tokenizer. The row counts are the
ones ../shared/datasets/README.md states.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobSpec
from finetune_trainer.config import JobRef, TrainerConfig
from finetune_trainer.data import DataValidationError, prepare_data, validate_data
from finetune_trainer.tokenization import IGNORE_INDEX
from transformers import AutoTokenizer

CASES = [
    # file, task, format, rows
    ("sst2_train_4000.jsonl", "sequence-classification", "classification", 4000),
    ("sst2_validation_800.jsonl", "sequence-classification", "classification", 800),
    ("topical_chat_valid_freq_500.jsonl", "causal-lm", "chat", 500),
    ("wnut17_train_1000.jsonl", "token-classification", "ner", 1000),
    ("wnut17_test_300.jsonl", "token-classification", "ner", 300),
]


def config(uri: Path, task: str, fmt: str, **hp: Any) -> TrainerConfig:
    doc = {
        "task": task,
        "baseModel": {"uri": "/m"},
        "output": {"uri": "/out"},
        "datasets": [{"name": "d", "uri": str(uri), "format": fmt}],
        "hyperparameters": {"maxSeqLength": 512, **hp},
    }
    spec = FineTuneJobSpec.model_validate(doc, context={"local": True})
    return TrainerConfig(job=JobRef("j"), run_id="r", spec=spec, base_model_uri="/m")


def head(src: Path, dest: Path, lines: int) -> Path:
    with src.open(encoding="utf-8") as fh:
        dest.write_text("".join(itertools.islice(fh, lines)), encoding="utf-8")
    return dest


@pytest.mark.parametrize(("name", "task", "fmt", "rows"), CASES)
def test_real_files_validate_clean(
    shared_datasets: Path, name: str, task: str, fmt: str, rows: int
) -> None:
    path = shared_datasets / name
    report = validate_data(config(path, task, fmt), {"dataset:d": path})
    assert report.rows == {"dataset:d": rows}
    if fmt == "classification":
        assert report.labels == ["negative", "positive"]
    if fmt == "ner":
        assert report.labels is not None and report.labels[0] == "O"
        assert {t[2:] for t in report.labels[1:]} == {
            "person",
            "location",
            "group",
            "corporation",
            "product",
            "creative-work",
        }


def test_alpaca_has_one_bad_row_and_it_is_found(shared_datasets: Path) -> None:
    """The real Alpaca sample holds one row with an empty output (line 679): training on it
    would teach nothing, so validation stops the job and names the line."""
    path = shared_datasets / "alpaca_2000.jsonl"
    with pytest.raises(DataValidationError) as err:
        validate_data(config(path, "causal-lm", "instruction"), {"dataset:d": path})
    assert err.value.problems == [f'{path}:679: field "output" is empty']


def test_gutenberg_text_paragraphs(
    shared_datasets: Path, tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    book = shared_datasets / "gutenberg_3books.txt"
    report = validate_data(config(book, "causal-lm", "text"), {"dataset:d": book})
    assert report.rows["dataset:d"] > 5000  # one row per paragraph
    part = head(book, tmp_path / "part.txt", 400)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    data = prepare_data(config(part, "causal-lm", "text", packing=True), tok, {"dataset:d": part})
    blocks = list(data.train)
    assert all(len(b["input_ids"]) == 512 for b in blocks[:-1])
    assert data.num_train_tokens == sum(len(b["input_ids"]) for b in blocks)


def test_topical_chat_assistant_only(
    shared_datasets: Path, tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    part = head(shared_datasets / "topical_chat_valid_freq_500.jsonl", tmp_path / "c.jsonl", 20)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    data = prepare_data(
        config(part, "causal-lm", "chat", maxSeqLength=4096), tok, {"dataset:d": part}
    )
    for row in data.train:
        trained = tok.decode(
            [
                t
                for t, lab in zip(row["input_ids"], row["labels"], strict=True)
                if lab != IGNORE_INDEX
            ]
        )
        assert "<|user|>" not in trained and "<|assistant|>" not in trained
        assert trained.count("<|end|>") >= 9  # conversations hold 10+ assistant turns


def test_alpaca_and_wnut_tokenize(
    shared_datasets: Path, tmp_path: Path, tiny_tokenizer_dir: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    alpaca = head(shared_datasets / "alpaca_2000.jsonl", tmp_path / "a.jsonl", 100)
    data = prepare_data(config(alpaca, "causal-lm", "instruction"), tok, {"dataset:d": alpaca})
    assert len(data.train) == 100
    assert all(row["labels"][0] == IGNORE_INDEX for row in data.train)
    wnut = head(shared_datasets / "wnut17_train_1000.jsonl", tmp_path / "w.jsonl", 100)
    data = prepare_data(config(wnut, "token-classification", "ner"), tok, {"dataset:d": wnut})
    assert len(data.train) == 100
    for row in data.train:
        assert len(row["labels"]) == len(row["input_ids"])
