"""A job's data, from the files launch pulled to the tokenized datasets Trainer consumes.

Why it exists: this is the one place that knows the data contract of a FineTuneJob. It reads
every dataset (``datafiles``), checks every row against its format (``formats``) so that bad data
is reported all at once as ``file:line: what is wrong`` before any GPU time is spent, then mixes
the datasets by weight, splits off validation, tokenizes with loss masks and packs
(``tokenization``).

The ``files`` argument maps keys to the local copies launch pulled (a file, or a directory for
a prefix URI):
  ``dataset:<name>``  spec.datasets[i] with that name
  ``validation``      spec.validation.uri
  ``eval:<i>``        spec.evaluation.datasets[i]

Rules (also in the README, "Datasets and formats"):
- Validation and evaluation files use the format of the first training dataset unless an
  evaluation dataset names its own; they also use its column mapping when they share its format
  and give none.
- Mixing: with several training datasets of sizes n_i and weights w_i, the training set keeps the
  total size N = sum(n_i), and dataset i contributes round(N * w_i / sum(w)) rows (largest
  remainder rounding, so the counts sum to N): a random subset when that is fewer than n_i, or
  every row repeated as often as it fits plus a random subset of the rest when more. The result
  is shuffled. Every random choice uses hyperparameters.seed.
- splitRatio holds out round(n_i * ratio) rows (at least 1) of each training dataset, chosen by
  a seeded permutation, before mixing, so a repeated row never lands on both sides.
- Classification labels: the sorted set found in the training data (numerically sorted when all
  labels are integers); NER tags: "O" first, then the others sorted. Validation and evaluation
  rows whose label is not in that set are errors.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .config import TrainerConfig
from .datafiles import FileProblem, Location, display_name, list_data_files, read_rows
from .formats import TASK_FORMATS, check_columns_mapping, normalize

__all__ = [
    "MAX_PROBLEMS",
    "DataReport",
    "DataValidationError",
    "Item",
    "PreparedData",
    "Source",
    "job_sources",
    "mix_counts",
    "prepare_data",
    "split_indices",
    "validate_data",
]

MAX_PROBLEMS = 50


class DataValidationError(ValueError):
    """Bad data or data config. ``problems`` holds ``file:line: what is wrong`` lines."""

    def __init__(self, problems: list[str], *, limit: int = MAX_PROBLEMS):
        self.total = len(problems)
        shown = problems[:limit]
        if self.total > limit:
            shown.append(f"... and {self.total - limit} more")
        self.problems = shown
        super().__init__(self._paragraph())

    def _paragraph(self) -> str:
        noun = "problem" if self.total == 1 else "problems"
        head = (
            f"The training data has {self.total} {noun}; training did not start. Fix the rows "
            "listed below (a field with another name can be mapped with the dataset's "
            "`columns`, e.g. columns: {text: sentence}) and submit the job again:"
        )
        return head + "\n" + "\n".join("  " + p for p in self.problems)


@dataclass(frozen=True)
class Source:
    """One file set of the job: a training dataset, the validation file, or an eval set."""

    key: str  # dataset:<name> | validation | eval:<i>
    name: str  # dataset name, "validation", or the eval set's name
    uri: str
    format: str
    columns: Mapping[str, str]
    ref: str  # spec path for messages, e.g. spec.datasets[0]
    weight: float = 1.0


@dataclass
class DataReport:
    """What validation found: row counts per source, label set, warnings."""

    rows: dict[str, int] = field(default_factory=dict)  # by files key
    labels: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    train_rows: int = 0  # after split and mixing
    validation_rows: int = 0
    label_counts: dict[str, int] | None = None  # classification: training rows per label

    def summary(self) -> str:
        parts = [f"{k}: {v} rows" for k, v in self.rows.items()]
        text = "; ".join(parts) + f"; training on {self.train_rows} rows"
        if self.validation_rows:
            text += f", validating on {self.validation_rows}"
        if self.labels is not None:
            text += f"; {len(self.labels)} labels: {', '.join(self.labels[:20])}"
        return text


@dataclass
class PreparedData:
    """Tokenized datasets plus what training and evaluation need alongside them."""

    train: Any  # datasets.Dataset
    eval: Any | None  # validation set (datasets.Dataset) or None
    tests: dict[str, Any]  # evaluation sets by name (default: {} -> use eval)
    labels: list[str] | None
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    num_train_tokens: int
    task: str
    format: str  # format of the evaluation data (the first training dataset's by default)
    report: DataReport
    # Canonical records kept for the baseline (few-shot prompts) and reports.
    train_examples: list[dict[str, Any]] = field(default_factory=list)  # a few, seeded
    eval_records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    chat_template_defaulted: bool = False

    @property
    def test(self) -> Any | None:
        """The first evaluation set, or the validation set when the spec names none."""
        if self.tests:
            return next(iter(self.tests.values()))
        return self.eval


# ----------------------------------------------------------------------------------- sources


def job_sources(config: TrainerConfig) -> list[Source]:
    """Every data source of the job, in spec order."""
    spec = config.spec
    first = spec.datasets[0]
    sources = [
        Source(
            key=f"dataset:{ds.name}",
            name=ds.name,
            uri=ds.uri,
            format=ds.format,
            columns=dict(ds.columns),
            ref=f"spec.datasets[{i}]",
            weight=_weight(ds.weight),
        )
        for i, ds in enumerate(spec.datasets)
    ]
    if spec.validation is not None and spec.validation.uri:
        sources.append(
            Source(
                "validation",
                "validation",
                spec.validation.uri,
                first.format,
                dict(first.columns),
                "spec.validation",
            )
        )
    for i, eds in enumerate(spec.evaluation.datasets):
        fmt = eds.format or first.format
        columns = dict(eds.columns) or (dict(first.columns) if fmt == first.format else {})
        name = eds.name or ("eval" if i == 0 else f"eval-{i}")
        sources.append(
            Source(f"eval:{i}", name, eds.uri, fmt, columns, f"spec.evaluation.datasets[{i}]")
        )
    return sources


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value


# -------------------------------------------------------------------------------- collecting


@dataclass
class _Collected:
    records: dict[str, list[tuple[Location, dict[str, Any]]]]
    problems: list[str]
    warnings: list[str]
    labels: list[str] | None
    sources: list[Source]


def _collect(config: TrainerConfig, files: Mapping[str, Path]) -> _Collected:
    spec = config.spec
    sources = job_sources(config)
    problems: list[str] = []
    warnings: list[str] = []
    allowed = TASK_FORMATS[spec.task]
    for src in sources:
        if src.format not in allowed:
            problems.append(
                f"{src.ref}.format: {src.format} does not fit task {spec.task}; use one of "
                + ", ".join(allowed)
            )
        problems.extend(check_columns_mapping(src.format, src.columns, f"{src.ref}.columns"))
        if src.key.startswith("dataset:") and not (src.weight > 0 and math.isfinite(src.weight)):
            problems.append(f'{src.ref}.weight: must be a positive decimal such as "1" or "0.5"')
    if problems:
        return _Collected({}, problems, warnings, None, sources)

    records: dict[str, list[tuple[Location, dict[str, Any]]]] = {}
    for src in sources:
        records[src.key] = []
        local = files.get(src.key)
        if local is None:
            problems.append(f"{src.uri}: no local copy was given for {src.key} (launch bug)")
            continue
        local = Path(local)
        paths, file_problems = list_data_files(local, src.uri)
        problems.extend(str(p) for p in file_problems)
        for path in paths:
            name = display_name(path, local, src.uri)
            if path.suffix.lower() == ".txt" and src.format != "text":
                problems.append(
                    f"{name}: .txt files hold raw text and suit only format text "
                    f"({src.ref}.format is {src.format}); use .jsonl, .json, .csv or .parquet"
                )
                continue
            for row in read_rows(path, name):
                if isinstance(row, FileProblem):
                    problems.append(str(row))
                    continue
                if row.record is None:
                    problems.append(f"{row.location}: {row.problem}")
                    continue
                canonical, row_problems = normalize(src.format, row.record, src.columns, src.ref)
                if canonical is None:
                    problems.extend(f"{row.location}: {p}" for p in row_problems)
                else:
                    records[src.key].append((row.location, canonical))

    labels = _label_set(spec.task, sources, records, problems)
    if labels is not None:
        _check_labels(spec.task, sources, records, labels, problems)
    return _Collected(records, problems, warnings, labels, sources)


def _label_set(
    task: str,
    sources: list[Source],
    records: Mapping[str, list[tuple[Location, dict[str, Any]]]],
    problems: list[str],
) -> list[str] | None:
    if task == "causal-lm":
        return None
    train_keys = [s.key for s in sources if s.key.startswith("dataset:")]
    found: set[str] = set()
    for key in train_keys:
        for _, rec in records.get(key, []):
            if task == "sequence-classification":
                found.add(rec["label"])
            else:
                found.update(rec["tags"])
    if task == "sequence-classification":
        if all(x.lstrip("-").isdigit() for x in found):
            labels = sorted(found, key=int)
        else:
            labels = sorted(found)
        if len(labels) == 1 and not problems:
            problems.append(
                f"{sources[0].uri}: every training row has label {labels[0]!r}; classification "
                "needs at least two labels"
            )
        return labels
    others = sorted(found - {"O"})
    return ["O", *others]


def _check_labels(
    task: str,
    sources: list[Source],
    records: dict[str, list[tuple[Location, dict[str, Any]]]],
    labels: list[str],
    problems: list[str],
) -> None:
    known = set(labels)
    shown = ", ".join(labels[:20])
    for src in sources:
        if src.key.startswith("dataset:"):
            continue
        kept = []
        for loc, rec in records.get(src.key, []):
            bad = (
                [rec["label"]]
                if task == "sequence-classification"
                else sorted({t for t in rec["tags"] if t not in known})
            )
            bad = [b for b in bad if b not in known]
            if bad:
                what = "label" if task == "sequence-classification" else "tag"
                problems.append(
                    f"{loc}: {what} {', '.join(repr(b) for b in bad)} never occurs in the "
                    f"training data, so the model cannot predict it (training {what}s: {shown})"
                )
            else:
                kept.append((loc, rec))
        records[src.key] = kept


# ------------------------------------------------------------------------ split and mixing


def split_indices(n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) row indices for a split ratio: a seeded permutation, deterministic."""
    if n < 2:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(n * ratio)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


