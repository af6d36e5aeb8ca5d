"""Evaluation metrics computed from predictions: pure functions, no model, no torch.

Why it exists: the numbers in ``status.evaluation.results`` decide whether a model is served, so
they are computed in one small, separately tested place.

- Classification: accuracy; precision, recall and F1 macro-averaged over the labels that occur
  in the gold labels or the predictions (a label absent from both says nothing about the model
  and would drag the average down); a confusion matrix, rows = gold, columns = predicted.
- NER: entity-level precision, recall and F1 (micro over entities, CoNLL rules, via seqeval):
  an entity counts only when its type and exact span match; token accuracy besides.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["classification_metrics", "confusion_matrix", "ner_metrics"]


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], n_labels: int) -> list[list[int]]:
    """``m[g][p]``: how many rows of gold label g were predicted as p."""
    m = [[0] * n_labels for _ in range(n_labels)]
    for g, p in zip(gold, pred, strict=True):
        m[g][p] += 1
    return m


def classification_metrics(
    gold: Sequence[int], pred: Sequence[int], n_labels: int
) -> dict[str, float]:
    """accuracy, precision, recall, f1 (macro) of integer predictions."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise ValueError("no examples to score")
    m = confusion_matrix(gold, pred, n_labels)
    present = [k for k in range(n_labels) if sum(m[k]) or sum(row[k] for row in m)]
    precisions, recalls, f1s = [], [], []
    for k in present:
        tp = m[k][k]
        predicted = sum(row[k] for row in m)
        actual = sum(m[k])
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    n = len(present)
    return {
        "accuracy": sum(m[k][k] for k in range(n_labels)) / len(gold),
        "precision": sum(precisions) / n,
        "recall": sum(recalls) / n,
        "f1": sum(f1s) / n,
    }


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall, F1 (seqeval, CoNLL rules) and token accuracy."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    g_list = [list(s) for s in gold]
    p_list = [list(s) for s in pred]
    return {
        "precision": float(precision_score(g_list, p_list, zero_division=0)),
        "recall": float(recall_score(g_list, p_list, zero_division=0)),
        "f1": float(f1_score(g_list, p_list, zero_division=0)),
        "accuracy": float(accuracy_score(g_list, p_list)),
    }
