"""Reading dataset files row by row, each row tagged with the exact place it came from.

Why it exists: a validation error is only useful if it points at the row to fix. Hugging Face
``datasets`` loads fast but forgets line numbers, so the readers here parse each format themselves
and attach a :class:`Location` to every row: the physical line for JSON Lines, the line where the
object starts for a JSON array, the line where the record starts for CSV (quoted fields may span
lines), the 1-based row number for Parquet, and the first line of the paragraph for plain text.

A dataset URI may name one file or a prefix (directory); a prefix is read file by file in sorted
order. Problems that stop a file from being read at all (unsupported extension, empty file, no
data files under a prefix) are reported as :class:`FileProblem` values, never raised, so that the
validation pass can list every problem at once.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_EXTENSIONS",
    "FileProblem",
    "Location",
    "Row",
    "display_name",
    "list_data_files",
    "read_rows",
]

# Extensions a dataset may use. ``.txt`` only makes sense for the text format (one row per
# paragraph); the loader reports it for any other format.
DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
_IGNORED_NAMES = {"_SUCCESS", "manifest.json", "README.md", "LICENSE"}


@dataclass(frozen=True)
class Location:
    """Where a row is: ``path:line`` (text formats) or ``path:row N`` (Parquet)."""

    path: str
    line: int
    is_row_index: bool = False

    def __str__(self) -> str:
        return f"{self.path}:row {self.line}" if self.is_row_index else f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Row:
    """One record as read from a file; ``record`` is None when the row could not be parsed."""

    location: Location
    record: dict[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True)
class FileProblem:
    """A file or prefix that could not be read at all."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def display_name(local: Path, root: Path, uri: str) -> str:
    """The name a user recognises: the dataset URI, plus the file's path under a prefix."""
    if local == root or not root.is_dir():
        return uri
    rel = local.relative_to(root).as_posix()
    return uri.rstrip("/") + "/" + rel


def list_data_files(root: Path, uri: str) -> tuple[list[Path], list[FileProblem]]:
    """The data files of a dataset (one file, or every data file under a prefix, sorted)."""
    if not root.exists():
        return [], [FileProblem(uri, f"not found (looked for the local copy at {root})")]
    if root.is_file():
        if root.suffix.lower() not in DATA_EXTENSIONS:
            return [], [FileProblem(uri, _unsupported(root))]
        return [root], []
    files: list[Path] = []
    skipped: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.name in _IGNORED_NAMES:
            continue
        if path.suffix.lower() in DATA_EXTENSIONS:
            files.append(path)
        else:
            skipped.append(rel.as_posix())
    if not files:
        found = f" (found only: {', '.join(skipped[:5])})" if skipped else " (the prefix is empty)"
        return [], [
            FileProblem(
                uri,
                "no data files under this prefix"
                + found
                + "; expected files ending in "
                + ", ".join(DATA_EXTENSIONS),
            )
        ]
    return files, []


def _unsupported(path: Path) -> str:
    return f"unsupported file extension {path.suffix or '(none)'!r}; use one of " + ", ".join(
        DATA_EXTENSIONS
    )


