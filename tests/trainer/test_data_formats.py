"""prepare_data per format: which tokens the loss sees, packing, labels, mixing and splits.

Uses the tiny byte-level BPE tokenizer from tests/support/tiny_models.py (built locally, with a
chat template); every assertion decodes real token ids.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.data import DataValidationError, mix_counts, prepare_data, split_indices
from finetune_trainer.formats import DEFAULT_CHAT_TEMPLATE
from finetune_trainer.tokenization import IGNORE_INDEX
from transformers import AutoTokenizer

from tests.support.trainer_jobs import data_config as make_config


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tok(tiny_tokenizer_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def prepare_one(
    tmp_path: Path,
    tok: Any,
    fmt: str,
    rows: list[dict[str, Any]],
    task: str = "causal-lm",
    **spec: Any,
) -> Any:
    f = jsonl(tmp_path / f"{fmt}.jsonl", rows)
    cfg = make_config([{"name": "d", "uri": str(f), "format": fmt}], task=task, **spec)
    return prepare_data(cfg, tok, {"dataset:d": f})


def trained_text(tok: Any, row: dict[str, Any]) -> str:
    return tok.decode(
        [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE_INDEX]
    )


def test_completion_loss_on_completion_only(tmp_path: Path, tok: Any) -> None:
    data = prepare_one(
        tmp_path,
        tok,
        "completion",
        [{"prompt": "What is the capital of France?", "completion": " Paris"}],
    )
    row = data.train[0]
    assert tok.decode(row["input_ids"]) == "What is the capital of France? Paris</s>"
    assert trained_text(tok, row) == " Paris</s>"
    assert row["labels"][0] == IGNORE_INDEX
    assert data.num_train_tokens == len(row["input_ids"])


def test_instruction_alpaca_prompt_masked(tmp_path: Path, tok: Any) -> None:
    data = prepare_one(
        tmp_path,
        tok,
        "instruction",
        [
            {
                "instruction": "Translate the sentence into French.",
                "input": "hello",
                "output": "bonjour",
            },
            {"instruction": "Write a short story about a cat.", "output": "Once upon a time."},
        ],
        hyperparameters={"maxSeqLength": 512},
    )
    by_output = {trained_text(tok, r): tok.decode(r["input_ids"]) for r in data.train}
    with_input = by_output["bonjour</s>"]
    assert (
        "### Instruction:\nTranslate the sentence into French.\n\n### Input:\nhello\n\n### Response:\nbonjour</s>"
        in with_input
    )
    no_input = by_output["Once upon a time.</s>"]
    assert "### Input:" not in no_input and no_input.endswith(
        "### Response:\nOnce upon a time.</s>"
    )


def test_chat_loss_on_assistant_turns_openai_and_sharegpt(tmp_path: Path, tok: Any) -> None:
    openai = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi there"},
            {"role": "user", "content": "ok?"},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "bye"},
        ]
    }
    share = {
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "hello"},
            {"from": "gpt", "value": "hi there"},
            {"from": "human", "value": "ok?"},
            {"from": "gpt", "value": "yes"},
            {"from": "human", "value": "bye"},
        ]
    }
    data = prepare_one(tmp_path, tok, "chat", [openai, share], hyperparameters={"seed": 1})
    rows = list(data.train)
    assert rows[0]["input_ids"] == rows[1]["input_ids"]
    assert rows[0]["labels"] == rows[1]["labels"]
    row = rows[0]
    rendered = tok.apply_chat_template(openai["messages"], tokenize=False)
    assert tok.decode(row["input_ids"]) == rendered
    # Only the two assistant turns (content + end-of-turn marker) are trained.
    assert trained_text(tok, row) == "hi there<|end|>\nyes<|end|>\n"
    masked = tok.decode(
        [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab == IGNORE_INDEX]
    )
    assert "hello" in masked and "bye" in masked and "be brief" in masked


def test_chat_default_template_when_tokenizer_has_none(tmp_path: Path, tok: Any) -> None:
    tok.chat_template = None
    data = prepare_one(
        tmp_path,
        tok,
        "chat",
        [
            {
                "messages": [
                    {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "hi"},
                ]
            }
        ],
    )
    assert data.chat_template_defaulted
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert any("no chat template" in w for w in data.report.warnings)
    row = data.train[0]
    assert tok.decode(row["input_ids"]) == (
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi<|im_end|></s>\n"
    )
    assert trained_text(tok, row) == "hi<|im_end|></s>\n"


def test_text_blocks_without_packing(tmp_path: Path, tok: Any) -> None:
    docs = [
        {"text": "The quick brown fox jumps over the lazy dog. " * 3},
        {"text": "Once upon a time there was a little house in the woods."},
    ]
    data = prepare_one(tmp_path, tok, "text", docs, hyperparameters={"maxSeqLength": 16})
    blocks = list(data.train)
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1])
    assert all(b["labels"] == b["input_ids"] for b in blocks)
    assert "position_ids" not in blocks[0]
    stream = [t for b in blocks for t in b["input_ids"]]
    encoded = [tok(d["text"])["input_ids"] + [tok.eos_token_id] for d in docs]
    # Rows are shuffled (seeded) before they are concatenated; either order, nothing lost.
    orders = [encoded[0] + encoded[1], encoded[1] + encoded[0]]
    assert any(stream == o[: len(stream)] and len(o) - len(stream) < 2 for o in orders)


def test_text_blocks_with_packing_restart_positions(tmp_path: Path, tok: Any) -> None:
    docs = [{"text": "hello world"}, {"text": "the quick brown fox"}, {"text": "data model"}]
    data = prepare_one(
        tmp_path, tok, "text", docs, hyperparameters={"maxSeqLength": 16, "packing": True}
    )
    block = data.train[0]
    ids, pos = block["input_ids"], block["position_ids"]
    assert len(ids) == 16 and pos[0] == 0
    # Every document ends with EOS; positions restart right after each one and count up inside.
    for k in range(1, 16):
        assert pos[k] == (0 if ids[k - 1] == tok.eos_token_id else pos[k - 1] + 1)
    assert pos.count(0) >= 3
    for k, p in enumerate(pos):
        assert (block["labels"][k] == IGNORE_INDEX) == (p == 0)
    docs_in_block = tok.decode(ids).split("</s>")
    assert {d.strip() for d in docs_in_block[:2]} <= {d["text"] for d in docs}


def test_packing_sft_rows(tmp_path: Path, tok: Any) -> None:
    rows = [{"prompt": f"question {i} ", "completion": "answer"} for i in range(6)]
    data = prepare_one(
        tmp_path, tok, "completion", rows, hyperparameters={"maxSeqLength": 24, "packing": True}
    )
    single = prepare_one(
        tmp_path, tok, "completion", rows[:1], hyperparameters={"maxSeqLength": 24}
    )
    n = len(single.train[0]["input_ids"])
    per_block = 24 // n
    assert len(data.train) == -(-6 // per_block)
    block = data.train[0]
    assert len(block["input_ids"]) == per_block * n
    assert block["position_ids"] == list(range(n)) * per_block
    starts = [k for k, p in enumerate(block["position_ids"]) if p == 0]
    assert all(block["labels"][k] == IGNORE_INDEX for k in starts)
    # Packed labels are the unpacked ones (the first label of a row is never a target anyway).
    assert block["labels"][:n] == [IGNORE_INDEX, *single.train[0]["labels"][1:]]
    batch = data.collator([data.train[0], data.train[-1]])
    assert "attention_mask" not in batch
    assert batch["position_ids"].shape == batch["input_ids"].shape
    pad = batch["input_ids"].shape[1] - len(data.train[-1]["input_ids"])
    if pad:
        assert batch["labels"][1, -pad:].tolist() == [IGNORE_INDEX] * pad
        assert batch["position_ids"][1, -pad:].tolist() == list(range(pad))


def test_truncation_and_dropped_rows_are_reported(tmp_path: Path, tok: Any) -> None:
    long_prompt = "hello world " * 20
    data = prepare_one(
        tmp_path,
        tok,
        "completion",
        [
            {"prompt": "hi", "completion": " world " * 30},
            {"prompt": long_prompt, "completion": "x"},
        ],
        hyperparameters={"maxSeqLength": 16},
    )
    assert len(data.train) == 1
    assert len(data.train[0]["input_ids"]) == 16
    warnings = " | ".join(data.report.warnings)
    assert "2 rows longer than maxSeqLength 16 truncated" in warnings
    assert "1 rows dropped" in warnings


def test_no_row_left_after_truncation_is_bad_data(tmp_path: Path, tok: Any) -> None:
    """Prompts that alone fill maxSeqLength leave nothing to train on: a clear bad-data error."""
    long_prompt = "hello world " * 20
    with pytest.raises(DataValidationError) as err:
        prepare_one(
            tmp_path,
            tok,
            "completion",
            [{"prompt": long_prompt, "completion": "x"}] * 3,
            hyperparameters={"maxSeqLength": 16},
        )
    assert "spec.hyperparameters.maxSeqLength" in str(err.value)
    assert "3 rows dropped" in str(err.value)


def test_classification_labels_sorted_and_stored(tmp_path: Path, tok: Any) -> None:
    data = prepare_one(
        tmp_path,
        tok,
        "classification",
        [
            {"text": "great film", "label": "positive"},
            {"text": "awful", "label": "negative"},
            {"text": "meh", "label": "neutral"},
        ],
        task="sequence-classification",
    )
    assert data.labels == ["negative", "neutral", "positive"]
    by_ids = {tuple(r["input_ids"]): r["labels"] for r in data.train}
    assert by_ids[tuple(tok("great film")["input_ids"])] == 2
    assert by_ids[tuple(tok("awful")["input_ids"])] == 0
    assert by_ids[tuple(tok("meh")["input_ids"])] == 1
    ints = prepare_one(
        tmp_path,
        tok,
        "classification",
        [
            {"text": "a", "label": 10},
            {"text": "b", "label": 2},
            {"text": "c", "label": "2"},
        ],
        task="sequence-classification",
    )
    assert ints.labels == ["2", "10"]
    assert sorted(ints.train["labels"]) == [0, 0, 1]
    batch = data.collator([data.train[0], data.train[1]])
    assert batch["input_ids"].shape[0] == 2
    assert batch["labels"].tolist() == [data.train[0]["labels"], data.train[1]["labels"]]


def test_classification_text_pair(tmp_path: Path, tok: Any) -> None:
    data = prepare_one(
        tmp_path,
        tok,
        "classification",
        [
            {"text": "a cat", "text_pair": "a dog", "label": "no"},
            {"text": "a cat", "text_pair": "a cat", "label": "yes"},
        ],
        task="sequence-classification",
    )
    assert tok("a cat", "a dog")["input_ids"] in list(data.train["input_ids"])


def test_ner_alignment_first_subtoken(tmp_path: Path, tok: Any) -> None:
    words = ["Zyxwv", "lives", "in", "London"]
    data = prepare_one(
        tmp_path,
        tok,
        "ner",
        [
            {"tokens": words, "tags": ["B-person", "O", "O", "B-location"]},
            {"tokens": ["New", "York"], "tags": ["B-location", "I-location"]},
        ],
        task="token-classification",
    )
    assert data.labels == ["O", "B-location", "B-person", "I-location"]
    enc = tok(words, is_split_into_words=True)
    row = next(r for r in data.train if r["input_ids"] == enc["input_ids"])
    word_ids = enc.word_ids()
    assert word_ids.count(0) > 1, "the made-up word should split into several sub-tokens"
    expected = []
    seen = set()
    tag_ids = [2, 0, 0, 1]
    for w in word_ids:
        if w is None or w in seen:
            expected.append(IGNORE_INDEX)
        else:
            seen.add(w)
            expected.append(tag_ids[w])
    assert row["labels"] == expected
    assert sum(1 for x in row["labels"] if x != IGNORE_INDEX) == len(words)


def test_mix_counts_rule() -> None:
    assert mix_counts([100, 100], [1.0, 1.0]) == [100, 100]
    assert mix_counts([100, 100], [3.0, 1.0]) == [150, 50]
    assert mix_counts([10, 20, 30], [1.0, 1.0, 1.0]) == [20, 20, 20]
    counts = mix_counts([7, 7, 7], [1.0, 1.0, 1.0])
    assert sum(counts) == 21
    assert mix_counts([3, 3, 1], [1.0, 1.0, 1.0]) == [3, 2, 2]


def test_mixing_proportions_in_prepared_data(tmp_path: Path, tok: Any) -> None:
    a = jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "completion": f" A{i}"} for i in range(40)])
    b = jsonl(tmp_path / "b.jsonl", [{"prompt": "b", "completion": f" B{i}"} for i in range(40)])
    cfg = make_config(
        [
            {"name": "a", "uri": str(a), "format": "completion", "weight": "3"},
            {"name": "b", "uri": str(b), "format": "completion", "weight": "1"},
        ]
    )
    data = prepare_data(cfg, tok, {"dataset:a": a, "dataset:b": b})
    texts = [tok.decode(r["input_ids"]) for r in data.train]
    source = Counter(t[0] for t in texts)
    assert source == {"a": 60, "b": 20}
    # 60 of 40 a-rows: every row once, 20 twice; b: 20 distinct rows out of 40.
    a_rows = Counter(t for t in texts if t[0] == "a")
    assert len(a_rows) == 40 and sorted(set(a_rows.values())) == [1, 2]
    assert len({t for t in texts if t[0] == "b"}) == 20
    assert data.report.train_rows == 80
    # Shuffled: the two sources interleave.
    assert texts[:20] != sorted(texts[:20], key=lambda t: t[0])


def test_split_ratio_deterministic(tmp_path: Path, tok: Any) -> None:
    tr, va = split_indices(100, 0.1, 42)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == list(range(100))
    assert split_indices(100, 0.1, 42) == (tr, va)
    assert split_indices(100, 0.1, 43) != (tr, va)
    assert split_indices(5, 0.01, 1)[1] != []  # at least one row held out
    rows = [{"prompt": "p", "completion": f" c{i}"} for i in range(50)]
    first = prepare_one(tmp_path, tok, "completion", rows, validation={"splitRatio": "0.2"})
    again = prepare_one(tmp_path, tok, "completion", rows, validation={"splitRatio": "0.2"})
    assert len(first.eval) == 10 and len(first.train) == 40
    assert list(first.eval["input_ids"]) == list(again.eval["input_ids"])
    train_set = {tuple(x) for x in first.train["input_ids"]}
    assert not train_set & {tuple(x) for x in first.eval["input_ids"]}
    assert first.test is first.eval


def test_eval_datasets_and_fewshot_pool(tmp_path: Path, tok: Any) -> None:
    train = jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "completion": f" c{i}"} for i in range(8)])
    test = jsonl(tmp_path / "e.jsonl", [{"question": "q", "answer": " a"}])
    cfg = make_config(
        [{"name": "d", "uri": str(train), "format": "completion"}],
        evaluation={
            "datasets": [
                {
                    "uri": str(test),
                    "name": "holdout",
                    "columns": {"prompt": "question", "completion": "answer"},
                }
            ],
            "baseline": {"fewShot": 3},
        },
    )
    data = prepare_data(cfg, tok, {"dataset:d": train, "eval:0": test})
    assert list(data.tests) == ["holdout"]
    assert tok.decode(data.test[0]["input_ids"]) == "q a</s>"
    assert len(data.train_examples) == 3
    assert data.eval_records["holdout"] == [{"prompt": "q", "completion": " a"}]


def test_chat_template_errors_name_the_row(tmp_path: Path, tok: Any) -> None:
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "system", "content": "x"}, *ok["messages"]]}
    f = jsonl(tmp_path / "chat.jsonl", [ok, bad, ok])
    cfg = make_config([{"name": "d", "uri": str(f), "format": "chat"}])
    with pytest.raises(DataValidationError) as err:
        prepare_data(cfg, tok, {"dataset:d": f})
    assert err.value.problems == [
        f"{f}:2: the tokenizer's chat template cannot render this conversation: "
        "System role not supported"
    ]


def test_chat_starting_with_assistant(tmp_path: Path, tok: Any) -> None:
    data = prepare_one(
        tmp_path,
        tok,
        "chat",
        [
            {
                "messages": [
                    {"role": "assistant", "content": "Welcome!"},
                    {"role": "user", "content": "thanks"},
                ]
            }
        ],
    )
    assert trained_text(tok, data.train[0]) == "Welcome!<|end|>\n"
