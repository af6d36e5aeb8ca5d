"""The data validation pass: every bad row reported as ``file:line: what is wrong``.

No tokenizer or model: validate_data runs before anything heavy is loaded. Line numbers are
checked exactly for every file type (JSONL, JSON arrays, CSV with multi-line quoted fields,
Parquet row numbers, plain text paragraphs).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.config import TrainerConfig
from finetune_trainer.data import DataValidationError, validate_data
from finetune_trainer.formats import check_columns_mapping

from tests.support.trainer_jobs import data_config as make_config


def one(
    path: Path, fmt: str, task: str = "causal-lm", **ds: Any
) -> tuple[TrainerConfig, dict[str, Path]]:
    cfg = make_config([{"name": "d", "uri": str(path), "format": fmt, **ds}], task=task)
    return cfg, {"dataset:d": path}


def problems_of(cfg: TrainerConfig, files: dict[str, Path]) -> list[str]:
    with pytest.raises(DataValidationError) as err:
        validate_data(cfg, files)
    assert str(err.value).startswith("The training data has")
    return err.value.problems


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_good_jsonl_reports_counts(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    cfg, files = one(f, "completion")
    report = validate_data(cfg, files)
    assert report.rows == {"dataset:d": 3}
    assert report.train_rows == 3
    assert report.labels is None


def test_jsonl_bad_rows_exact_lines(tmp_path: Path) -> None:
    f = jsonl(
        tmp_path / "c.jsonl",
        [
            {"text": "fine", "label": "pos"},  # 1
            "",  # 2 blank: skipped
            "{not json",  # 3
            {"text": "", "label": "neg"},  # 4 empty text
            {"text": "x"},  # 5 label missing
            {"text": 7, "label": "neg"},  # 6 wrong type
            [1, 2],  # 7 not an object
            {"text": "ok", "label": None},  # 8 null label
            {"text": "ok", "label": "neg"},  # 9
        ],
    )
    cfg, files = one(f, "classification", task="sequence-classification")
    probs = problems_of(cfg, files)
    where = [p.split(": ", 1)[0] for p in probs]
    assert where == [f"{f}:{n}" for n in (3, 4, 5, 6, 7, 8)]
    assert "not JSON" in probs[0]
    assert 'field "text" is empty' in probs[1]
    assert 'missing field "label"' in probs[2] and "spec.datasets[0].columns" in probs[2]
    assert 'field "text" must be a string, got a number (7)' in probs[3]
    assert "expected a JSON object" in probs[4]
    assert "label missing" in probs[5]


def test_missing_field_names_the_mapping(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "s.jsonl", [{"sentence": "great", "sentiment": "pos"}])
    cfg, files = one(f, "classification", task="sequence-classification")
    probs = problems_of(cfg, files)
    assert probs[0].startswith(f'{f}:1: missing field "text"')
    assert "{text: <your column>}" in probs[0] and "the row has: sentence, sentiment" in probs[0]


def test_column_mapping_applies_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    f = jsonl(
        tmp_path / "s.jsonl",
        [{"sentence": "great", "sentiment": "pos"}, {"sentence": "bad", "sentiment": "neg"}],
    )
    cfg, files = one(
        f,
        "classification",
        task="sequence-classification",
        columns={"text": "sentence", "label": "sentiment"},
    )
    assert validate_data(cfg, files).labels == ["neg", "pos"]
    # The API refuses unknown keys at admission; the trainer checks again (a config file can be
    # written by hand), through the same table.
    assert check_columns_mapping(
        "classification", {"txt": "sentence"}, "spec.datasets[0].columns"
    ) == [
        "spec.datasets[0].columns: unknown column 'txt' for format classification; the keys of "
        "columns are the format's fields (text, text_pair, label) and the values your file's "
        "column names"
    ]
    # A mapped column that is absent says where the name came from.
    cfg, files = one(
        f,
        "classification",
        task="sequence-classification",
        columns={"text": "body", "label": "sentiment"},
    )
    assert 'missing field "body"' in problems_of(cfg, files)[0]


def test_chat_problems(tmp_path: Path) -> None:
    f = jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
            {"messages": [{"role": "bot", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            {"conversations": [{"from": "alien", "value": "x"}]},
            {"messages": []},
            {
                "messages": [
                    {"role": "user", "content": ["a"]},
                    {"role": "assistant", "content": "x"},
                ]
            },
        ],
    )
    cfg, files = one(f, "chat")
    probs = problems_of(cfg, files)
    assert [p.split(": ", 1)[0] for p in probs] == [f"{f}:{n}" for n in (2, 3, 5, 6, 7)]
    assert "unknown role; use one of assistant, system, tool, user" in probs[0]
    assert "no assistant turn" in probs[1]
    assert '"conversations"[0].from is "alien": unknown role' in probs[2]
    assert "empty list" in probs[3]
    assert ".content must be a string" in probs[4]


def test_ner_problems(tmp_path: Path) -> None:
    f = jsonl(
        tmp_path / "ner.jsonl",
        [
            {"tokens": ["John", "lives", "here"], "tags": ["B-person", "O", "O"]},
            {"tokens": ["a", "b"], "tags": ["O"]},
            {"tokens": ["a", "b"], "tags": ["O", "X-thing"]},
            {"tokens": ["a", "b"], "tags": ["O", "I-person"]},
            {"tokens": "not-a-list-but-ok", "tags": ["O"]},
        ],
    )
    cfg, files = one(f, "ner", task="token-classification")
    probs = problems_of(cfg, files)
    assert (
        probs[0]
        == f'{f}:2: "tokens" has 2 items but "tags" has 1: every token needs exactly one tag'
    )
    assert probs[1].startswith(f"{f}:3: \"tags\"[1] is 'X-thing': not a BIO tag")
    assert probs[2].startswith(f"{f}:4: \"tags\"[1] is 'I-person' after 'O'")
    assert len(probs) == 3  # a CSV-style whitespace string is a valid token list


def test_json_array_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text('[\n  {"text": "one"},\n  {"text": ""},\n\n  {\n    "txt": "x"\n  }\n]\n')
    cfg, files = one(f, "text")
    probs = problems_of(cfg, files)
    assert [p.split(": ", 1)[0] for p in probs] == [f"{f}:3", f"{f}:5"]


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "a.json", [{"text": "one"}, {"text": ""}])
    cfg, files = one(f, "text")
    assert problems_of(cfg, files) == [f'{f}:2: field "text" is empty']


def test_csv_lines_count_quoted_newlines(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        "prompt,completion\n"  # 1
        '"multi\nline prompt",fine\n'  # 2-3
        "p,\n"  # 4: empty completion
        "only-one-field\n"  # 5
        "\n"  # 6 blank
        "p,c\n"  # 7
        '"x",""\n'  # 8
    )
    cfg, files = one(f, "completion")
    probs = problems_of(cfg, files)
    assert probs == [
        f'{f}:4: field "completion" is empty',
        f"{f}:5: has 1 fields but the header has 2 (prompt, completion); quote fields that "
        "contain commas",
        f'{f}:8: field "completion" is empty',
    ]


def test_csv_list_and_label_cells(tmp_path: Path) -> None:
    f = tmp_path / "n.csv"
    f.write_text('tokens,tags\n"[""New"", ""York""]","B-location I-location"\n')
    cfg, files = one(f, "ner", task="token-classification")
    assert validate_data(cfg, files).labels == ["O", "B-location", "I-location"]


def test_parquet_row_numbers(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["good", "bad", "ok"], "label": [1, None, 0]}), f)
    cfg, files = one(f, "classification", task="sequence-classification")
    assert problems_of(cfg, files) == [f'{f}:row 2: label missing: field "label" is null']
    pq.write_table(pa.table({"text": ["good", "bad", "ok"], "label": [1, 2, 0]}), f)
    assert validate_data(cfg, files).labels == ["0", "1", "2"]


def test_prefix_reads_every_file_and_names_them_by_uri(tmp_path: Path) -> None:
    root = tmp_path / "prefix"
    (root / "sub").mkdir(parents=True)
    jsonl(root / "a.jsonl", [{"text": "a"}])
    jsonl(root / "sub" / "b.jsonl", [{"text": "b"}, {"text": 3}])
    (root / "README.md").write_text("ignored")
    (root / "notes.xml").write_text("ignored")
    cfg = make_config([{"name": "d", "uri": "s3://bucket/data/", "format": "text"}])
    with pytest.raises(DataValidationError) as err:
        validate_data(cfg, {"dataset:d": root})
    assert err.value.problems == [
        's3://bucket/data/sub/b.jsonl:2: field "text" must be a string, got a number (3)'
    ]


def test_file_level_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    bad_ext = tmp_path / "data.xlsx"
    bad_ext.write_text("x")
    no_data = tmp_path / "nodata"
    no_data.mkdir()
    (no_data / "x.xml").write_text("x")
    header_only = tmp_path / "h.csv"
    header_only.write_text("text\n")
    cases = {
        empty: "file is empty",
        blank: "only blank lines",
        bad_ext: "unsupported file extension '.xlsx'",
        no_data: "no data files under this prefix (found only: x.xml)",
        header_only: "header but no data rows",
        tmp_path / "missing.jsonl": "not found",
    }
    for path, expected in cases.items():
        cfg, files = one(path, "text")
        probs = problems_of(cfg, files)
        assert len(probs) == 1 and probs[0].startswith(f"{path}: ") and expected in probs[0], probs


def test_txt_only_for_text_format(tmp_path: Path) -> None:
    f = tmp_path / "book.txt"
    f.write_text("Para one\nstill one\n\n\nPara two\n")
    cfg, files = one(f, "text")
    assert validate_data(cfg, files).rows == {"dataset:d": 2}
    cfg, files = one(f, "completion")
    assert "suit only format text" in problems_of(cfg, files)[0]


def test_problem_limit(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "many.jsonl", [{"text": ""}] * 120)
    cfg, files = one(f, "text")
    with pytest.raises(DataValidationError) as err:
        validate_data(cfg, files)
    assert err.value.total == 120
    assert len(err.value.problems) == 51
    assert err.value.problems[49].startswith(f"{f}:50:")
    assert err.value.problems[50] == "... and 70 more"
    assert "120 problems" in str(err.value)


def test_format_must_fit_task(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "x"}])
    cfg, files = one(f, "classification", task="sequence-classification")
    # The API refuses this at admission; a hand-written trainer config is checked again.
    cfg = dataclasses.replace(cfg, spec=cfg.spec.model_copy(update={"task": "causal-lm"}))
    with pytest.raises(DataValidationError) as err:
        validate_data(cfg, files)
    assert (
        "spec.datasets[0].format: classification does not fit task causal-lm"
        in err.value.problems[0]
    )


def test_single_label_and_unknown_eval_labels(tmp_path: Path) -> None:
    train = jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}] * 2)
    cfg, files = one(train, "classification", task="sequence-classification")
    assert "classification needs at least two labels" in problems_of(cfg, files)[0]
    train = jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    val = jsonl(tmp_path / "v.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "z"}])
    cfg = make_config(
        [{"name": "d", "uri": str(train), "format": "classification"}],
        task="sequence-classification",
        validation={"uri": str(val)},
    )
    probs = problems_of(cfg, {"dataset:d": train, "validation": val})
    assert probs == [
        f"{val}:2: label 'z' never occurs in the training data, so the model cannot predict it "
        "(training labels: x, y)"
    ]


def test_no_local_copy_is_reported(tmp_path: Path) -> None:
    cfg = make_config([{"name": "d", "uri": "s3://bucket/k.jsonl", "format": "text"}])
    probs = problems_of(cfg, {})
    assert probs == ["s3://bucket/k.jsonl: no local copy was given for dataset:d (launch bug)"]


def test_warnings_duplicates_leakage_imbalance(tmp_path: Path) -> None:
    rows = [{"text": f"good {i}", "label": "pos"} for i in range(22)] + [
        {"text": "bad", "label": "neg"},
        {"text": "good 3", "label": "pos"},  # line 24 repeats line 4
    ]
    train = jsonl(tmp_path / "t.jsonl", rows)
    val = jsonl(
        tmp_path / "v.jsonl", [{"text": "good 0", "label": "pos"}, {"text": "new", "label": "neg"}]
    )
    cfg = make_config(
        [{"name": "d", "uri": str(train), "format": "classification"}],
        task="sequence-classification",
        validation={"uri": str(val)},
    )
    report = validate_data(cfg, {"dataset:d": train, "validation": val})
    assert report.label_counts == {"neg": 1, "pos": 23}
    assert report.warnings == [
        f"1 training rows are exact duplicates (first: {train}:24 repeats {train}:4)",
        f"1 of 2 validation rows also occur in the training data, so its scores overstate "
        f"generalisation (first: {val}:1 = {train}:1)",
        "training labels are imbalanced (more than 10:1): neg=1, pos=23; accuracy alone will "
        "flatter the model, watch eval_f1",
    ]


def test_validation_needs_no_torch(tmp_path: Path) -> None:
    """launch validates before torchrun starts: the validation path must not import torch."""
    import subprocess
    import sys

    f = jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    code = (
        "import sys\n"
        "from tests.trainer.test_data_validation import one\n"
        "from finetune_trainer.data import validate_data\n"
        f"cfg, files = one(__import__('pathlib').Path({str(f)!r}), 'text')\n"
        "assert validate_data(cfg, files).rows == {'dataset:d': 1}\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_json_single_object_is_explained(tmp_path: Path) -> None:
    f = tmp_path / "wrapped.json"
    f.write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}, indent=2))
    cfg, files = one(f, "text")
    assert problems_of(cfg, files) == [
        f"{f}: holds a single JSON object (its key 'data' holds a list), not rows: write a JSON "
        "array of objects [{...}, {...}] or JSON Lines (one object per line)"
    ]
    # One object on one line is a one-row JSON Lines file.
    f.write_text(json.dumps({"text": "a"}))
    assert validate_data(cfg, files).rows == {"dataset:d": 1}
