"""Shared pieces of the GPU trainer benchmark: the model, the tokenizer, the data and the FLOPs.

Why it exists: the baseline and our trainer must see the same model, tokenizer, data and
sequence length, and their throughput must be counted the same way. Everything both runs share
lives here, so the comparison is fair by construction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Peak dense bf16 tensor throughput (FLOP/s) by device name fragment (NVIDIA datasheets).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}


@dataclass(frozen=True)
class ModelShape:
    """A Llama architecture given by its sizes (random weights: throughput ignores values)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int

    def config(self) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            vocab_size=self.vocab_size,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )


# About 1.1B parameters (Llama-3.2-1B's shape with a 32k vocabulary).
LLAMA_1B = ModelShape("llama-1b", 2048, 8192, 16, 32, 8, 32000)
# A CPU smoke-test shape.
LLAMA_TINY = ModelShape("llama-tiny", 64, 128, 2, 4, 2, 2000)


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N (forward + backward matmuls) + 12·L·H·T (attention scores
    and values, forward + backward), as in PaLM (Chowdhery et al., 2022, appendix B), with T the
    context a token actually attends over. Both runs use T = the mean real row length: with
    packing and per-row masking a token attends only within its row, and padding tokens are not
    counted as work in either run."""
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def peak_flops(device_name: str) -> float | None:
    for fragment, peak in PEAK_BF16_FLOPS.items():
        if fragment in device_name:
            return peak
    return None


def load_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
            if limit and len(rows) >= limit:
                break
    return rows


def alpaca_text(row: dict[str, Any]) -> tuple[str, str]:
    """The prompt and response of an Alpaca row, in the same template our trainer uses."""
    instruction, inp, out = row["instruction"], row.get("input", ""), row["output"]
    prompt = f"### Instruction:\n{instruction}\n\n"
    if inp:
        prompt += f"### Input:\n{inp}\n\n"
    prompt += "### Response:\n"
    return prompt, out


def build_tokenizer(rows: list[dict[str, Any]], vocab_size: int, out_dir: Path) -> Any:
    """A byte-level BPE tokenizer trained on the benchmark data (no Hub downloads here)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(("".join(alpaca_text(r)) for r in rows), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out_dir)
    return fast


def build_model_dir(shape: ModelShape, rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Save a randomly initialised model of ``shape`` and its tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(rows, shape.vocab_size, out_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shape.config(), dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    return out_dir


class ThroughputCallback:
    """A transformers TrainerCallback measuring steady-state tokens/s and peak GPU memory.

    Tokens are the trainer's own ``num_input_tokens_seen`` with
    ``include_num_input_tokens_seen="non_padding"``: real tokens only, so padding does not count
    as work. The clock starts after ``warmup`` optimiser steps (compilation, allocator warm-up).
    """

    def __init__(self, warmup: int) -> None:
        from transformers import TrainerCallback

        self.warmup = warmup
        self.t0 = self.t1 = 0.0
        self.n0 = self.n1 = 0
        self.steps_timed = 0
        outer = self

        class _CB(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.global_step == outer.warmup:
                    _sync()
                    outer.t0, outer.n0 = time.perf_counter(), int(state.num_input_tokens_seen)
                    _reset_peak()

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                _sync()
                outer.t1, outer.n1 = time.perf_counter(), int(state.num_input_tokens_seen)
                outer.steps_timed = state.global_step - outer.warmup

        self.callback = _CB()

    def tokens_per_second(self) -> float:
        if self.t1 <= self.t0 or self.n1 <= self.n0:
            return 0.0
        return (self.n1 - self.n0) / (self.t1 - self.t0)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return 0.0


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return "cpu"
