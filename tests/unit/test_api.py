"""The API models: resolved defaults shared by operator and trainer, validation contexts, and the
round trip through the trainer config."""

from __future__ import annotations

import pytest
from finetune_operator.api import (
    RULES_ERROR,
    FineTuneJob,
    FineTuneJobSpec,
    LoraSpec,
    allowed_gate_metrics,
    effective_epochs,
    effective_lora,
    effective_metrics,
    effective_processes_per_node,
    format_loc,
    resolve_spec,
)
from finetune_trainer.config import JobRef, TrainerConfig
from pydantic import ValidationError

from tests.unit.invalid.corpus import apply_patch, base_manifest


def spec(**patch: object) -> FineTuneJobSpec:
    doc = apply_patch(base_manifest(), {f"spec.{k}": v for k, v in patch.items()})
    return FineTuneJob.model_validate(doc).spec


def test_format_loc() -> None:
    assert format_loc(("spec", "datasets", 0, "format")) == "spec.datasets[0].format"
    assert format_loc(()) == ""


def test_resolved_defaults_per_task() -> None:
    causal = spec()
    assert effective_metrics(causal) == ["loss", "perplexity"]
    assert allowed_gate_metrics(causal) == ["eval_loss", "eval_perplexity"]
    cls = spec(task="sequence-classification", **{"datasets[0].format": "classification"})
    assert effective_metrics(cls) == ["loss", "accuracy", "precision", "recall", "f1"]
    chosen = spec(**{"evaluation.metrics": ["perplexity"]})
    assert allowed_gate_metrics(chosen) == ["eval_loss", "eval_perplexity"]


def test_effective_epochs_processes_and_lora() -> None:
    assert effective_epochs(spec(**{"hyperparameters.epochs": 3})) == 3
    none = apply_patch(base_manifest(), delete=["spec.hyperparameters.epochs"])
    assert effective_epochs(FineTuneJob.model_validate(none).spec) == 1
    steps = apply_patch(none, {"spec.hyperparameters.maxSteps": 10})
    assert effective_epochs(FineTuneJob.model_validate(steps).spec) is None
    assert effective_processes_per_node(spec(**{"distributed.gpusPerNode": 0})) == 1
    assert effective_processes_per_node(spec(**{"distributed.gpusPerNode": 4})) == 4
    cpu = spec(**{"distributed.gpusPerNode": 0, "distributed.processesPerNode": 2})
    assert effective_processes_per_node(cpu) == 2
    no_block = spec(method={"type": "lora"})
    assert effective_lora(no_block) == LoraSpec()
    assert effective_lora(spec(method={"type": "full"})) is None


def test_resolve_spec_fills_dependent_defaults_and_stays_valid() -> None:
    raw = spec(method={"type": "qlora"}, **{"distributed.gpusPerNode": 2})
    resolved = resolve_spec(raw)
    assert resolved.method.lora == LoraSpec()
    assert resolved.distributed.processes_per_node == 2
    assert resolved.evaluation.metrics == ["loss", "perplexity"]
    assert raw.method.lora is None  # the input is not modified
    doc = base_manifest()
    doc["spec"] = resolved.to_wire()
    FineTuneJob.model_validate(doc, strict=True, by_name=False)


def test_local_paths_need_the_local_context() -> None:
    doc = apply_patch(base_manifest(), {"spec.output.uri": "./out"})
    with pytest.raises(ValidationError) as err:
        FineTuneJob.model_validate(doc)
    assert err.value.errors()[0]["loc"] == ("spec", "output", "uri")
    job = FineTuneJob.model_validate(doc, context={"local": True})
    assert job.spec.output.uri == "./out"


def test_cross_field_problems_travel_in_one_error() -> None:
    doc = apply_patch(
        base_manifest(),
        {"spec.task": "sequence-classification", "spec.hyperparameters.packing": True},
    )
    with pytest.raises(ValidationError) as err:
        FineTuneJob.model_validate(doc)
    (only,) = err.value.errors()
    assert only["type"] == RULES_ERROR and only["loc"] == ("spec",)
    subs = [loc for loc, _ in only["ctx"]["problems"]]
    assert ("datasets", 0, "format") in subs and ("hyperparameters", "packing") in subs
    assert "datasets[0].format: format chat does not fit" in str(err.value)


def test_trainer_config_round_trip_keeps_the_spec() -> None:
    job = FineTuneJob.model_validate(base_manifest())
    cfg = TrainerConfig(
        job=JobRef(name=job.metadata.name),
        run_id="corpus-base-1234",
        spec=resolve_spec(job.spec),
        base_model_uri="s3://models/tiny-llama/",
    )
    again = TrainerConfig.from_json(cfg.to_json())
    assert again.spec == cfg.spec
