"""Assemble a run's artifacts in the layout of docs/DEVELOPING.md and publish them.

Why it exists: ``serve``, the operator's evaluation gate, the next job's ``baseModel.fromJob`` and
people all read ``<output.uri>/runs/<runId>/``; this module is the one writer of that layout::

    adapter/          LoRA/QLoRA adapter (PEFT format)            (lora, qlora)
    merged/           the full fine-tuned model, or base+adapter merged (full, or mergeAdapter)
    tokenizer files   tokenizer.json, tokenizer_config.json, chat template
    labels.json       the label set (classification / NER)
    metrics.json      training summary, evaluation results, baseline and deltas
    README.md         model card with lineage: base model URI + ETag, dataset ETags,
                      hyperparameters, metrics
    finetune.json     {task, baseModelUri, method, adapter, merged, labels, runId}
    manifest.json, _SUCCESS   written by Store.push_run, last

Checkpoints stay under ``checkpoints/`` beside it (pruned to keepLast during training).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig, spec_hash
from finetune_trainer.storage import Store, join_uri

__all__ = [
    "ADAPTER_FILES",
    "MODEL_FILE_SUFFIXES",
    "RunArtifacts",
    "assemble_run",
    "finetune_json",
    "model_card",
    "publish_run",
]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json")
_NOT_MODEL = {"training_args.bin", "trainer_state.json"}
_TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
}


@dataclass(frozen=True)
class RunArtifacts:
    """Where a published run's parts are."""

    uri: str
    adapter_uri: str | None
    merged_uri: str | None
    manifest_uri: str


def finetune_json(
    config: TrainerConfig, *, adapter: bool, merged: bool, labels: list[str] | None
) -> dict[str, Any]:
    """The run descriptor ``serve`` and ``fromJob`` read."""
    return {
        "task": config.spec.task,
        "baseModelUri": config.base_model_uri,
        "method": config.spec.method.type,
        "adapter": "adapter/" if adapter else None,
        "merged": "merged/" if merged else None,
        "labels": labels,
        "runId": config.run_id,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def model_card(
    config: TrainerConfig,
    *,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    labels: list[str] | None,
) -> str:
    """README.md: what was trained, from what, how, and how well."""
    spec = config.spec
    hp = spec.hyperparameters.to_wire()
    lines = [
        f"# {config.job.name} (run {config.run_id})",
        "",
        f"Fine-tuned by finetune-operator: task `{spec.task}`, method `{spec.method.type}`.",
        "",
        "## Lineage",
        "",
        "| input | URI | ETag |",
        "| --- | --- | --- |",
        f"| base model | `{config.base_model_uri}` | `{lineage.get('baseModelETag', '')}` |",
    ]
    for ds in lineage.get("datasetETags", []):
        lines.append(f"| dataset | `{ds['uri']}` | `{ds.get('etag', '')}` |")
    lines += [
        "",
        f"Spec hash: `{lineage.get('specHash', spec_hash(spec))}`; trainer image: "
        f"`{config.image or 'unknown'}`; job `{config.job.namespace}/{config.job.name}`.",
        "",
        "## Training",
        "",
        "| hyperparameter | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(hp.items())]
    if spec.method.lora is not None and spec.method.type != "full":
        lora = spec.method.lora
        lines.append(
            f"| lora | r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, targets={','.join(lora.target_modules)} |"
        )
    dist = spec.distributed
    ds = dist.deepspeed
    lines.append(
        f"| distributed | {dist.nodes} node(s), "
        + (f"DeepSpeed ZeRO-{ds.zero_stage}" if ds is not None else "DDP")
        + " |"
    )
    train = metrics.get("train", {})
    if train:
        lines += [
            "",
            f"Steps: {train.get('globalStep')}; final training loss: {_fmt(train.get('trainLoss'))}; "
            f"tokens seen: {train.get('tokensSeen')}.",
        ]
    evaluation = metrics.get("evaluation", {})
    results = evaluation.get("results", {})
    if results:
        baseline = evaluation.get("baseline", {})
        lines += [
            "",
            "## Evaluation",
            "",
            "| metric | fine-tuned | base model |",
            "| --- | --- | --- |",
        ]
        for name, value in sorted(results.items()):
            lines.append(
                f"| {name} | {_fmt(value)} | {_fmt(baseline[name]) if name in baseline else ''} |"
            )
    if labels:
        lines += ["", "## Labels", "", ", ".join(f"`{label}`" for label in labels)]
    lines += [
        "",
        "## Files",
        "",
        "`finetune.json` describes the layout; `manifest.json` lists every "
        "file with its size and sha256.",
    ]
    return "\n".join(lines) + "\n"


def _copy_selected(src: Path, dest: Path, names: Any) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and names(f.name):
            shutil.copy2(f, dest / f.name)
            copied.append(f.name)
    return copied


def assemble_run(
    config: TrainerConfig,
    out_dir: Path,
    *,
    final_dir: Path,
    merged_model: Any | None,
    tokenizer: Any,
    labels: list[str] | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
) -> tuple[bool, bool]:
    """Write the run directory locally; returns (has_adapter, has_merged).

    final_dir: what the Trainer saved (an adapter for lora/qlora, the full model otherwise).
    merged_model: a base+adapter merged model to save under merged/ (mergeAdapter), or None.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    full = config.spec.method.type == "full"
    has_adapter = not full
    if has_adapter:
        copied = _copy_selected(final_dir, out_dir / "adapter", lambda n: n in ADAPTER_FILES)
        if "adapter_config.json" not in copied:
            raise FileNotFoundError(
                f"no adapter_config.json in {final_dir}: training did not save an adapter"
            )
    has_merged = False
    if full:
        _copy_selected(
            final_dir,
            out_dir / "merged",
            lambda n: (
                n.endswith(MODEL_FILE_SUFFIXES)
                and n not in _NOT_MODEL
                and n not in _TOKENIZER_FILES
            ),
        )
        has_merged = True
    elif merged_model is not None:
        merged_model.save_pretrained(str(out_dir / "merged"))
        has_merged = True
    tokenizer.save_pretrained(str(out_dir))
    if has_merged:
        tokenizer.save_pretrained(str(out_dir / "merged"))  # merged/ loads on its own too
    if labels:
        (out_dir / "labels.json").write_text(json.dumps(labels, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out_dir / "README.md").write_text(
        model_card(config, metrics=metrics, lineage=lineage, labels=labels)
    )
    descriptor = finetune_json(config, adapter=has_adapter, merged=has_merged, labels=labels)
    (out_dir / "finetune.json").write_text(json.dumps(descriptor, indent=2, sort_keys=True))
    return has_adapter, has_merged


def publish_run(
    store: Store, config: TrainerConfig, out_dir: Path, *, has_adapter: bool, has_merged: bool
) -> RunArtifacts:
    """Upload the run directory (manifest.json, then _SUCCESS, last)."""
    run_uri = config.run_uri
    manifest_uri = store.push_run(out_dir, run_uri)
    return RunArtifacts(
        uri=run_uri,
        adapter_uri=join_uri(run_uri, "adapter/") if has_adapter else None,
        merged_uri=join_uri(run_uri, "merged/") if has_merged else None,
        manifest_uri=manifest_uri,
    )
