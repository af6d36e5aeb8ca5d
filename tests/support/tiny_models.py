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

__all__ = [
    "CHAT_TEMPLATE",
    "build_tiny_llama",
    "build_tiny_tokenizer",
    "tiny_llama_dir",
    "tiny_tokenizer_dir",
]

# A minimal chat format. The {% generation %} block marks assistant tokens for loss masking.
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


def build_tiny_tokenizer(dest: Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer and save it as a ``PreTrainedTokenizerFast`` into ``dest``."""
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
    lines = [" ".join(_CORPUS[i : i + 12]) for i in range(0, len(_CORPUS), 12)]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
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
    return dest


def build_tiny_llama(dest: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a randomly initialised two-layer Llama plus the tiny tokenizer into ``dest``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tiny_tokenizer(dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    return dest


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
