"""The chart rendered offline by the real helm binary: lint, defaults, every option, bad values.

Why it exists: the chart is what platform teams install; these tests pin its security posture
(non-root, read-only root, least-privilege RBAC), its gated extras, and that the copies it ships
(CRDs, dashboard) never drift from their sources.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import CHART, KUBE_VERSION, REPO, RenderError, by_kind, one

FULL_VALUES = yaml.safe_load((Path(__file__).parent / "values-full.yaml").read_text())
WORKLOAD_KINDS = {
    "configmaps",
    "services",
    "serviceaccounts",
    "pods",
    "jobs",
    "deployments",
    "roles",
    "rolebindings",
}


def test_lint_strict_default_and_full(helm) -> None:
    for extra in ([], ["-f", str(Path(__file__).parent / "values-full.yaml")]):
        proc = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout


def test_default_render_objects(render) -> None:
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "Pod",
        ]
    )
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "ft"
        assert labels["app.kubernetes.io/name"] == "finetune-operator"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "helm.sh/chart" in labels


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_security_probes_resources(render) -> None:
    objs = render()
    deploy = one(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = _container(objs)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["args"] == [
        "operator",
        "--metrics-port=8080",
        "--liveness-port=8081",
        "--standalone",
    ]
    assert container["image"] == "ghcr.io/finetune-dev/finetune-operator:0.1.0"
    assert deploy["spec"]["replicas"] == 1
    svc = one(objs, "Service")
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def _rules(role: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_rbac_has_no_wildcards_and_no_escalation(render, values) -> None:
    objs = render(values)
    roles = by_kind(objs, "ClusterRole") + by_kind(objs, "Role")
    assert roles
    for role in roles:
        for group, resource, verb in _rules(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
            assert verb not in {"escalate", "bind", "impersonate"}
            assert resource not in {"clusterroles", "clusterrolebindings", "nodes"}
            if resource == "secrets":
                assert verb == "get"


def test_cluster_mode_rbac(render) -> None:
    objs = render()
    roles = {r["metadata"]["name"]: r for r in by_kind(objs, "ClusterRole")}
    assert set(roles) == {"ft-finetune-operator", "ft-finetune-operator-discovery"}
    workload = _rules(roles["ft-finetune-operator"])
    assert ("finetune.dev", "finetunejobs/status", "patch") in workload
    assert ("batch", "jobs", "create") in workload
    assert not [r for r in workload if r[1] == "secrets"], "secrets must need rbac.readSecrets"
    assert ("", "pods", "create") not in workload, "pods are created by the Job controller"
    discovery = _rules(roles["ft-finetune-operator-discovery"])
    assert {r[2] for r in discovery} <= {"list", "watch"}
    assert not by_kind(objs, "Role")


def test_namespaced_mode_rbac(render) -> None:
    objs = render(
        {"operator": {"watchNamespaces": ["team-a", "team-b"]}, "rbac": {"readSecrets": True}}
    )
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert ("", "secrets", "get") in _rules(roles[0])
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": "ft-finetune-operator",
                "namespace": "finetune-system",
            }
        ]
    # No cluster-wide access to workloads in namespaced mode: only the discovery ClusterRole.
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert not {r[1] for r in _rules(cluster_role)} & WORKLOAD_KINDS
    args = _container(objs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_full_values_render_every_option(render) -> None:
    objs = render(FULL_VALUES)
    kinds = {o["kind"] for o in objs}
    assert {
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "KopfPeering",
        "CustomResourceDefinition",
    } <= kinds
    container = _container(objs)
    assert container["image"].endswith("@" + FULL_VALUES["image"]["digest"])
    assert "--peering=ft-peering" in container["args"] and "--standalone" not in container["args"]
    assert "--verbose" in container["args"] and "--timer-interval=30" in container["args"]
    assert one(objs, "Deployment")["spec"]["replicas"] == 1
    peerings = by_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert all(
        p["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
        for p in peerings
    )
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert one(objs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_monitor = one(objs, "PodMonitor")["spec"]
    assert pod_monitor["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert pod_monitor["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "finetune-operator"
    }
    assert pod_monitor["podMetricsEndpoints"][0]["honorLabels"] is True
    rules = {r["alert"]: r for r in one(objs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert set(rules) == {
        "FineTuneJobFailed",
        "FineTuneJobStalled",
        "FineTuneOperatorDown",
        "FineTuneOperatorReconcileErrors",
    }
    assert "[20m]" in rules["FineTuneJobStalled"]["expr"]
    assert (
        rules["FineTuneOperatorDown"]["expr"]
        == 'absent(up{job="ft-finetune-operator-metrics"} == 1)'
    )
    assert rules["FineTuneJobFailed"]["labels"] == {"severity": "critical", "team": "ml"}
    dashboard_cm = one(objs, "ConfigMap")
    assert dashboard_cm["metadata"]["namespace"] == "monitoring"
    assert dashboard_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard_cm["metadata"]["annotations"]["grafana_folder"] == "ML"
    shipped = json.loads(dashboard_cm["data"]["finetune-operator.json"])
    assert shipped == json.loads((REPO / "dashboards" / "finetune-operator.json").read_text())


def test_helm_test_hook_pod(render) -> None:
    pod = one(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        "ft-finetune-operator-metrics.finetune-system.svc:8080/metrics"
        in pod["spec"]["containers"][0]["args"][0]
    )
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert not [o for o in render({"tests": {"enabled": False}}) if o["kind"] == "Pod"]


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"operator": {"logLevel": "loud"}}, "logLevel"),
        ({"image": {"repository": "x", "digest": "latest"}}, "digest"),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "watchNamespaces"),
        ({"operator": {"metricsPort": 70000}}, "metricsPort"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"unknownKey": 1}, "unknownKey"),
        ({"monitoring": {"prometheusRule": {"reconcileErrorRate": "lots"}}}, "reconcileErrorRate"),
        ({"monitoring": {"prometheusRule": {"stalledFor": "30 minutes"}}}, "stalledFor"),
        ({"replicaCount": 3}, "ha.enabled=true"),
        ({"replicaCount": 2, "ha": {"enabled": True, "peeringLifetime": 5}}, "peeringLifetime"),
    ],
)
def test_bad_values_are_refused_naming_the_field(render, values, needle) -> None:
    with pytest.raises(RenderError) as err:
        render(values)
    assert needle in str(err.value)


def test_chart_crds_identical_to_top_level() -> None:
    top = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    if not top:
        pytest.fail("crds/ is empty: run `python -m finetune_operator.crdgen --write`")
    assert chart == top, "helm/finetune-operator/crds/ must hold exactly the files of crds/"
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"helm/finetune-operator/crds/{name} differs from crds/{name}: run "
            "`python -m finetune_operator.crdgen --write`"
        )


def test_chart_dashboard_copy_is_current() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(REPO / "dashboards" / "build.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_pod_monitor_selects_and_scrapes_the_pods_the_operator_builds(render) -> None:
    """The operator's own builders make a training Job and an inference pod; the PodMonitor's
    selector must match both pods' labels and its endpoints name a port of each."""
    from finetune_operator.api import FineTuneJobSpec
    from finetune_operator.resources import JobIdentity, build_train_job
    from finetune_operator.serving_manifests import build_pod_template

    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"uri": "s3://models/m/"},
            "datasets": [{"name": "d", "uri": "s3://data/d.jsonl", "format": "chat"}],
            "output": {"uri": "s3://artifacts/bot/"},
            "serving": {"enabled": True, "endpoint": "bot"},
        }
    )
    ident = JobIdentity(name="bot", namespace="team-a", uid="0123456789abcdef")
    pods = {
        "trainer": build_train_job(ident, spec, attempt=1)["spec"]["template"],
        "inference": build_pod_template(ident, spec, "s3://artifacts/bot/runs/bot-01234567/"),
    }
    monitor = one(render(FULL_VALUES), "PodMonitor")["spec"]
    (expr,) = monitor["selector"]["matchExpressions"]
    endpoint_ports = {e["port"] for e in monitor["podMetricsEndpoints"]}
    for component, pod in pods.items():
        labels = pod["metadata"]["labels"]
        for key, value in monitor["selector"]["matchLabels"].items():
            assert labels.get(key) == value, (component, key)
        assert labels[expr["key"]] in expr["values"], component
        ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert ports & endpoint_ports, (
            f"{component} pods expose {ports}, PodMonitor scrapes {endpoint_ports}"
        )


