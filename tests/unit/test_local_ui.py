"""The terminal display: deltas, durations, the summary table and plain progress lines."""

from __future__ import annotations

from finetune_operator.local_ui import RunUI, format_duration, metric_delta
from rich.console import Console


def test_format_duration() -> None:
    assert format_duration(None) == "-"
    assert format_duration(42.4) == "42s"
    assert format_duration(75) == "1m15s"
    assert format_duration(3720) == "1h02m"


def test_metric_delta_direction() -> None:
    assert metric_delta("eval_accuracy", "0.9", "0.5") == ("+0.4", True)
    assert metric_delta("eval_loss", "0.4", "0.7") == ("-0.3", True)
    assert metric_delta("eval_perplexity", "9", "3") == ("+6", False)
    assert metric_delta("eval_f1", "0.5", "0.5") == ("+0", None)
    assert metric_delta("eval_f1", "0.5", None) == ("", None)


def _ui() -> tuple[RunUI, Console]:
    console = Console(record=True, width=120, force_terminal=False)
    return RunUI(console), console


def test_summary_shows_baseline_delta_and_artifacts() -> None:
    ui, console = _ui()
    ui.summary(
        {
            "evaluation": {
                "results": {"eval_accuracy": "0.925", "eval_loss": "0.21"},
                "baseline": {"eval_accuracy": "0.5", "eval_loss": "0.69"},
                "passed": True,
                "message": "eval_accuracy 0.925 >= 0.8",
            },
            "artifacts": {
                "uri": "s3://artifacts/x/runs/r/",
                "adapterUri": "s3://artifacts/x/runs/r/adapter/",
            },
        },
        duration=83,
    )
    text = console.export_text()
    assert "eval_accuracy" in text and "0.925" in text and "+0.425" in text
    assert "-0.48" in text
    assert "eval_accuracy 0.925 >= 0.8" in text and "1m23s" in text
    assert "s3://artifacts/x/runs/r/adapter/" in text.replace("\n", "").replace(" ", "")


def test_plain_progress_lines() -> None:
    ui, console = _ui()
    assert not ui.live
    with ui.training() as update:
        update({"progress": {"stage": "pulling"}})
        for step in range(0, 21):
            update(
                {
                    "progress": {
                        "stage": "training",
                        "step": step,
                        "totalSteps": 20,
                        "etaSeconds": 20 - step,
                    },
                    "metrics": {"trainLoss": "0.5"},
                }
            )
        update({"progress": {"stage": "done"}})
    text = console.export_text()
    assert "Pulling base model and data" in text and "Training" in text and "Done" in text
    assert "step 20/20" in text and "loss 0.5" in text
    assert text.count("step ") == 11  # one line per tenth, not per step
