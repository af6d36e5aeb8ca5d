"""The row formats of a FineTuneJob dataset: what each expects, and turning rows into one shape.

Why it exists: users bring data in many shapes (Alpaca, OpenAI messages, ShareGPT, CSV exports
with their own column names). This module checks one row against its format, applies the
dataset's column mapping, and returns a canonical record, or the list of things wrong with the
row in words a user can act on. It imports no torch and no tokenizer, so the validation pass can
run before anything heavy is loaded.

Canonical records (what the tokenizing code in ``data.py`` receives):
  text            {"text": str}
  completion      {"prompt": str, "completion": str}
  instruction     {"instruction": str, "input": str, "output": str}
  chat            {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}]}
  classification  {"text": str, "text_pair": str | None, "label": str}
  ner             {"tokens": [str], "tags": [str]}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from finetune_operator.api import FORMAT_COLUMNS, TASK_FORMATS

__all__ = [
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_NO_INPUT",
    "DEFAULT_CHAT_TEMPLATE",
    "FORMAT_COLUMNS",
    "OPTIONAL_COLUMNS",
    "TASK_FORMATS",
    "alpaca_prompt",
    "check_columns_mapping",
    "normalize",
]

# Expected columns per format (the keys of spec.datasets[i].columns) and which formats each task
# accepts: the API's tables, so the spec and the data check can never disagree.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "instruction": ("input",),
    "classification": ("text_pair",),
}

# The Stanford Alpaca prompt (the response follows it; loss only on the response).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

# Used when the tokenizer has none (it is then stored with the tokenizer, so serving renders
# prompts the same way): ChatML, with the tokenizer's EOS token closing every assistant turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_OPENAI_ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
}
_BIO = re.compile(r"^(O|[BI]-\S+)$")


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The prompt part of an instruction row (everything before the response)."""
    if input_text.strip():
        return ALPACA_PROMPT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def check_columns_mapping(fmt: str, columns: Mapping[str, str], where: str) -> list[str]:
    """Problems with a dataset's column mapping (unknown keys), as ``where: message`` lines."""
    known = FORMAT_COLUMNS[fmt]
    problems = []
    for key in columns:
        if key not in known:
            problems.append(
                f"{where}: unknown column {key!r} for format {fmt}; the keys of columns are the "
                f"format's fields ({', '.join(known)}) and the values your file's column names"
            )
    return problems


class _RowCheck:
    """Collects problems while reading one row's fields through the column mapping."""

    def __init__(self, fmt: str, record: Mapping[str, Any], columns: Mapping[str, str], ds: str):
        self.fmt = fmt
        self.record = record
        self.columns = columns
        self.ds = ds
        self.problems: list[str] = []

    def column(self, field: str) -> str:
        return self.columns.get(field, field)

    def missing(self, field: str) -> None:
        col = self.column(field)
        have = ", ".join(list(self.record)[:8]) or "no fields"
        optional = OPTIONAL_COLUMNS.get(self.fmt, ())
        needs = " and ".join(c for c in FORMAT_COLUMNS[self.fmt] if c not in optional)
        if col != field:
            hint = f"(mapped from {field} by {self.ds}.columns)"
        else:
            hint = f"(map it with {self.ds}.columns, e.g. {{{field}: <your column>}})"
        self.problems.append(
            f'missing field "{col}": the {self.fmt} format needs {needs} {hint}; '
            f"the row has: {have}"
        )

    def string(self, field: str, *, required: bool = True, allow_empty: bool = False) -> str:
        col = self.column(field)
        value = self.record.get(col)
        if value is None:
            if required:
                self.missing(field)
            return ""
        if not isinstance(value, str):
            self.problems.append(f'field "{col}" must be a string, got {_type_name(value)}')
            return ""
        if required and not allow_empty and not value.strip():
            self.problems.append(f'field "{col}" is empty')
        return value

    def string_list(self, field: str) -> list[str]:
        col = self.column(field)
        value = self.record.get(col)
        if value is None:
            self.missing(field)
            return []
        if isinstance(value, str):  # CSV cells: a JSON array, or space-separated items
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    self.problems.append(f'field "{col}" is not a valid JSON array: {exc.msg}')
                    return []
            else:
                value = text.split()
        if not isinstance(value, (list, tuple)):
            self.problems.append(
                f'field "{col}" must be a list of strings, got {_type_name(value)}'
            )
            return []
        items: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problems.append(f'field "{col}"[{i}] must be a string, got {_type_name(item)}')
            items.append(item if isinstance(item, str) else "")
        if not value:
            self.problems.append(f'field "{col}" is an empty list')
        return items


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(c: _RowCheck) -> dict[str, Any]:
    return {"text": c.string("text")}


def _completion(c: _RowCheck) -> dict[str, Any]:
    return {"prompt": c.string("prompt", allow_empty=True), "completion": c.string("completion")}


def _instruction(c: _RowCheck) -> dict[str, Any]:
    return {
        "instruction": c.string("instruction"),
        "input": c.string("input", required=False),
        "output": c.string("output"),
    }


