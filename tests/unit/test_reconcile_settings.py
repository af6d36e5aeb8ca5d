"""Operator settings from flags and environment, the metrics table, and the condition helpers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import from_args
from finetune_operator.status import desired_conditions, merge_conditions, parse_time
from prometheus_client import CollectorRegistry, generate_latest


def test_flags_override_environment() -> None:
    env = {
        "FINETUNE_OPERATOR_TIMER_INTERVAL": "3",
        "FINETUNE_OPERATOR_NAMESPACE": "a,b",
        "FINETUNE_OPERATOR_METRICS_PORT": "9100",
    }
    s = from_args([], env)
    assert s.timer_interval == 3 and s.namespaces == ("a", "b") and s.metrics_port == 9100
    s = from_args(["--timer-interval", "0.5", "-n", "c", "--namespace=d,e"], env)
    assert s.timer_interval == 0.5 and s.namespaces == ("c", "d", "e")
    assert from_args([], {}).namespaces == ()  # all namespaces
    assert from_args(["--peering", "p", "--standalone"], {}).peering == ""
    assert from_args(["--restart-backoff", "2"], {}).reconcile.restart_backoff_seconds == 2


def test_bad_flag_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        from_args(["--timer-interval", "0"], {})
    assert "--timer-interval must be > 0" in capsys.readouterr().err


def test_jobs_gauge_counts_by_namespace_and_phase() -> None:
    reg = CollectorRegistry()
    m = OperatorMetrics(reg)
    m.set_phase("u1", "ns", "Training")
    m.set_phase("u2", "ns", "Training")
    m.set_phase("u1", "ns", "Succeeded")
    text = generate_latest(reg).decode()
    assert 'finetune_operator_jobs{namespace="ns",phase="Training"} 1.0' in text
    assert 'finetune_operator_jobs{namespace="ns",phase="Succeeded"} 1.0' in text
    m.forget("u2")
    text = generate_latest(reg).decode()
    assert 'finetune_operator_jobs{namespace="ns",phase="Training"} 0.0' in text


def test_conditions_keep_transition_time_and_follow_kstatus() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    d = desired_conditions(
        phase="Training",
        reason="Training",
        message="m",
        stage="training",
        evaluation=None,
        serving_enabled=False,
    )
    c1 = merge_conditions([], d, now=t0, generation=2)
    c2 = merge_conditions(c1, d, now=t0 + timedelta(seconds=9), generation=2)
    assert c1 == c2
    by = {c["type"]: c for c in c2}
    assert by["Reconciling"]["status"] == "True" and by["Ready"]["status"] == "False"
    assert by["Deployed"]["reason"] == "ServingDisabled"
    f = desired_conditions(
        phase="Failed",
        reason="Unschedulable",
        message="x",
        stage=None,
        evaluation=None,
        serving_enabled=False,
        existing=c2,
    )
    c3 = {
        c["type"]: c for c in merge_conditions(c2, f, now=t0 + timedelta(seconds=20), generation=2)
    }
    assert c3["Stalled"]["status"] == "True" and c3["Stalled"]["reason"] == "Unschedulable"
    assert c3["DataValidated"]["status"] == "True"  # sticky once validated
    assert c3["Reconciling"]["lastTransitionTime"] == "2026-01-01T00:00:20Z"


def test_parse_time_accepts_fractions_and_rejects_garbage() -> None:
    assert parse_time("2026-01-01T00:00:00.123456Z") is not None
    assert parse_time("yesterday") is None and parse_time(None) is None
