"""The chart's HA mode rendered by the real helm binary, fed to the real ``finetune operator`` parser.

Why it exists: several replicas only work if every pod gets its own Kopf priority; the chart
passes no --priority, so each pod must derive one from POD_NAME. These tests tie the rendered
Deployment (replicas, rollout strategy, env, args) to what ``settings.from_args`` makes of it.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.settings import derive_priority, from_args

from tests.helm.conftest import one

HA = {"replicaCount": 3, "ha": {"enabled": True, "peeringName": "ft-peers", "peeringLifetime": 30}}


def _deployment(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deploy = one(objs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return deploy, container


def test_ha_replicas_render_without_extra_args(render) -> None:
    deploy, container = _deployment(render(HA))
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert "--peering=ft-peers" in container["args"]
    assert not [a for a in container["args"] if a.startswith("--priority")]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["FINETUNE_OPERATOR_PEERING_LIFETIME"]["value"] == "30"


def test_each_rendered_pod_derives_its_own_priority(render) -> None:
    _, container = _deployment(render(HA))
    args = container["args"]
    assert args[0] == "operator"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    pods = ["ft-finetune-operator-6f7c9d5b8-x2x4k", "ft-finetune-operator-6f7c9d5b8-q8mzt"]
    settings = [from_args(args[1:], {**env, "POD_NAME": p}) for p in pods]
    assert [s.identity for s in settings] == pods
    assert [s.priority for s in settings] == [derive_priority(p) for p in pods]
    assert settings[0].priority != settings[1].priority
    assert {s.peering for s in settings} == {"ft-peers"}
    assert {s.peering_lifetime for s in settings} == {30}


def test_single_replica_without_ha_keeps_recreate(render) -> None:
    deploy, container = _deployment(render())
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in container["args"]
    assert "FINETUNE_OPERATOR_PEERING_LIFETIME" not in {e["name"] for e in container["env"]}
    assert from_args(container["args"][1:], {"POD_NAME": "x"}).priority == 0
