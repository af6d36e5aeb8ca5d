"""Reporter: status in FineTuneJobStatus wire format, rate-limited patches, /metrics, termination log."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobSpec, FineTuneJobStatus
from finetune_trainer.config import JobRef, ReportTarget, TrainerConfig
from finetune_trainer.report import MAX_TERMINATION_BYTES, ProgressLog, Reporter, peak_flops_for

from tests.support.trainer_jobs import free_port


def _config(tmp_path: Path, **report: Any) -> TrainerConfig:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://models/tiny/"},
            "datasets": [{"name": "d", "uri": "s3://data/d.jsonl", "format": "text"}],
            "output": {"uri": "s3://out/team/"},
        }
    )
    target = ReportTarget(
        status_file=str(tmp_path / "status.json"),
        termination_log=str(tmp_path / "termination-log"),
        metrics_port=report.pop("metrics_port", None),
        **report,
    )
    return TrainerConfig(
        job=JobRef("bot", "team-a"),
        run_id="bot-1",
        spec=spec,
        base_model_uri="s3://models/tiny/",
        attempt=3,
        report=target,
    )


class FakePatcher:
    """Stands in for the API server: records patches, can fail (a fault a real server won't give on cue)."""

    def __init__(self, fail: bool = False) -> None:
        self.patches: list[dict[str, Any]] = []
        self.fail = fail

    def patch(self, status: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("apiserver unavailable")
        self.patches.append(json.loads(json.dumps(status)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _events(reporter: Reporter) -> None:
    reporter.on_event({"event": "train_begin", "step": 0, "total_steps": 100})
    reporter.on_event(
        {
            "event": "step",
            "step": 25,
            "total_steps": 100,
            "epoch": 0.5,
            "tokens_seen": 5000.0,
            "tokens_per_second": 900.5,
            "eta_seconds": 30.2,
        }
    )
    reporter.on_event({"event": "log", "step": 25, "loss": 1.2345678, "learning_rate": 2e-4})
    reporter.on_event(
        {"event": "checkpoint", "step": 25, "uri": "s3://out/team/runs/bot-1/checkpoints/step-25/"}
    )


def test_status_file_is_valid_finetunejob_status_with_trainer_fields_only(tmp_path: Path) -> None:
    reporter = Reporter(_config(tmp_path))
    reporter.stage("pulling")
    reporter.lineage(
        runId="bot-1",
        baseModelUri="s3://models/tiny/",
        baseModelETag="abc",
        datasetETags=[{"uri": "s3://data/d.jsonl", "etag": "e1"}],
        specHash="h",
    )
    _events(reporter)
    reporter.evaluation({"eval_loss": 0.9, "eval_perplexity": 2.46}, {"eval_loss": 1.5})
    reporter.artifacts(
        uri="s3://out/team/runs/bot-1/", adapterUri="s3://out/team/runs/bot-1/adapter/"
    )
    reporter.stage("done")
    reporter.finish()
    doc = json.loads((tmp_path / "status.json").read_text())
    FineTuneJobStatus.model_validate(doc)  # the wire format, unknown fields rejected
    assert set(doc) == {"progress", "metrics", "checkpoint", "evaluation", "artifacts", "lineage"}
    assert doc["progress"] == {
        "stage": "done",
        "step": 25,
        "totalSteps": 100,
        "percent": 25,
        "epoch": "0.5",
        "tokensPerSecond": "900.5",
        "etaSeconds": 30,
        "lastHeartbeatTime": doc["progress"]["lastHeartbeatTime"],
    }
    assert doc["metrics"] == {"trainLoss": "1.23457", "learningRate": "0.0002", "evalLoss": "0.9"}
    assert doc["checkpoint"] == {"step": 25, "uri": "s3://out/team/runs/bot-1/checkpoints/step-25/"}
    assert doc["evaluation"] == {
        "results": {"eval_loss": "0.9", "eval_perplexity": "2.46"},
        "baseline": {"eval_loss": "1.5"},
    }
    term = json.loads((tmp_path / "termination-log").read_text())
    assert term == doc


def test_api_patches_are_rate_limited_but_stage_changes_go_at_once(tmp_path: Path) -> None:
    clock, patcher = Clock(), FakePatcher()
    reporter = Reporter(_config(tmp_path, min_interval_seconds=10.0), patcher=patcher, clock=clock)
    reporter.stage("training")  # forced
    for step in range(1, 50):
        clock.now += 0.1
        reporter.on_event({"event": "step", "step": step, "total_steps": 100})
    assert len(patcher.patches) == 1  # 4.9 s of steps: nothing more yet
    clock.now += 10
    reporter.flush(changed=False)  # the follower's periodic call sends what was held back
    assert len(patcher.patches) == 2
    assert patcher.patches[-1]["progress"]["step"] == 49
    reporter.flush(changed=False)
    clock.now += 20
    reporter.flush(changed=False)
    assert len(patcher.patches) == 2  # nothing new, nothing sent
    reporter.stage("evaluating")
    assert patcher.patches[-1]["progress"]["stage"] == "evaluating"


def test_failed_patches_are_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = Reporter(_config(tmp_path), patcher=FakePatcher(fail=True))
    reporter.stage("training")
    _events(reporter)
    reporter.finish()
    assert "status patch of team-a/bot failed" in caplog.text
    assert json.loads((tmp_path / "status.json").read_text())["progress"]["step"] == 25


def test_follows_the_workers_progress_log(tmp_path: Path) -> None:
    reporter = Reporter(_config(tmp_path))
    log = ProgressLog(tmp_path / "progress.jsonl")
    reporter.follow(tmp_path / "progress.jsonl", poll_seconds=0.05)
    log.emit("train_begin", step=0, total_steps=10)
    for step in range(1, 4):
        log.emit("log", step=step, loss=3.0 - step)
    reporter.stop_following()  # drains everything written so far
    assert reporter.status()["progress"]["step"] == 3
    assert reporter.status()["metrics"]["trainLoss"] == "0"


def test_metrics_endpoint_serves_finetune_trainer_series(tmp_path: Path) -> None:
    port = free_port()
    reporter = Reporter(_config(tmp_path, metrics_port=port))
    try:
        _events(reporter)
        reporter.transfers(pulled=1000, pushed=10)
        reporter.transfers(pulled=1500, pushed=10)
        reporter.on_event(
            {"event": "step", "step": 25, "worker_bytes_pulled": 0, "worker_bytes_pushed": 90}
        )
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
    finally:
        reporter.finish()
    labels = '{job="bot",namespace="team-a"}'
    expected = {
        "finetune_trainer_step": 25.0,
        "finetune_trainer_total_steps": 100.0,
        "finetune_trainer_loss": 1.2345678,
        "finetune_trainer_learning_rate": 2e-4,
        "finetune_trainer_tokens_total": 5000.0,
        "finetune_trainer_tokens_per_second": 900.5,
        "finetune_trainer_eta_seconds": 30.2,
        "finetune_trainer_bytes_pulled_total": 1500.0,
        "finetune_trainer_bytes_pushed_total": 100.0,  # launch 10 + checkpoint uploads 90
        "finetune_trainer_restarts_total": 2.0,  # attempt 3
    }
    values = {}
    for line in body.splitlines():
        if line.startswith("finetune_trainer_") and labels in line:
            name, value = line.split(labels)
            values[name] = float(value)
    for name, value in expected.items():
        assert values.get(name) == pytest.approx(value), name
    assert "finetune_trainer_mfu_ratio" in body and "finetune_trainer_gpu_memory_bytes" in body


def test_termination_summary_stays_under_4kib_and_keeps_the_error(tmp_path: Path) -> None:
    reporter = Reporter(_config(tmp_path))
    reporter.lineage(
        datasetETags=[{"uri": f"s3://data/{i:04d}.jsonl", "etag": "x" * 32} for i in range(200)]
    )
    problems = [f"train.jsonl:{i}: missing field 'text'" for i in range(1, 500)]
    reporter.finish(
        error={"reason": "DataValidationFailed", "message": "499 problems", "problems": problems}
    )
    raw = (tmp_path / "termination-log").read_bytes()
    assert len(raw) < MAX_TERMINATION_BYTES
    doc = json.loads(raw)
    assert doc["error"]["reason"] == "DataValidationFailed"
    kept = doc["error"]["problems"]
    assert kept and kept == problems[: len(kept)]  # the first problems, in order
    assert doc["error"]["problemCount"] == len(problems)


def test_reporter_of_other_nodes_reports_nothing(tmp_path: Path) -> None:
    reporter = Reporter(_config(tmp_path), enabled=False)
    reporter.stage("training")
    _events(reporter)
    reporter.finish()
    assert not (tmp_path / "status.json").exists()


def test_peak_flops_known_devices() -> None:
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == pytest.approx(989e12)
    assert peak_flops_for("Some CPU") is None
