"""The seam for the inference rollout (phase Deploying): what happens after the upload succeeded.

Why it exists: the reconcile calls ``decide`` once training, evaluation and the upload are done and
``spec.serving.enabled`` is true. The rollout itself (Deployment + Service behind the evaluation
gate, champion/challenger promotion) is the work of a later issue; until it lands this module is a
PLACEHOLDER that parks the job in phase Deploying with reason RolloutNotImplemented, so that
replacing this one pure function (and the actions it returns) is all the rollout has to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api import FineTuneJobSpec

__all__ = ["ServingDecision", "decide"]


@dataclass(frozen=True)
class ServingDecision:
    """Phase Deploying (rollout in progress) or Succeeded, with the serving status to write."""

    phase: str
    reason: str
    message: str
    serving_status: dict[str, Any] = field(default_factory=dict)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    """Objects to create or update (the rollout's Deployment and Service)."""


def decide(
    name: str, namespace: str, spec: FineTuneJobSpec, status: Mapping[str, Any]
) -> ServingDecision:
    """PLACEHOLDER: keep the job in Deploying until the rollout is implemented."""
    endpoint = spec.serving.endpoint or name
    return ServingDecision(
        phase="Deploying",
        reason="RolloutNotImplemented",
        message=f"training succeeded; the inference rollout to endpoint {endpoint!r} is not "
        "implemented yet (set spec.serving.enabled=false to finish the job as Succeeded)",
        serving_status={"endpoint": f"http://{endpoint}.{namespace}.svc:8000", "ready": False},
    )