def _chat(c: _RowCheck) -> dict[str, Any]:
    col = c.column("messages")
    value = c.record.get(col)
    if value is None and "messages" not in c.columns and "conversations" in c.record:
        col, value = "conversations", c.record["conversations"]  # ShareGPT, found by name
    if value is None:
        c.missing("messages")
        return {"messages": []}
    if isinstance(value, str):  # CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            c.problems.append(f'field "{col}" is not a valid JSON array: {exc.msg}')
            return {"messages": []}
    if not isinstance(value, list):
        c.problems.append(f'field "{col}" must be a list of messages, got {_type_name(value)}')
        return {"messages": []}
    if not value:
        c.problems.append(f'field "{col}" is an empty list: no messages')
        return {"messages": []}
    messages: list[dict[str, str]] = []
    for i, msg in enumerate(value):
        where = f'"{col}"[{i}]'
        if not isinstance(msg, dict):
            c.problems.append(f"{where} must be an object, got {_type_name(msg)}")
            continue
        if "role" in msg or "content" in msg:  # OpenAI
            role, content, rkey, ckey = msg.get("role"), msg.get("content"), "role", "content"
            roles: Mapping[str, str] = {r: r for r in _OPENAI_ROLES}
        elif "from" in msg or "value" in msg:  # ShareGPT
            role, content, rkey, ckey = msg.get("from"), msg.get("value"), "from", "value"
            roles = _SHAREGPT_ROLES
        else:
            c.problems.append(
                f"{where} has neither role/content (OpenAI) nor from/value (ShareGPT) fields; "
                f"it has: {', '.join(msg) or 'nothing'}"
            )
            continue
        if not isinstance(role, str) or role not in roles:
            c.problems.append(
                f"{where}.{rkey} is {json.dumps(role)}: unknown role; use one of "
                + ", ".join(sorted(roles))
            )
            continue
        if not isinstance(content, str):
            c.problems.append(f"{where}.{ckey} must be a string, got {_type_name(content)}")
            continue
        if not content.strip() and roles[role] == "assistant":
            c.problems.append(f"{where}.{ckey} is empty: an assistant turn needs text")
            continue
        messages.append({"role": roles[role], "content": content})
    if not c.problems and not any(m["role"] == "assistant" for m in messages):
        c.problems.append(
            f'field "{col}" has no assistant turn: nothing to learn from (loss is computed on '
            "assistant turns only)"
        )
    return {"messages": messages}


def _classification(c: _RowCheck) -> dict[str, Any]:
    text = c.string("text")
    pair = c.string("text_pair", required=False) or None
    col = c.column("label")
    value = c.record.get(col)
    label = ""
    if value is None:
        if col in c.record:
            c.problems.append(f'label missing: field "{col}" is null')
        else:
            c.missing("label")
    elif isinstance(value, bool):
        c.problems.append(f'field "{col}" must be a string or an integer, got a boolean')
    elif isinstance(value, int):
        label = str(value)
    elif isinstance(value, float) and value.is_integer():
        label = str(int(value))
    elif isinstance(value, str):
        label = value.strip()
        if not label:
            c.problems.append(f'label missing: field "{col}" is empty')
    else:
        c.problems.append(f'field "{col}" must be a string or an integer, got {_type_name(value)}')
    return {"text": text, "text_pair": pair, "label": label}


def _ner(c: _RowCheck) -> dict[str, Any]:
    tokens = c.string_list("tokens")
    tags = c.string_list("tags")
    if c.problems:
        return {"tokens": tokens, "tags": tags}
    tcol, gcol = c.column("tokens"), c.column("tags")
    if len(tokens) != len(tags):
        c.problems.append(
            f'"{tcol}" has {len(tokens)} items but "{gcol}" has {len(tags)}: '
            "every token needs exactly one tag"
        )
        return {"tokens": tokens, "tags": tags}
    for i, tok in enumerate(tokens):
        if not tok.strip():
            c.problems.append(f'"{tcol}"[{i}] is an empty token')
    previous = "O"
    for i, tag in enumerate(tags):
        if not _BIO.match(tag):
            c.problems.append(
                f'"{gcol}"[{i}] is {tag!r}: not a BIO tag (use O, B-<type> or I-<type>)'
            )
        elif tag.startswith("I-") and previous[2:] != tag[2:]:
            c.problems.append(
                f'"{gcol}"[{i}] is {tag!r} after {previous!r}: an I- tag must continue a '
                f"B-{tag[2:]} or I-{tag[2:]} entity"
            )
        previous = tag
    return {"tokens": tokens, "tags": tags}


_NORMALIZERS: dict[str, Callable[[_RowCheck], dict[str, Any]]] = {
    "text": _text,
    "completion": _completion,
    "instruction": _instruction,
    "chat": _chat,
    "classification": _classification,
    "ner": _ner,
}


def normalize(
    fmt: str, record: Mapping[str, Any], columns: Mapping[str, str], dataset_ref: str
) -> tuple[dict[str, Any] | None, list[str]]:
    """Check one row and return (canonical record, []) or (None, problems).

    ``dataset_ref`` names the spec entry in messages, e.g. ``spec.datasets[0]``.
    """
    check = _RowCheck(fmt, record, columns, dataset_ref)
    canonical = _NORMALIZERS[fmt](check)
    if check.problems:
        return None, check.problems
    return canonical, []
