"""The evaluation gate and promotion decisions (finetune_operator.gate): pure functions."""

from __future__ import annotations

import pytest
from finetune_operator.api import GateRule
from finetune_operator.gate import evaluate_gate, lower_is_better, should_promote


def rule(metric: str, op: str, value: str) -> GateRule:
    return GateRule(metric=metric, op=op, value=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("op", "value", "threshold", "passed"),
    [
        ("<", "1.0", "1.2", True),
        ("<", "1.2", "1.2", False),
        ("<=", "1.2", "1.2", True),
        ("<=", "1.21", "1.2", False),
        (">", "0.9", "0.85", True),
        (">", "0.85", "0.85", False),
        (">=", "0.85", "0.850", True),
        ("==", "1e-1", "0.1", True),
        ("==", "0.1000001", "0.1", False),
    ],
)
def test_each_operator(op: str, value: str, threshold: str, passed: bool) -> None:
    result = evaluate_gate([rule("eval_loss", op, threshold)], {"eval_loss": value})
    assert result.passed is passed
    assert result.details[0].passed is passed
    assert f"eval_loss {value} {op} {threshold}" in result.message


def test_all_rules_must_hold_and_message_names_the_failures() -> None:
    rules = [rule("eval_loss", "<=", "1.2"), rule("eval_f1", ">=", "0.85")]
    ok = evaluate_gate(rules, {"eval_loss": "1.05", "eval_f1": "0.91"})
    assert ok.passed
    assert ok.message == "gate passed: eval_loss 1.05 <= 1.2; eval_f1 0.91 >= 0.85"
    bad = evaluate_gate(rules, {"eval_loss": "1.05", "eval_f1": "0.80"})
    assert not bad.passed
    assert bad.message == "gate failed: eval_f1 0.80 >= 0.85 is false"
    assert [d.passed for d in bad.details] == [True, False]


def test_missing_or_non_numeric_metric_fails() -> None:
    missing = evaluate_gate([rule("eval_f1", ">=", "0.5")], {"eval_loss": "1"})
    assert not missing.passed
    assert "eval_f1 missing from the results (have: eval_loss)" in missing.message
    assert missing.details[0].value is None
    for bad in ("nan", "inf", "abc", ""):
        result = evaluate_gate([rule("eval_loss", "<", "9")], {"eval_loss": bad})
        assert not result.passed, bad
        assert "cannot be compared" in result.message


def test_rules_as_mappings_and_empty_gate() -> None:
    assert evaluate_gate(
        [{"metric": "eval_loss", "op": "<", "value": "2"}], {"eval_loss": "1"}
    ).passed
    empty = evaluate_gate([], {})
    assert empty.passed and empty.details == ()


def test_direction() -> None:
    assert lower_is_better("eval_loss") and lower_is_better("perplexity")
    assert not lower_is_better("eval_f1") and not lower_is_better("eval_accuracy")


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "require", "promote", "words"),
    [
        ("eval_loss", "1.0", None, True, True, "no model serves"),
        ("eval_loss", "1.0", "1.1", True, True, "beats the champion's 1.1 (lower is better)"),
        ("eval_loss", "1.1", "1.0", True, False, "does not beat 1.0"),
        ("eval_loss", "1.0", "1.0", True, False, "does not beat"),
        ("eval_perplexity", "3.9", "4.2", True, True, "lower is better"),
        ("eval_f1", "0.91", "0.88", True, True, "higher is better"),
        ("eval_f1", "0.85", "0.88", True, False, "keep the champion"),
        ("eval_f1", "0.85", "0.88", False, True, "requireImprovement is false"),
        ("eval_f1", None, "0.88", True, False, "has no numeric eval_f1"),
        ("eval_f1", "0.9", "n/a", True, True, "the champion has no numeric"),
    ],
)
def test_should_promote(
    metric: str,
    challenger: str | None,
    champion: str | None,
    require: bool,
    promote: bool,
    words: str,
) -> None:
    decision, message = should_promote(metric, challenger, champion, require)
    assert decision is promote
    assert words in message
