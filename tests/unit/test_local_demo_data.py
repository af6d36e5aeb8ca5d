"""The demo data generators: deterministic, balanced, and not solvable by one keyword."""

from __future__ import annotations

import json
from pathlib import Path

from finetune_operator.demo_data import (
    SENTIMENT_LABELS,
    instruction_rows,
    sentiment_rows,
    write_jsonl,
)


def test_sentiment_is_deterministic_and_balanced() -> None:
    a, b = sentiment_rows(200, seed=0), sentiment_rows(200, seed=0)
    assert a == b
    assert sentiment_rows(200, seed=1) != a
    labels = [r["label"] for r in a]
    assert set(labels) == set(SENTIMENT_LABELS)
    assert labels.count("positive") == labels.count("negative") == 100
    assert len({r["text"] for r in a}) == 200  # no duplicates


def test_negation_and_contrast_occur_with_both_labels() -> None:
    rows = sentiment_rows(960)
    for cue in (" not ", ", but "):
        labels = {r["label"] for r in rows if cue in r["text"]}
        assert labels == {"positive", "negative"}, cue
    # Negated positive words are negative, and negated negative words are positive.
    assert any(
        r["label"] == "negative" and " not good" in r["text"] for r in sentiment_rows(4000, 5)
    )
    assert any(
        r["label"] == "positive" and " not bad" in r["text"] for r in sentiment_rows(4000, 5)
    )


def test_splits_differ() -> None:
    train = {r["text"] for r in sentiment_rows(960, 0)}
    test = [r["text"] for r in sentiment_rows(240, 2)]
    assert sum(t in train for t in test) < len(test) // 2


def test_instruction_answers_are_right() -> None:
    rows = instruction_rows(300)
    assert rows == instruction_rows(300)
    kinds = {r["instruction"] for r in rows}
    assert len(kinds) == 4
    for r in rows:
        if r["instruction"].startswith("Add"):
            a, b = r["input"].split(" + ")
            assert int(r["output"]) == int(a) + int(b)
        elif "backwards" in r["instruction"]:
            assert r["output"] == r["input"][::-1]
        elif "capital" in r["instruction"]:
            assert r["output"] == r["input"].upper()


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    rows = sentiment_rows(10)
    path = write_jsonl(rows, tmp_path / "a" / "b.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_test_split_has_held_out_adjectives() -> None:
    from finetune_operator.demo_data import _HELD_OUT_NEGATIVE, _HELD_OUT_POSITIVE

    held_out = _HELD_OUT_POSITIVE + _HELD_OUT_NEGATIVE
    train = " ".join(r["text"] for r in sentiment_rows(960, 0) + sentiment_rows(96, 1))
    test = " ".join(r["text"] for r in sentiment_rows(240, 2))
    assert not any(w in train for w in held_out)
    assert sum(w in test for w in held_out) >= 6


def test_classify_rows_reads_the_server_answer() -> None:
    from finetune_operator.local_demo import classify_rows

    answer = {
        "object": "list",
        "data": [{"label": "positive", "score": 0.91234}, {"label": "negative"}],
    }
    assert classify_rows(answer) == [("positive", "0.912"), ("negative", "")]
    assert classify_rows({"error": {"message": "x"}}) == []
