"""Tiny models and tokenizers built from a config, for CPU tests without the Hugging Face Hub.

Why it exists: every trainer test needs a real model directory (config.json, safetensors weights,
tokenizer files) to pull, fine-tune and serve, and the test machines have no Hub access and two
CPU cores. These builders write a two-layer Llama with a byte-level BPE tokenizer (trained here on
a fixed English corpus, so any UTF-8 text tokenizes) and a chat template with ``{% generation %}``
markers (so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` works). The same
directory serves causal-lm, sequence-classification and token-classification: transformers adds
a freshly initialised head when a task model is loaded from a causal checkpoint.

Fixtures (session-scoped, registered through tests/trainer/conftest.py):
``tiny_tokenizer_dir`` (tokenizer only), ``tiny_llama_dir`` (model + tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_operator import local_demo
from finetune_operator.local_demo import CHAT_TEMPLATE, SPECIAL_TOKENS, build_bpe_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tiny_llama",
    "build_tiny_tokenizer",
    "tiny_llama_dir",
    "tiny_tokenizer_dir",
]

# The chat template and special tokens are the demo's own (one builder for both).
# Enough English for a few hundred BPE merges; byte-level BPE covers every other byte anyway.
_CORPUS_TEXT = """
The quick brown fox jumps over the lazy dog. A movie review: this film is great, the acting is
wonderful and the story is moving. Another review: this film is terrible, boring and far too long.
Write a short story about a cat. Translate the sentence into French. Summarize the paragraph.
The weather today is sunny with a light breeze. What is the capital of France? Paris is the
capital of France. How are you doing today? I am doing well, thank you for asking.
John Smith lives in New York and works for Google. Alice went to London to meet Bob at the museum.
Instruction: give three tips for staying healthy. Response: eat well, sleep enough, exercise.
Once upon a time there was a little house in the woods, and in it lived an old man and his wife.
positive negative neutral question answer user assistant system hello world data model training
"""
_CORPUS = _CORPUS_TEXT.split()


def _corpus_lines() -> list[str]:
    lines = [" ".join(_CORPUS[i : i + 12]) for i in range(0, len(_CORPUS), 12)]
    return lines * 4


def build_tiny_tokenizer(dest: Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer and save it as a ``PreTrainedTokenizerFast`` into ``dest``."""
    build_bpe_tokenizer(dest, _corpus_lines(), vocab_size=vocab_size)
    return dest


def build_tiny_llama(dest: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a randomly initialised two-layer Llama plus the tiny tokenizer into ``dest``."""
    return local_demo.build_tiny_llama(
        dest, _corpus_lines(), hidden_size=hidden_size, layers=layers, seed=seed, vocab_size=512
    )


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only the tiny tokenizer (tokenizer.json, tokenizer_config.json)."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama base model directory (config, safetensors, tokenizer, chat template).

    Treat it as read-only: it is shared by the whole session. Copy it to make changes.
    """
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
