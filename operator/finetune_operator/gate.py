"""The evaluation gate and champion/challenger promotion, as pure decisions (no I/O).

Why it exists: whether a fine-tuned model may be served is the product's last safety check. The
operator and the local runner both ask the same two questions here, with the evaluation results
the trainer reported (``eval_<metric>`` -> decimal string):

- ``evaluate_gate(rules, results)``: do all of ``spec.evaluation.gate`` hold? The verdict's
  message carries the numbers (``eval_loss 1.05 <= 1.2``), so the status explains itself.
- ``should_promote(metric, challenger, champion, require_improvement)``: should this job replace
  the model now serving the endpoint? loss and perplexity are better when lower, every other
  metric when higher.

Values are compared as exact decimals; a missing or non-numeric value fails the rule rather than
passing it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from finetune_operator.api import GateRule

__all__ = [
    "LOWER_IS_BETTER",
    "GateResult",
    "RuleResult",
    "evaluate_gate",
    "lower_is_better",
    "should_promote",
]

LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
"""Metrics (without the eval_ prefix) where a smaller value is better."""

_OPS: dict[str, Callable[[Decimal, Decimal], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass(frozen=True)
class RuleResult:
    """One gate rule against the results."""

    metric: str
    op: str
    threshold: str
    value: str | None  # None: the metric is missing from the results
    passed: bool
    message: str


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: passed only if every rule held."""

    passed: bool
    message: str
    details: tuple[RuleResult, ...]


def lower_is_better(metric: str) -> bool:
    """eval_loss / eval_perplexity (or loss / perplexity): lower is better; others higher."""
    return metric.removeprefix("eval_") in LOWER_IS_BETTER


def _number(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _rule_fields(rule: GateRule | Mapping[str, str]) -> tuple[str, str, str]:
    if isinstance(rule, GateRule):
        return rule.metric, rule.op, rule.value
    return str(rule["metric"]), str(rule["op"]), str(rule["value"])


def _check(rule: GateRule | Mapping[str, str], results: Mapping[str, str]) -> RuleResult:
    metric, op, threshold = _rule_fields(rule)
    raw = results.get(metric)
    if raw is None:
        have = ", ".join(sorted(results)) or "none"
        return RuleResult(
            metric, op, threshold, None, False, f"{metric} missing from the results (have: {have})"
        )
    value, limit = _number(raw), _number(threshold)
    if value is None or limit is None or op not in _OPS:
        return RuleResult(
            metric,
            op,
            threshold,
            str(raw),
            False,
            f"{metric} {raw} {op} {threshold} cannot be compared (not a finite number)",
        )
    ok = _OPS[op](value, limit)
    text = f"{metric} {raw} {op} {threshold}" + ("" if ok else " is false")
    return RuleResult(metric, op, threshold, str(raw), ok, text)


def evaluate_gate(
    rules: Sequence[GateRule | Mapping[str, str]], results: Mapping[str, str]
) -> GateResult:
    """Check every rule against the results; an empty gate passes."""
    details = tuple(_check(rule, results) for rule in rules)
    if not details:
        return GateResult(True, "no gate rules: the model may be served", ())
    passed = all(d.passed for d in details)
    shown = details if passed else tuple(d for d in details if not d.passed)
    verdict = "gate passed" if passed else "gate failed"
    return GateResult(passed, f"{verdict}: " + "; ".join(d.message for d in shown), details)


def should_promote(
    metric: str,
    challenger_value: str | None,
    champion_value: str | None,
    require_improvement: bool,
) -> tuple[bool, str]:
    """Should the challenger (this job) replace the champion (the model serving now)?

    No champion, or requireImprovement false: yes. Otherwise only a strictly better value of
    ``metric`` promotes; a challenger without a numeric value never does. A champion without a
    numeric value of the metric (say it predates the metric) is replaced.
    """
    direction = "lower" if lower_is_better(metric) else "higher"
    challenger = _number(challenger_value)
    if champion_value is None:
        return True, f"no model serves the endpoint yet: promote ({metric} {challenger_value})"
    if not require_improvement:
        return True, (
            f"requireImprovement is false: promote ({metric} {challenger_value} vs champion "
            f"{champion_value})"
        )
    if challenger is None:
        return False, f"keep the champion: this job has no numeric {metric} ({challenger_value})"
    champion = _number(champion_value)
    if champion is None:
        return True, f"the champion has no numeric {metric} ({champion_value}): promote"
    better = challenger < champion if direction == "lower" else challenger > champion
    if better:
        return True, (
            f"promote: {metric} {challenger_value} beats the champion's {champion_value} "
            f"({direction} is better)"
        )
    return False, (
        f"keep the champion: {metric} {challenger_value} does not beat {champion_value} "
        f"({direction} is better)"
    )
