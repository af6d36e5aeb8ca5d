"""HA settings and the sweep's peering verdict: priorities per replica, Kopf's rule, the gate.

Why it exists: replicas that share a Kopf priority pause each other, so the derived priority must
be stable per replica and distinct across replicas; and the sweep thread must stand by exactly
when Kopf pauses the replica, which ha.verdict re-implements from Kopf's peering rule.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from finetune_operator.ha import PeeringGate, verdict
from finetune_operator.handlers import Sweeper
from finetune_operator.settings import (
    DERIVED_PRIORITY_MAX,
    derive_priority,
    from_args,
    replica_name,
)
from kubernetes.client.exceptions import ApiException

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def peer(priority: int, seen_ago: float = 1.0, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(),
    }


# ------------------------------------------------------------------------- priorities


def test_derived_priority_is_stable_across_processes_and_in_range() -> None:
    name = "finetune-operator-7d9c8b6f5-x2x4k"
    code = (
        f"from finetune_operator.settings import derive_priority; print(derive_priority({name!r}))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert int(other) == derive_priority(name)
    assert 1 <= derive_priority(name) <= DERIVED_PRIORITY_MAX


def test_derived_priorities_of_sibling_pods_differ() -> None:
    names = [f"finetune-operator-7d9c8b6f5-{s}" for s in ("x2x4k", "q8mzt", "bb7r2", "l9p0c")]
    prios = {derive_priority(n) for n in names}
    assert len(prios) == len(names)
    assert all(1 <= p <= DERIVED_PRIORITY_MAX for p in prios)
    # spread over the range, not clustered at one end
    spread = [derive_priority(f"pod-{i}") for i in range(2000)]
    assert min(spread) < DERIVED_PRIORITY_MAX // 10 and max(spread) > DERIVED_PRIORITY_MAX * 9 // 10


def test_peering_derives_priority_and_identity_from_pod_name() -> None:
    s = from_args(["--peering", "ft"], {"POD_NAME": "op-abc"})
    assert s.peering == "ft" and s.identity == "op-abc"
    assert s.priority == derive_priority("op-abc")
    t = from_args(["--peering", "ft"], {"POD_NAME": "op-def"})
    assert t.priority != s.priority


def test_without_pod_name_the_replica_is_host_and_pid() -> None:
    name = replica_name({})
    assert name.endswith(f"-{os.getpid()}")
    s = from_args([], {"FINETUNE_OPERATOR_PEERING": "ft"})
    assert s.identity == name and s.priority == derive_priority(name)


def test_explicit_priority_flag_and_env() -> None:
    env = {"POD_NAME": "op-abc", "FINETUNE_OPERATOR_PRIORITY": "500"}
    assert from_args(["--peering", "ft"], env).priority == 500
    assert from_args(["--peering", "ft", "--priority", "900"], env).priority == 900  # flag wins
    assert from_args(["--peering", "ft", "--priority", "0"], {}).priority == 0


def test_standalone_has_no_priority_or_identity() -> None:
    s = from_args(["--priority", "5"], {"POD_NAME": "op"})
    assert (s.peering, s.priority, s.identity) == ("", 0, "")
    s = from_args(["--peering", "ft", "--standalone"], {"POD_NAME": "op"})
    assert (s.peering, s.priority, s.identity) == ("", 0, "")


def test_peering_lifetime_flag_env_and_default() -> None:
    assert from_args([], {}).peering_lifetime == 60
    assert from_args([], {"FINETUNE_OPERATOR_PEERING_LIFETIME": "15"}).peering_lifetime == 15
    assert from_args(["--peering-lifetime", "8"], {}).peering_lifetime == 8


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--priority", "high"], {}, "--priority"),
        (["--peering-lifetime", "0"], {}, "--peering-lifetime must be >= 1"),
        ([], {"FINETUNE_OPERATOR_PRIORITY": "high"}, "FINETUNE_OPERATOR_PRIORITY='high'"),
    ],
)
def test_bad_ha_settings_name_the_flag(
    argv: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        from_args(argv, env)
    assert needle in capsys.readouterr().err + str(exc.value.code)


# ------------------------------------------------------------------------- Kopf's rule


def test_highest_live_priority_is_active() -> None:
    peers = {"a": peer(200), "b": peer(100)}
    assert verdict(peers, "a", 200, NOW).active
    v = verdict(peers, "b", 100, NOW)
    assert not v.active and "a (priority 200 > 100)" in v.reason


def test_dead_higher_peer_no_longer_blocks() -> None:
    peers = {"a": peer(200, seen_ago=61, lifetime=60), "b": peer(100)}
    assert verdict(peers, "b", 100, NOW).active
    peers["a"] = peer(200, seen_ago=59, lifetime=60)
    assert not verdict(peers, "b", 100, NOW).active


def test_same_priority_pauses_both_like_kopf() -> None:
    peers = {"a": peer(7), "b": peer(7)}
    assert not verdict(peers, "a", 7, NOW).active
    assert "same priority" in verdict(peers, "b", 7, NOW).reason


def test_not_yet_announced_stands_by() -> None:
    assert not verdict({"a": peer(1)}, "b", 500, NOW).active
    assert not verdict({}, "b", 500, NOW).active
    assert verdict({"b": peer(500)}, "b", 500, NOW).active


# ------------------------------------------------------------------------- the gate


class FakeCustom:
    """Stands in for CustomObjectsApi only to serve a peering body or an API error."""

    def __init__(self, bodies: dict[str, Any]) -> None:
        self.bodies = bodies
        self.calls: list[tuple[str, ...]] = []

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str,
                                  **_: Any) -> Any:  # fmt: skip
        self.calls.append((group, plural, name))
        return self._body("", name)

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str,
                                     name: str, **_: Any) -> Any:  # fmt: skip
        self.calls.append((group, ns, plural, name))
        return self._body(ns, name)

    def _body(self, ns: str, name: str) -> Any:
        b = self.bodies.get(ns)
        if b is None:
            raise ApiException(status=404, reason="Not Found")
        return b


def test_gate_reads_the_cluster_peering_and_logs_transitions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = from_args(["--peering", "ft", "--priority", "100"], {"POD_NAME": "b"})
    api = FakeCustom({"": {"status": {"a": peer(200), "b": peer(100)}}})
    gate = PeeringGate(api, s, clock=lambda: NOW)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="finetune_operator"):
        assert not gate()
        assert not gate()
        api.bodies[""] = {"status": {"a": peer(200, seen_ago=120), "b": peer(100)}}
        assert gate()
    assert api.calls[0] == ("kopf.dev", "clusterkopfpeerings", "ft")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and "standing by" in msgs[0] and "active" in msgs[1]


def test_gate_namespaced_needs_every_namespace_and_stands_by_on_errors() -> None:
    s = from_args(["--peering", "ft", "--priority", "9", "-n", "x,y"], {"POD_NAME": "me"})
    api = FakeCustom({"x": {"status": {"me": peer(9)}}})
    gate = PeeringGate(api, s, clock=lambda: NOW)  # type: ignore[arg-type]
    assert not gate()  # y's peering object is missing: never risk two workers
    api.bodies["y"] = {"status": {"me": peer(9), "other": peer(10)}}
    assert not gate()
    api.bodies["y"] = {"status": {"me": peer(9), "other": peer(3)}}
    assert gate()
    assert {c[1] for c in api.calls} == {"x", "y"}


def test_standalone_gate_is_always_active() -> None:
    gate = PeeringGate(None, from_args([], {}))
    assert gate()


def test_sweeper_skips_rounds_while_standing_by() -> None:
    listed: list[int] = []

    class Kube:
        def list_jobs(self, namespaces: Any) -> list[Any]:
            listed.append(1)
            return []

    class Rec:
        kube = Kube()
        settings = from_args(["--timer-interval", "0.01"], {})

    state = {"active": False}
    sweeper = Sweeper(Rec(), active=lambda: state["active"])  # type: ignore[arg-type]
    sweeper.start()
    try:
        time.sleep(0.2)
        assert listed == []
        state["active"] = True
        deadline = time.monotonic() + 5
        while not listed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listed
    finally:
        sweeper.stop()
