"""What ``finetune run`` shows in the terminal: progress bars, the summary table, errors.

Why it exists: the local runner's orchestration (local.py) should read as a list of phases; the
presentation lives here. On a terminal it draws live rich progress bars (transfers in bytes,
training in steps with loss, throughput and ETA read from the trainer's status file); when the
output is not a terminal (CI, pipes, tests) it prints one plain line per stage change and per
tenth of training instead, so logs stay readable. Errors are one paragraph, never a traceback
unless ``--debug``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

__all__ = ["LOWER_IS_BETTER", "RunUI", "format_duration", "metric_delta"]

LOWER_IS_BETTER = ("loss", "perplexity")
_STAGE_TEXT = {
    "pulling": "Pulling base model and data",
    "validating": "Validating and tokenizing data",
    "training": "Training",
    "evaluating": "Evaluating (fine-tuned and baseline)",
    "uploading": "Uploading artifacts",
    "done": "Done",
}


def format_duration(seconds: float | int | None) -> str:
    """``75`` → ``1m15s``; ``None`` → ``-``."""
    if seconds is None:
        return "-"
    s = round(float(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _num(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _short(value: Any, digits: int = 4) -> str:
    num = _num(value)
    if num is None:
        return str(value)
    return f"{float(num):.{digits}g}"


def metric_delta(metric: str, tuned: Any, base: Any) -> tuple[str, bool | None]:
    """(signed delta text, whether it is an improvement) for ``tuned`` vs ``base``."""
    a, b = _num(tuned), _num(base)
    if a is None or b is None:
        return "", None
    delta = a - b
    lower = any(metric.endswith(suffix) for suffix in LOWER_IS_BETTER)
    better = (delta < 0) if lower else (delta > 0)
    return f"{float(delta):+.4g}", (better if delta != 0 else None)


class RunUI:
    """The display of one ``finetune run``; ``live`` draws bars, otherwise plain lines."""

    def __init__(self, console: Console | None = None, *, debug: bool = False) -> None:
        self.console = console or Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.debug = debug
        self.live = self.console.is_terminal
        self._stage: str | None = None
        self._plain_tenth = -1
        self._progress: Progress | None = None
        self._stage_task: TaskID | None = None
        self._train_task: TaskID | None = None

    # ------------------------------------------------------------------ lines

    def header(self, rows: Sequence[tuple[str, str]]) -> None:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        for key, value in rows:
            table.add_row(key, value)
        self.console.print(table)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]•[/dim] {text}")

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]![/yellow] {text}")

    # ------------------------------------------------------------------ transfers

    @contextmanager
    def transfer(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A byte progress bar; yields ``advance(n_bytes)`` (safe from worker threads)."""
        if not self.live or total <= 0:
            self.note(f"{description} ({total / 1e6:.1f} MB)" if total > 0 else description)
            yield lambda n: None
            return
        with Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)
            progress.update(task, completed=total)

    # ------------------------------------------------------------------ training

    @contextmanager
    def training(self) -> Iterator[Callable[[Mapping[str, Any]], None]]:
        """Yields ``update(trainer_status)``: call it with each read of the status file."""
        if not self.live:
            yield self._plain_update
            return
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<38}"),
            BarColumn(bar_width=32),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        with self._progress:
            self._stage_task = self._progress.add_task("Starting trainer", total=None, detail="")
            yield self._live_update
        self._progress = None

    @staticmethod
    def _train_detail(progress: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
        parts = [f"step {progress.get('step', 0)}/{progress.get('totalSteps', '?')}"]
        if metrics.get("trainLoss") is not None:
            parts.append(f"loss {_short(metrics['trainLoss'])}")
        if progress.get("tokensPerSecond"):
            parts.append(f"{_short(progress['tokensPerSecond'], 3)} tok/s")
        if progress.get("etaSeconds") is not None:
            parts.append(f"ETA {format_duration(progress['etaSeconds'])}")
        return "  ".join(parts)

    def _live_update(self, status: Mapping[str, Any]) -> None:
        assert self._progress is not None and self._stage_task is not None
        progress = status.get("progress") or {}
        metrics = status.get("metrics") or {}
        stage = progress.get("stage")
        if stage and stage != self._stage:
            if self._stage is not None:
                self._progress.update(self._stage_task, total=1, completed=1)
                self._progress.stop_task(self._stage_task)
            self._stage = stage
            self._stage_task = self._progress.add_task(
                _STAGE_TEXT.get(stage, stage), total=None, detail=""
            )
        if stage == "training" and progress.get("totalSteps"):
            self._progress.update(
                self._stage_task,
                total=int(progress["totalSteps"]),
                completed=int(progress.get("step") or 0),
                detail=self._train_detail(progress, metrics),
            )
        if stage == "done":
            self._progress.update(self._stage_task, total=1, completed=1)

    def _plain_update(self, status: Mapping[str, Any]) -> None:
        progress = status.get("progress") or {}
        metrics = status.get("metrics") or {}
        stage = progress.get("stage")
        if stage and stage != self._stage:
            self._stage = stage
            self.note(_STAGE_TEXT.get(stage, stage))
        if stage == "training" and progress.get("totalSteps"):
            tenth = int(10 * int(progress.get("step") or 0) / max(1, int(progress["totalSteps"])))
            if tenth > self._plain_tenth:
                self._plain_tenth = tenth
                self.console.print(f"  {self._train_detail(progress, metrics)}")

    # ------------------------------------------------------------------ results

    def summary(
        self,
        status: Mapping[str, Any],
        *,
        duration: float,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        """The metrics-vs-baseline table, the gate, the artifacts and the duration."""
        evaluation = status.get("evaluation") or {}
        results: Mapping[str, Any] = evaluation.get("results") or {}
        baseline: Mapping[str, Any] = evaluation.get("baseline") or {}
        table = Table(title="Evaluation", title_justify="left", show_edge=False)
        table.add_column("metric")
        table.add_column("baseline", justify="right")
        table.add_column("fine-tuned", justify="right")
        table.add_column("change", justify="right")
        for name in sorted(results):
            delta, better = metric_delta(name, results[name], baseline.get(name))
            style = {True: "green", False: "red", None: ""}[better]
            table.add_row(
                name,
                _short(baseline[name]) if name in baseline else "-",
                _short(results[name]),
                f"[{style}]{delta}[/{style}]" if style else delta,
            )
        if results:
            self.console.print(table)
        if evaluation.get("passed") is not None:
            style = "green" if evaluation["passed"] else "red"
            verdict = evaluation.get("message") or ("passed" if evaluation["passed"] else "failed")
            self.console.print(f"[{style}]{verdict}[/{style}]")
        info = Table.grid(padding=(0, 2))
        info.add_column(style="bold cyan", no_wrap=True)
        info.add_column(overflow="fold")
        artifacts = status.get("artifacts") or {}
        for key, label in (
            ("uri", "artifacts"),
            ("adapterUri", "adapter"),
            ("mergedUri", "merged model"),
            ("manifestUri", "manifest"),
        ):
            if artifacts.get(key):
                info.add_row(label, str(artifacts[key]))
        metrics = status.get("metrics") or {}
        if metrics.get("trainLoss"):
            info.add_row("final train loss", _short(metrics["trainLoss"]))
        for key, value in extra:
            info.add_row(key, value)
        info.add_row("duration", format_duration(duration))
        self.console.print(info)

    def error(self, message: str, *, title: str = "finetune run failed", hint: str = "") -> None:
        """One paragraph on stderr (the caller adds the traceback under --debug)."""
        text = message.strip()
        if hint:
            text += f"\n\n{hint.strip()}"
        if self.err.is_terminal:
            self.err.print(Panel(text, title=title, title_align="left", border_style="red"))
        else:
            self.err.print(f"error: {title}: {text}", soft_wrap=True)

    def clock(self) -> float:
        return time.monotonic()