def test_alert_rules_pass_promtool(render, tmp_path) -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run `bash hack/install-prometheus.sh`")
    groups = one(render(FULL_VALUES), "PrometheusRule")["spec"]["groups"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 rules found" in proc.stdout


# kubernetes-client method stem → (API group, resource) for the kinds the operator touches.
_CLIENT_RESOURCES = {
    "config_map": ("", "configmaps"),
    "service": ("", "services"),
    "service_account": ("", "serviceaccounts"),
    "pod": ("", "pods"),
    "event": ("", "events"),
    "secret": ("", "secrets"),
    "role": ("rbac.authorization.k8s.io", "roles"),
    "role_binding": ("rbac.authorization.k8s.io", "rolebindings"),
    "job": ("batch", "jobs"),
    "deployment": ("apps", "deployments"),
    "custom_object": ("finetune.dev", "finetunejobs"),
}
_VERBS = {"read": "get", "get": "get", "create": "create", "patch": "patch", "delete": "delete", "list": "list",
          "replace": "update"}  # fmt: skip


def test_chart_rbac_covers_every_api_call_of_the_operator(render) -> None:
    """Scan the operator's code for kubernetes-client calls; each needs a rule in the chart, so a
    new call (e.g. by the serving rollout) cannot ship without its RBAC."""
    import re

    calls: set[tuple[str, str, str]] = set()
    pattern = re.compile(
        r"\.(read|get|create|patch|delete|list|replace)_namespaced_([a-z_]+?)(_status)?\b"
    )
    for path in sorted((REPO / "operator" / "finetune_operator").glob("*.py")):
        if path.name.startswith("local"):
            continue  # `finetune run` never talks to a cluster
        for verb, stem, status in pattern.findall(path.read_text()):
            assert stem in _CLIENT_RESOURCES, (
                f"{path.name}: unknown kind {stem}: add it here and to the chart"
            )
            group, resource = _CLIENT_RESOURCES[stem]
            calls.add((group, resource + ("/status" if status else ""), _VERBS[verb]))
    assert ("batch", "jobs", "create") in calls and ("", "pods", "list") in calls
    (role,) = [
        r
        for r in by_kind(render(), "ClusterRole")
        if r["metadata"]["name"] == "ft-finetune-operator"
    ]
    granted = set(_rules(role))
    missing = sorted(calls - granted)
    assert not missing, f"the operator calls these without RBAC in the chart: {missing}"