def mix_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Rows each dataset contributes: round(N * w_i / sum(w)) with N = sum(sizes), summing to N."""
    total = sum(sizes)
    wsum = sum(weights)
    exact = [total * w / wsum for w in weights]
    counts = [math.floor(x) for x in exact]
    rest = total - sum(counts)
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:rest]:
        counts[i] += 1
    return counts


def _sample(rows: list[Any], count: int, rng: random.Random) -> list[Any]:
    """``count`` rows: a random subset, or whole repeats plus a random subset of the rest."""
    if not rows or count <= 0:
        return []
    repeats, remainder = divmod(count, len(rows))
    return rows * repeats + rng.sample(rows, remainder)


class Item(NamedTuple):
    """One validated row on its way to the tokenizer (the location for late errors)."""

    format: str
    record: dict[str, Any]
    location: Location


@dataclass
class _Splits:
    train: list[Item]  # mixed and shuffled
    validation: list[Item]
    evals: dict[str, tuple[str, list[Item]]]  # name -> (format, rows)


def _split_and_mix(config: TrainerConfig, collected: _Collected) -> _Splits:
    spec = config.spec
    seed = spec.hyperparameters.seed
    ratio = None
    if spec.validation is not None and spec.validation.split_ratio and not spec.validation.uri:
        ratio = float(spec.validation.split_ratio)
    train_parts: list[list[Item]] = []
    weights: list[float] = []
    validation: list[Item] = []
    for i, src in enumerate(s for s in collected.sources if s.key.startswith("dataset:")):
        rows = [Item(src.format, rec, loc) for loc, rec in collected.records[src.key]]
        if ratio is not None:
            tr, va = split_indices(len(rows), ratio, seed + i)
            validation.extend(rows[j] for j in va)
            rows = [rows[j] for j in tr]
        train_parts.append(rows)
        weights.append(src.weight)
    rng = random.Random(seed)
    if len(train_parts) == 1:
        train = list(train_parts[0])
    else:
        counts = mix_counts([len(p) for p in train_parts], weights)
        train = [
            row
            for part, c in zip(train_parts, counts, strict=True)
            for row in _sample(part, c, rng)
        ]
    rng.shuffle(train)
    for src in collected.sources:
        if src.key == "validation":
            validation = [Item(src.format, rec, loc) for loc, rec in collected.records[src.key]]
    evals = {
        src.name: (
            src.format,
            [Item(src.format, rec, loc) for loc, rec in collected.records[src.key]],
        )
        for src in collected.sources
        if src.key.startswith("eval:")
    }
    return _Splits(train, validation, evals)


# ------------------------------------------------------------------------------ public API


def validate_data(config: TrainerConfig, files: Mapping[str, Path]) -> DataReport:
    """Read and check every row of every source; raise DataValidationError listing problems."""
    collected = _collect(config, files)
    if collected.problems:
        raise DataValidationError(collected.problems)
    return _report(config, collected, _split_and_mix(config, collected))


def _report(config: TrainerConfig, collected: _Collected, splits: _Splits) -> DataReport:
    report = DataReport(
        rows={k: len(v) for k, v in collected.records.items()},
        labels=collected.labels,
        warnings=list(collected.warnings),
        train_rows=len(splits.train),
        validation_rows=len(splits.validation),
    )
    report.warnings.extend(_overlap_warnings(collected))
    if config.spec.task == "sequence-classification":
        counts: dict[str, int] = {label: 0 for label in collected.labels or []}
        for src in collected.sources:
            if src.key.startswith("dataset:"):
                for _, rec in collected.records[src.key]:
                    counts[rec["label"]] += 1
        report.label_counts = counts
        if counts and min(counts.values()) * 10 < max(counts.values()):
            report.warnings.append(
                "training labels are imbalanced (more than 10:1): "
                + ", ".join(f"{k}={v}" for k, v in counts.items())
                + "; accuracy alone will flatter the model, watch eval_f1"
            )
    if not splits.train:
        raise DataValidationError([f"{config.spec.datasets[0].uri}: no training rows"])
    if config.spec.validation is not None and not splits.validation:
        report.warnings.append("validation set is empty: eval loss will not be reported")
    return report


def _overlap_warnings(collected: _Collected) -> list[str]:
    """Duplicate training rows, and held-out rows that also occur in the training data."""
    warnings: list[str] = []
    seen: dict[str, Location] = {}
    duplicates = 0
    first_dup = ""
    for src in collected.sources:
        if not src.key.startswith("dataset:"):
            continue
        for loc, rec in collected.records[src.key]:
            key = json.dumps(rec, sort_keys=True)
            if key in seen:
                duplicates += 1
                first_dup = first_dup or f"{loc} repeats {seen[key]}"
            else:
                seen[key] = loc
    if duplicates:
        warnings.append(f"{duplicates} training rows are exact duplicates (first: {first_dup})")
    for src in collected.sources:
        if src.key.startswith("dataset:"):
            continue
        leaked = [
            (loc, seen[k])
            for loc, rec in collected.records[src.key]
            if (k := json.dumps(rec, sort_keys=True)) in seen
        ]
        if leaked:
            warnings.append(
                f"{len(leaked)} of {len(collected.records[src.key])} {src.name} rows also occur "
                f"in the training data, so its scores overstate generalisation (first: "
                f"{leaked[0][0]} = {leaked[0][1]})"
            )
    return warnings


def prepare_data(config: TrainerConfig, tokenizer: Any, files: Mapping[str, Path]) -> PreparedData:
    """Validate, then tokenize: the datasets and collator training and evaluation use."""
    from .prepare import build_prepared  # torch/datasets only from here on

    collected = _collect(config, files)
    if collected.problems:
        raise DataValidationError(collected.problems)
    splits = _split_and_mix(config, collected)
    report = _report(config, collected, splits)
    prepared = build_prepared(
        config, tokenizer, splits.train, splits.validation, splits.evals, collected.labels, report
    )
    if len(prepared.train) == 0:
        # Every row was dropped while tokenizing (e.g. prompts that alone fill maxSeqLength):
        # a bad-data verdict, not a crash deep inside the data loader.
        max_len = config.spec.hyperparameters.max_seq_length
        raise DataValidationError(
            [
                f"spec.hyperparameters.maxSeqLength: no training row is left after tokenizing "
                f"to {max_len} tokens ({'; '.join(report.warnings) or 'every row was dropped'}); "
                "raise maxSeqLength or shorten the prompts"
            ]
        )
    return prepared
