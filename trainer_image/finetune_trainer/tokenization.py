"""Turning canonical records into model inputs: token ids, loss masks, packing and collators.

Why it exists: the choice of which tokens the loss sees is the heart of supervised fine-tuning,
and it is easy to get subtly wrong. Every causal-lm record becomes a list of *segments* (text,
trainable or not); the whole string is tokenized once and each token is labelled from the
character offsets the fast tokenizer reports, so masks follow the real token boundaries:

  text         the whole row is trained (continued pretraining), EOS appended
  completion   prompt masked (-100), completion + EOS trained
  instruction  Alpaca prompt masked, response + EOS trained
  chat         rendered with the tokenizer's chat template; only assistant turns trained (each
               turn's span is what rendering that turn adds after the generation prompt)

Packing (``hyperparameters.packing``) concatenates whole rows into blocks of ``maxSeqLength``
tokens. ``position_ids`` restart at 0 for every row, the first label of every row is -100 (no
token is trained to predict the start of an unrelated row), and the collator sends no
``attention_mask``: transformers then derives a block-diagonal causal mask from the position ids
(SDPA/eager) or variable-length boundaries (flash-attention), so no row attends to another.
The collator also passes ``use_cache=False``: with a KV cache, transformers skips that
derivation and the rows would see each other (a test compares packed and unpacked logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .formats import DEFAULT_CHAT_TEMPLATE, alpaca_prompt

__all__ = [
    "IGNORE_INDEX",
    "CausalCollator",
    "Encoded",
    "causal_segments",
    "chat_segments",
    "encode_classification",
    "encode_ner",
    "encode_segments",
    "ensure_chat_template",
    "group_texts",
    "pack_rows",
]

IGNORE_INDEX = -100

Segment = tuple[str, bool]  # (text, trained?)


@dataclass
class Encoded:
    """One tokenized causal-lm row."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the documented default; True if it was set."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def _render_chat(tokenizer: Any, messages: list[dict[str, str]], *, gen: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    return str(text)


def _opening(tokenizer: Any) -> str:
    """What a template renders before the first message (BOS, default system prompt...)."""
    try:
        return _render_chat(tokenizer, [], gen=True)
    except Exception:  # templates may refuse an empty conversation
        return ""


def chat_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[Segment]:
    """A conversation rendered by the chat template, split into masked and trained segments.

    For every assistant turn i, the trained text is what rendering messages[: i + 1] adds to
    rendering messages[:i] with the generation prompt (the assistant header stays masked; the
    content and the template's end-of-turn marker are trained).
    """
    segments: list[Segment] = []
    done = ""  # text already emitted
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render_chat(tokenizer, messages[:i], gen=True) if i else _opening(tokenizer)
        full = _render_chat(tokenizer, messages[: i + 1], gen=False)
        if not prompt.startswith(done) or not full.startswith(prompt) or (i == 0 and not prompt):
            # A template that rewrites earlier turns (e.g. drops reasoning): fall back to
            # locating the assistant content in the full rendering.
            start = full.find(msg["content"], len(done))
            if start < 0:
                raise ValueError("chat template does not reproduce an assistant turn verbatim")
            prompt = full[:start]
            if not prompt.startswith(done):
                raise ValueError("chat template renders earlier turns differently later on")
        segments.append((prompt[len(done) :], False))
        segments.append((full[len(prompt) :], True))
        done = full
    whole = _render_chat(tokenizer, messages, gen=False)
    if whole.startswith(done) and len(whole) > len(done):
        segments.append((whole[len(done) :], False))  # trailing user turns etc.
    return [s for s in segments if s[0]]


def causal_segments(fmt: str, record: dict[str, Any], tokenizer: Any) -> list[Segment]:
    """The segments of one canonical causal-lm record (EOS handled by encode_segments)."""
    if fmt == "text":
        return [(record["text"], True)]
    if fmt == "completion":
        return [(record["prompt"], False), (record["completion"], True)]
    if fmt == "instruction":
        return [
            (alpaca_prompt(record["instruction"], record["input"]), False),
            (record["output"], True),
        ]
    if fmt == "chat":
        return chat_segments(tokenizer, record["messages"])
    raise ValueError(f"format {fmt} is not a causal-lm format")


def encode_segments(
    tokenizer: Any, segments: Sequence[Segment], *, add_special_tokens: bool, add_eos: bool
) -> Encoded:
    """Tokenize the concatenated segments once; label each token from its character span."""
    text = "".join(s for s, _ in segments)
    spans: list[tuple[int, int]] = []
    pos = 0
    for seg, trained in segments:
        if trained:
            spans.append((pos, pos + len(seg)))
        pos += len(seg)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(
            text,
            add_special_tokens=add_special_tokens,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        ids: list[int] = list(enc["input_ids"])
        labels: list[int] = []
        for tid, (start, end), special in zip(
            ids, enc["offset_mapping"], enc["special_tokens_mask"], strict=True
        ):
            trained = (
                not special
                and end > start
                and any(start < s_end and end > s_start for s_start, s_end in spans)
            )
            labels.append(tid if trained else IGNORE_INDEX)
    else:  # slow tokenizers: no offsets, tokenize the segments one by one
        ids, labels = [], []
        if add_special_tokens and getattr(tokenizer, "bos_token_id", None) is not None:
            ids.append(tokenizer.bos_token_id)
            labels.append(IGNORE_INDEX)
        for seg, trained in segments:
            seg_ids = tokenizer(seg, add_special_tokens=False)["input_ids"]
            ids.extend(seg_ids)
            labels.extend(seg_ids if trained else [IGNORE_INDEX] * len(seg_ids))
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        if ids and ids[-1] == eos:  # the tokenizer appended it (as a special token)
            if segments and segments[-1][1]:
                labels[-1] = eos
        else:
            ids.append(eos)
            labels.append(eos)
    return Encoded(ids, labels)


def group_texts(
    rows: Sequence[Encoded], block: int, *, restart_positions: bool
) -> list[dict[str, list[int]]]:
    """Continued pretraining: concatenate every row and cut fixed blocks of ``block`` tokens.

    Rows may span blocks (the tail shorter than a block is kept as a last, shorter block). With
    ``restart_positions`` (packing) the blocks carry position_ids that restart at 0 at the block
    start and wherever a new row starts, and the first label of each row is -100, so rows never
    see each other. Without it, a block is one causal sequence (the classic ``group_texts``).
    """
    ids: list[int] = []
    starts: list[bool] = []
    for row in rows:
        ids.extend(row.input_ids)
        starts.extend([True] + [False] * (len(row.input_ids) - 1))
    blocks: list[dict[str, list[int]]] = []
    for b in range(0, len(ids), block):
        chunk = ids[b : b + block]
        if len(chunk) < 2:
            continue
        out: dict[str, list[int]] = {"input_ids": chunk, "attention_mask": [1] * len(chunk)}
        if restart_positions:
            positions: list[int] = []
            labels: list[int] = []
            p = 0
            for k, tok in enumerate(chunk):
                if k > 0 and starts[b + k]:
                    p = 0
                positions.append(p)
                labels.append(IGNORE_INDEX if p == 0 else tok)
                p += 1
            out["position_ids"] = positions
            out["labels"] = labels
        else:
            out["labels"] = list(chunk)
        blocks.append(out)
    return blocks


def pack_rows(rows: Sequence[Encoded], block: int) -> list[dict[str, list[int]]]:
    """Greedy packing of whole rows (each already at most ``block`` tokens) in order."""
    blocks: list[dict[str, list[int]]] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    cur_pos: list[int] = []

    def flush() -> None:
        if cur_ids:
            blocks.append(
                {
                    "input_ids": list(cur_ids),
                    "labels": list(cur_labels),
                    "position_ids": list(cur_pos),
                    "attention_mask": [1] * len(cur_ids),
                }
            )
            cur_ids.clear()
            cur_labels.clear()
            cur_pos.clear()

    for row in rows:
        if cur_ids and len(cur_ids) + len(row.input_ids) > block:
            flush()
        cur_ids.extend(row.input_ids)
        cur_labels.extend([IGNORE_INDEX, *row.labels[1:]])
        cur_pos.extend(range(len(row.input_ids)))
    flush()
    return blocks


def encode_classification(
    tokenizer: Any,
    texts: list[str],
    labels: list[int],
    max_length: int,
    pairs: list[str | None] | None = None,
) -> dict[str, list[Any]]:
    """Batch-tokenize classification rows (truncated to ``max_length``).

    With ``pairs`` (the optional text_pair column) rows are encoded as sentence pairs; a row
    without a pair then gets an empty second text.
    """
    if pairs is not None and any(p is not None for p in pairs):
        second = [p or "" for p in pairs]
        enc = tokenizer(texts, second, truncation=True, max_length=max_length)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
    out: dict[str, list[Any]] = {k: list(v) for k, v in enc.items()}
    out["labels"] = list(labels)
    return out


def encode_ner(
    tokenizer: Any, tokens: list[str], tag_ids: list[int], max_length: int
) -> tuple[dict[str, list[int]], int]:
    """Align word-level tags to sub-tokens: the first sub-token of a word gets the tag, the rest
    and special tokens -100. Returns the features and how many words truncation dropped."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "token-classification needs a fast tokenizer (tokenizer.json) to align tags to "
            "sub-tokens; the base model's tokenizer is a slow one"
        )
    enc = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=max_length)
    labels: list[int] = []
    seen: set[int] = set()
    for word in enc.word_ids():
        if word is None or word in seen:
            labels.append(IGNORE_INDEX)
        else:
            seen.add(word)
            labels.append(tag_ids[word])
    out = {k: list(v) for k, v in enc.items()}
    out["labels"] = labels
    return out, len(tokens) - len(seen)


class CausalCollator:
    """Pads causal-lm batches: input_ids with the pad id, labels with -100.

    Packed batches (rows with position_ids) are returned without an attention_mask and with
    ``use_cache=False`` so that the model builds the per-row causal mask from the position ids;
    their padding is a separate trailing "row" of pad tokens with labels -100.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        packed = "position_ids" in features[0]
        ids, labels, mask, positions = [], [], [], []
        for f in features:
            n = len(f["input_ids"])
            pad = longest - n
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * n + [0] * pad)
            if packed:
                positions.append(list(f["position_ids"]) + list(range(pad)))
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if packed:
            batch["position_ids"] = torch.tensor(positions, dtype=torch.long)
            # transformers derives the per-row mask from position_ids only when no KV cache is
            # in play; models default to use_cache=True even in training (checked with Llama on
            # transformers 5.23: with the cache, packed rows attend to each other).
            batch["use_cache"] = False
        else:
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        return batch