def read_rows(path: Path, name: str) -> Iterator[Row | FileProblem]:
    """Every row of one file, in order; a FileProblem if the file as a whole is unusable."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        yield FileProblem(name, "file is empty: it holds no rows")
        return
    if suffix == ".jsonl":
        yield from _read_jsonl(path, name)
    elif suffix == ".json":
        yield from _read_json(path, name)
    elif suffix == ".csv":
        yield from _read_csv(path, name)
    elif suffix == ".parquet":
        yield from _read_parquet(path, name)
    elif suffix == ".txt":
        yield from _read_txt(path, name)
    else:
        yield FileProblem(name, _unsupported(path))


def _object_or_problem(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(value, dict):
        return value, None
    return None, f"expected a JSON object {{...}}, got {_json_type(value)}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _read_jsonl(path: Path, name: str) -> Iterator[Row | FileProblem]:
    any_rows = False
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            loc = Location(name, lineno)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Row(loc, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if lineno == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            any_rows = True
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Row(loc, None, f"not JSON: {exc.msg} (column {exc.colno})")
                continue
            record, problem = _object_or_problem(value)
            yield Row(loc, record, problem)
    if not any_rows:
        yield FileProblem(name, "file holds only blank lines: no rows")


def _read_json(path: Path, name: str) -> Iterator[Row | FileProblem]:
    """A JSON array of objects, or (often misnamed) JSON Lines in a .json file."""
    try:
        text = path.read_text(encoding="utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        yield FileProblem(name, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
        return
    stripped = text.lstrip()
    if not stripped:
        yield FileProblem(name, "file is empty: it holds no rows")
        return
    if stripped[0] != "[":
        whole = _try_json(text)
        if isinstance(whole, dict) and "\n" in stripped.strip():
            lists = [k for k, v in whole.items() if isinstance(v, list)]
            hint = f" (its key {lists[0]!r} holds a list)" if lists else ""
            yield FileProblem(
                name,
                f"holds a single JSON object{hint}, not rows: write a JSON array of objects "
                "[{...}, {...}] or JSON Lines (one object per line)",
            )
            return
        # A .json file holding one object per line is common; read it as JSON Lines.
        yield from _read_jsonl(path, name)
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    count = 0
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            break
        start_line = text.count("\n", 0, pos) + 1
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield Row(Location(name, exc.lineno), None, f"not JSON: {exc.msg} (column {exc.colno})")
            return  # the rest of the array cannot be located reliably
        count += 1
        record, problem = _object_or_problem(value)
        yield Row(Location(name, start_line), record, problem)
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            break
        line = text.count("\n", 0, pos) + 1
        yield Row(Location(name, line), None, "not JSON: expected ',' or ']' after an array item")
        return
    if count == 0:
        yield FileProblem(name, "the JSON array is empty: no rows")


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(path: Path, name: str) -> Iterator[Row | FileProblem]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                yield FileProblem(name, "CSV file has no header row")
                return
            columns = [c.strip() for c in header]
            previous_end = reader.line_num
            any_rows = False
            for values in reader:
                start = previous_end + 1
                previous_end = reader.line_num
                if not values or all(not v.strip() for v in values):
                    continue
                any_rows = True
                loc = Location(name, start)
                if len(values) != len(columns):
                    yield Row(
                        loc,
                        None,
                        f"has {len(values)} fields but the header has {len(columns)} "
                        f"({', '.join(columns)}); quote fields that contain commas",
                    )
                    continue
                yield Row(loc, dict(zip(columns, values, strict=True)))
            if not any_rows:
                yield FileProblem(name, "CSV file has a header but no data rows")
    except UnicodeDecodeError as exc:
        yield FileProblem(name, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    except csv.Error as exc:
        yield FileProblem(name, f"malformed CSV: {exc}")


def _read_parquet(path: Path, name: str) -> Iterator[Row | FileProblem]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        yield FileProblem(name, f"not a readable Parquet file: {exc}")
        return
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            index += 1
            yield Row(Location(name, index, is_row_index=True), record)
    if index == 0:
        yield FileProblem(name, "Parquet file has no rows")


def _read_txt(path: Path, name: str) -> Iterator[Row | FileProblem]:
    """Plain text: one row per paragraph (paragraphs are separated by blank lines)."""
    try:
        lines = path.read_text(encoding="utf-8").lstrip("\ufeff").split("\n")
    except UnicodeDecodeError as exc:
        yield FileProblem(name, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
        return
    para: list[str] = []
    start = 0
    count = 0
    for lineno, line in enumerate([*lines, ""], start=1):
        if line.strip():
            if not para:
                start = lineno
            para.append(line.rstrip("\r"))
        elif para:
            count += 1
            yield Row(Location(name, start), {"text": "\n".join(para)})
            para = []
    if count == 0:
        yield FileProblem(name, "text file holds only blank lines: no rows")
