"""The model side of the built-in inference server: load a run, generate text, classify.

Why it exists: ``serve.py`` speaks HTTP; this module knows how a published run is laid out
(``finetune.json``: task, baseModelUri, adapter/ or merged/, labels) and turns requests into
torch calls. Kept apart so both halves stay small and the model code can be tested without HTTP.

Loading: the run's ``finetune.json`` is read from its URI (s3:// or local); the parts needed are
downloaded into a cache directory (local runs are read in place); the merged model is loaded if
there is one, else the base model (``baseModelUri``) plus the PEFT adapter. The tokenizer comes
from the run's root (published with the run), else merged/, else the base model.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer.storage import StorageError, Store, is_s3_uri, join_uri

__all__ = [
    "Classification",
    "GenerationParams",
    "GenerationStream",
    "LoadedModel",
    "RequestError",
    "RunDescriptor",
    "load_run",
]

log = logging.getLogger(__name__)

TASKS = ("causal-lm", "sequence-classification", "token-classification")
END_OF_TURN_TOKENS = ("<|end|>", "<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|endoftext|>")


class RequestError(ValueError):
    """A request the model cannot serve; ``param`` names the offending field (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class RunDescriptor:
    """``finetune.json`` of a published run."""

    task: str
    base_model_uri: str
    method: str
    adapter: str | None
    merged: str | None
    labels: list[str] | None
    run_id: str

    @classmethod
    def parse(cls, text: str, source: str) -> RunDescriptor:
        try:
            doc = json.loads(text)
            task = doc["task"]
            if task not in TASKS:
                raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
            desc = cls(
                task=task,
                base_model_uri=str(doc.get("baseModelUri") or ""),
                method=str(doc.get("method") or ""),
                adapter=doc.get("adapter"),
                merged=doc.get("merged"),
                labels=list(doc["labels"]) if doc.get("labels") else None,
                run_id=str(doc.get("runId") or ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(
                f"{source} is not a valid finetune.json ({exc}): it needs task, baseModelUri, "
                "adapter or merged, labels and runId; point --model at a published run prefix"
            ) from exc
        if not desc.adapter and not desc.merged:
            raise StorageError(
                f"{source} names neither an adapter nor a merged model: nothing to serve"
            )
        if desc.adapter and not desc.merged and not desc.base_model_uri:
            raise StorageError(f"{source} has an adapter but no baseModelUri to apply it to")
        if desc.task != "causal-lm" and not desc.labels:
            raise StorageError(f"{source}: task {desc.task} needs its labels list")
        return desc


@dataclass
class GenerationParams:
    """Validated sampling settings of one completion request."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Classification:
    """One input's answer: a label with scores, or (token-classification) words and entities."""

    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    tokens: list[dict[str, Any]] | None = None
    entities: list[dict[str, Any]] | None = None

    def to_json(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index}
        for key in ("label", "score", "scores", "tokens", "entities"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class GenerationStream:
    """Text deltas of one generation as they are produced (iterate it), then its totals.

    Generation runs in its own thread; ``cancel()`` (client gone, stop string seen) makes it stop
    at the next token. After iteration: ``completion_tokens`` and ``finish_reason`` (stop|length).
    """

    def __init__(self, model: LoadedModel, input_ids: Any, params: GenerationParams) -> None:
        self._model = model
        self._params = params
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._cancel = threading.Event()
        self.prompt_tokens = int(input_ids.shape[-1])
        self.completion_tokens = 0
        self.finish_reason = "length"
        self._ids: list[int] = []
        self._emitted = ""
        self._prompt_seen = False  # generate() first puts the prompt ids: skip them
        self._thread = threading.Thread(target=self._run, args=(input_ids,), daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    # called by generate() in the worker thread
    def put(self, value: Any) -> None:
        if self._prompt_seen:
            ids = value.reshape(-1).tolist()
            self._ids.extend(int(i) for i in ids)
            self._queue.put(("ids", len(ids)))
        else:
            self._prompt_seen = True

    def end(self) -> None:
        pass

    def _run(self, input_ids: Any) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        cancel = self._cancel

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],),
                    cancel.is_set(),
                    dtype=torch.bool,
                    device=input_ids.device,
                )

        p = self._params
        m = self._model
        kwargs: dict[str, Any] = {
            "max_new_tokens": p.max_tokens,
            "do_sample": p.temperature > 0,
            "pad_token_id": m.tokenizer.pad_token_id,
            "eos_token_id": m.eos_token_ids,
            "streamer": self,
            "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
        }
        if p.temperature > 0:
            kwargs.update(temperature=p.temperature, top_p=p.top_p, top_k=0)
        try:
            with torch.inference_mode():
                if p.seed is not None:
                    torch.manual_seed(p.seed)
                ids = input_ids.to(m.device)
                m.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            self._queue.put(("done", None))
        except Exception as exc:  # surfaced to the HTTP handler as a 500
            log.exception("generation failed")
            self._queue.put(("error", exc))

    def __iter__(self) -> Iterator[str]:
        eos = set(self._model.eos_token_ids)
        stops = self._params.stop
        # text that could be the start of a stop string is held back until it cannot be
        hold = max((len(s) for s in stops), default=1) - 1
        text = ""
        while True:
            kind, payload = self._queue.get()
            if kind == "error":
                raise payload
            if kind == "done":
                break
            self.completion_tokens += int(payload)
            if self._ids and self._ids[-1] in eos:
                self.finish_reason = "stop"
            text = self._model.tokenizer.decode(self._ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence: wait for the next token
            if stops:
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    self.finish_reason = "stop"
                    self.cancel()
                    yield from self._emit(text[:cut])
                    self._drain()
                    return
            yield from self._emit(text[: len(text) - hold])
        yield from self._emit(text)
        if self.completion_tokens < self._params.max_tokens:
            self.finish_reason = "stop"

    def _emit(self, upto: str) -> Iterator[str]:
        """Yield what ``upto`` adds to the text already emitted."""
        if len(upto) > len(self._emitted):
            delta = upto[len(self._emitted) :]
            self._emitted = upto
            yield delta

    def _drain(self) -> None:
        """Wait for the cancelled generation thread to finish (it stops at the next token)."""
        self._thread.join()

    def text(self) -> str:
        return "".join(self)


@dataclass
class LoadedModel:
    """A model ready to serve."""

    descriptor: RunDescriptor
    model: Any
    tokenizer: Any
    device: str
    max_positions: int
    eos_token_ids: list[int] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.descriptor.task

    # -- causal-lm ----------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> Any:
        enc = self.tokenizer(prompt, return_tensors="pt")
        return enc["input_ids"]

    def encode_chat(self, messages: list[dict[str, str]]) -> Any:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(
                "this model's tokenizer has no chat template: use /v1/completions with a plain "
                "prompt",
                "messages",
            )
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return enc["input_ids"]

    def generate(self, input_ids: Any, params: GenerationParams) -> GenerationStream:
        """Start generating (in a thread); iterate the result for text deltas."""
        self.check_length(input_ids, params)
        return GenerationStream(self, input_ids, params)

    def check_length(self, input_ids: Any, params: GenerationParams) -> None:
        n = int(input_ids.shape[-1])
        if n == 0:
            raise RequestError("the prompt is empty (no tokens): send some text", "prompt")
        if n + params.max_tokens > self.max_positions:
            raise RequestError(
                f"the prompt is {n} tokens and max_tokens is {params.max_tokens}: together more "
                f"than the model's {self.max_positions}-token context; shorten the prompt or "
                "lower max_tokens",
                "max_tokens",
            )

    # -- classification -------------------------------------------------------------------------

    def classify(self, inputs: list[str | list[str]]) -> list[Classification]:
        import torch

        labels = self.descriptor.labels or []
        if self.task == "sequence-classification":
            if any(not isinstance(x, str) for x in inputs):
                raise RequestError(
                    "input items must be strings for sequence-classification", "input"
                )
            enc = self.tokenizer(
                list(inputs),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_positions,
            ).to(self.device)
            with torch.inference_mode():
                probs = torch.softmax(self.model(**enc).logits.float(), dim=-1).cpu()
            out = []
            for row in probs:
                best = int(row.argmax())
                out.append(
                    Classification(
                        label=labels[best],
                        score=float(row[best]),
                        scores={labels[i]: float(p) for i, p in enumerate(row)},
                    )
                )
            return out
        if self.task == "token-classification":
            return [self._tag(x) for x in inputs]
        raise RequestError(
            f"this server serves a {self.task} model: /v1/classify is for sequence- and "
            "token-classification runs; use /v1/completions or /v1/chat/completions",
        )

    def _tag(self, item: str | list[str]) -> Classification:
        import re

        import torch

        labels = self.descriptor.labels or []
        if isinstance(item, str):
            spans = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", item)]
        elif isinstance(item, list) and all(isinstance(w, str) for w in item):
            spans, pos = [], 0
            for w in item:
                spans.append((w, pos, pos + len(w)))
                pos += len(w) + 1
        else:
            raise RequestError("input items must be strings or lists of words", "input")
        words = [w for w, _, _ in spans]
        if not words:
            return Classification(tokens=[], entities=[])
        enc = self.tokenizer(
            words,
            is_split_into_words=True,
            return_tensors="pt",
            truncation=True,
            max_length=self.max_positions,
        )
        word_ids = enc.word_ids(0)
        with torch.inference_mode():
            probs = torch.softmax(self.model(**enc.to(self.device)).logits.float(), dim=-1)[0].cpu()
        tokens: list[dict[str, Any]] = []
        seen: set[int] = set()
        for pos, wid in enumerate(word_ids):
            if wid is None or wid in seen:
                continue  # the first sub-token of each word carries its tag (as in training)
            seen.add(wid)
            best = int(probs[pos].argmax())
            word, start, end = spans[wid]
            tokens.append(
                {
                    "word": word,
                    "start": start,
                    "end": end,
                    "label": labels[best],
                    "score": float(probs[pos][best]),
                }
            )
        text = item if isinstance(item, str) else " ".join(words)
        return Classification(tokens=tokens, entities=group_entities(tokens, text))


def group_entities(tokens: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """BIO word tags → entity spans {entity, text, start, end, score (mean of its words)}."""
    entities: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    scores: list[float] = []

    def close() -> None:
        if current is not None:
            current["score"] = sum(scores) / len(scores)
            current["text"] = text[current["start"] : current["end"]]
            entities.append(current)

    for tok in tokens:
        label = str(tok["label"])
        prefix, _, kind = label.partition("-")
        if label == "O" or not kind:
            close()
            current, scores = None, []
            continue
        if prefix == "I" and current is not None and current["entity"] == kind:
            current["end"] = tok["end"]
            scores.append(float(tok["score"]))
            continue
        close()
        current = {"entity": kind, "start": tok["start"], "end": tok["end"]}
        scores = [float(tok["score"])]
    close()
    return entities


# ------------------------------------------------------------------------------------ loading


def _fetch(store: Store, uri: str, cache: Path, name: str) -> Path:
    """A local directory holding uri: local paths as they are, s3:// downloaded into cache/name."""
    if not is_s3_uri(uri):
        path = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
        if not path.exists():
            raise StorageError(f"{path} does not exist: check --model / baseModelUri")
        return path
    dest = cache / name
    store.download(uri if uri.endswith("/") else uri + "/", dest)
    return dest


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()


def load_run(
    run_uri: str, store: Store, cache_dir: str | Path, *, device: str | None = None
) -> LoadedModel:
    """Load the run at run_uri (s3:// or local) as described by its finetune.json."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    descriptor_uri = join_uri(run_uri, "finetune.json")
    desc = RunDescriptor.parse(store.read_bytes(descriptor_uri).decode(), descriptor_uri)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32

    run_dir: Path | None = None
    if not is_s3_uri(run_uri):
        run_dir = _fetch(store, run_uri, cache, "run")
    else:
        run_dir = cache / "run"
        for obj in store.list(run_uri if run_uri.endswith("/") else run_uri + "/"):
            if "/" not in obj.key:  # root files: tokenizer, labels, finetune.json
                store.download(obj.uri, run_dir)
    auto = {
        "causal-lm": AutoModelForCausalLM,
        "sequence-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
    }[desc.task]
    kwargs: dict[str, Any] = {"dtype": dtype}
    if desc.labels:
        kwargs.update(
            num_labels=len(desc.labels),
            id2label=dict(enumerate(desc.labels)),
            label2id={label: i for i, label in enumerate(desc.labels)},
        )
    base_dir: Path | None = None
    if desc.merged:
        model_dir = _fetch(store, join_uri(run_uri, desc.merged), cache, "merged")
        model = auto.from_pretrained(str(model_dir), **kwargs)
    else:
        from peft import PeftModel

        assert desc.adapter is not None
        base_dir = _fetch(store, desc.base_model_uri, cache, "base")
        adapter_dir = _fetch(store, join_uri(run_uri, desc.adapter), cache, "adapter")
        if desc.task != "causal-lm":
            kwargs["ignore_mismatched_sizes"] = True  # the head comes from the adapter
        base = auto.from_pretrained(str(base_dir), **kwargs)
        # merge the adapter into the weights: same outputs, no LoRA overhead per token
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    candidates = [run_dir, model_dir if desc.merged else None, base_dir]
    tok_dir = next((c for c in candidates if c is not None and _has_tokenizer(c)), None)
    if tok_dir is None:
        raise StorageError(f"no tokenizer found in {run_uri} (root, merged/) or the base model")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id if desc.task == "causal-lm" else None
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    # chat models end a turn with their own token before (or instead of) EOS: stop there too
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    for end_of_turn in END_OF_TURN_TOKENS:
        if end_of_turn in special:
            tid = tokenizer.convert_tokens_to_ids(end_of_turn)
            if isinstance(tid, int) and tid not in eos_ids:
                eos_ids.append(tid)
    max_positions = int(
        getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length or 2048
    )
    return LoadedModel(desc, model, tokenizer, device, max_positions, eos_ids)
