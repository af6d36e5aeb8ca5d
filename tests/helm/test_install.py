"""The chart on the real control plane: install, RBAC matrix, the operator under the chart's identity
and arguments reconciling a job, upgrade, namespaced mode, uninstall.

Why it exists: rendering proves the YAML; this proves the objects are accepted by a real
kube-apiserver, that the ServiceAccount the chart creates can do exactly what the operator does
(and nothing more, checked with `kubectl auth can-i --as`), and that `finetune operator` started
with the Deployment's own args and that ServiceAccount's token reconciles a FineTuneJob without a
single Forbidden. kwok's fake nodes cannot run containers, so the operator runs as a local process
and the `helm test` hook's command is run here against that process's /metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import CHART, REPO
from tests.support.controlplane import wait_for

pytestmark = pytest.mark.cluster

RELEASE = "ft"
SA = "ft-finetune-operator"


def rbac_denials(log: str) -> list[str]:
    """Log lines where the API server refused the operator's identity by RBAC.

    Its message is always `<resource> is forbidden: User "<identity>" cannot <verb> ...`. Other
    403s are not RBAC: e.g. writes into a namespace another tier's test is deleting
    (`NamespaceTerminating`), which a cluster-wide operator on the shared control plane sees.
    """
    return [ln for ln in log.splitlines() if 'is forbidden: User "' in ln]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Release:
    """One helm release of the chart in its own namespace, driven by the real helm binary."""

    def __init__(self, helm: Any, cp: Any, namespace: str, tmp: Path) -> None:
        self.helm, self.cp, self.ns, self.tmp = helm, cp, namespace, tmp
        self.metrics_port, self.liveness_port = _free_port(), _free_port()

    def values(self, **extra: Any) -> Path:
        values: dict[str, Any] = {
            "operator": {
                "metricsPort": self.metrics_port,
                "livenessPort": self.liveness_port,
                "extraArgs": ["--timer-interval=1"],
            },
        }
        for key, val in extra.items():
            values[key] = {**values.get(key, {}), **val}
        path = self.tmp / f"values-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(values))
        return path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.helm(*args, "--namespace", self.ns, env={"KUBECONFIG": self.cp.kubeconfig})
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def install_or_upgrade(self, verb: str, **values: Any) -> None:
        args = [
            verb,
            RELEASE,
            str(CHART),
            "-f",
            str(self.values(**values)),
            "--wait",
            "--timeout",
            "120s",
        ]
        if verb == "install":
            args.append("--create-namespace")
        self.run(*args)

    def manifest(self) -> list[dict[str, Any]]:
        out = self.run("get", "manifest", RELEASE).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def deployment_args(self) -> list[str]:
        (deploy,) = [o for o in self.manifest() if o["kind"] == "Deployment"]
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        return list(container["args"])

    def can_i(self, verb: str, resource: str, namespace: str | None) -> bool:
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        # kubectl reads "a/b" as resource a named b: subresources go through --subresource.
        resource, _, sub = resource.partition("/")
        where += [f"--subresource={sub}"] if sub else []
        proc = self.cp.kubectl(
            "auth", "can-i", verb, resource, *where,
            f"--as=system:serviceaccount:{self.ns}:{SA}", check=False,
        )  # fmt: skip
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), proc.stdout + proc.stderr
        return answer == "yes"

    def sa_kubeconfig(self) -> Path:
        """A kubeconfig with the chart's ServiceAccount token (what the pod would mount)."""
        token = self.cp.kubectl(
            "create", "token", SA, "-n", self.ns, "--duration=1h"
        ).stdout.strip()
        admin = json.loads(
            self.cp.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
        )
        cluster = admin["clusters"][0]["cluster"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
            "current-context": "sa",
        }
        path = self.tmp / "sa-kubeconfig"
        path.write_text(json.dumps(config))
        return path


@pytest.fixture
def release(helm: Any, control_plane: Any, crd_installed: str, tmp_path: Path) -> Iterator[Release]:
    ns = f"ftop-{os.getpid() % 10000}-{time.monotonic_ns() % 100000}"
    rel = Release(helm, control_plane, ns, tmp_path)
    yield rel
    helm(
        "uninstall",
        RELEASE,
        "--namespace",
        ns,
        "--wait",
        env={"KUBECONFIG": control_plane.kubeconfig},
    )
    control_plane.kubectl(
        "delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False
    )


class LocalOperator:
    """`finetune <deployment args>` as a local process with the ServiceAccount's kubeconfig."""

    def __init__(self, args: list[str], kubeconfig: Path, log: Path) -> None:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")])
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finetune_operator.cli", *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny-llama/"},
            "datasets": [
                {"name": "chat", "uri": "s3://datasets/chat/train.jsonl", "format": "chat"}
            ],
            "output": {"uri": "s3://artifacts/team-a/bot/"},
            "distributed": {"nodes": 1, "gpusPerNode": 1},
            "storage": {"endpoint": "http://s3.example:9000", "credentialsSecret": "s3-creds"},
        },
    }


# What the operator does (kube.py + Kopf), per watched namespace: all must be "yes".
NEEDED = [
    ("get", "finetunejobs.finetune.dev"), ("list", "finetunejobs.finetune.dev"),
    ("watch", "finetunejobs.finetune.dev"), ("patch", "finetunejobs.finetune.dev"),
    ("delete", "finetunejobs.finetune.dev"), ("patch", "finetunejobs.finetune.dev/status"),
    ("create", "events"), ("get", "configmaps"), ("create", "configmaps"), ("delete", "configmaps"),
    ("create", "services"), ("create", "serviceaccounts"), ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"), ("create", "jobs.batch"),
    ("delete", "jobs.batch"), ("list", "pods"), ("delete", "pods"), ("create", "deployments.apps"),
    ("get", "finetunejobs.finetune.dev/status"), ("update", "finetunejobs.finetune.dev/finalizers"),
]  # fmt: skip
# What it must never have.
FORBIDDEN = [
    ("get", "secrets"), ("list", "secrets"), ("create", "pods"), ("create", "pods/exec"),
    ("update", "finetunejobs.finetune.dev"), ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"), ("escalate", "roles.rbac.authorization.k8s.io"),
    ("bind", "roles.rbac.authorization.k8s.io"), ("impersonate", "serviceaccounts"),
    ("delete", "namespaces"), ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("get", "nodes"), ("create", "persistentvolumes"), ("create", "serviceaccounts/token"),
    ("update", "finetunejobs.finetune.dev/status"), ("get", "pods/log"), ("patch", "pods"),
]  # fmt: skip


def test_install_rbac_operator_upgrade_uninstall(release: Release, namespace: str) -> None:
    cp, jobs_ns = release.cp, namespace
    # --- install (cluster-wide mode, defaults): every object accepted, the Deployment available
    # (kwok runs its pod on a fake node).
    release.install_or_upgrade("install")
    status = json.loads(release.run("status", RELEASE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    notes = release.run("get", "notes", RELEASE).stdout
    assert "every namespace" in notes and f"helm test {RELEASE}" in notes

    # --- RBAC matrix in a namespace the release never named, and cluster-wide.
    for verb, resource in NEEDED:
        assert release.can_i(verb, resource, jobs_ns), f"missing: {verb} {resource}"
    for verb, resource in FORBIDDEN:
        assert not release.can_i(verb, resource, jobs_ns), f"too much: {verb} {resource}"
        assert not release.can_i(verb, resource, None), f"too much cluster-wide: {verb} {resource}"
    assert release.can_i("watch", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert not release.can_i("list", "namespaces", None), "cluster-wide mode never lists namespaces"

    # --- the operator with the Deployment's own args and the ServiceAccount's token.
    args = release.deployment_args()
    assert args[0] == "operator" and f"--metrics-port={release.metrics_port}" in args
    cp.kubectl(
        "create", "secret", "generic", "s3-creds", "-n", jobs_ns,
        "--from-literal=AWS_ACCESS_KEY_ID=test", "--from-literal=AWS_SECRET_ACCESS_KEY=test",
    )  # fmt: skip
    op = LocalOperator(args, release.sa_kubeconfig(), release.tmp / "operator.log")
    try:
        cp.kubectl("apply", "-n", jobs_ns, "-f", "-", input=json.dumps(_job("bot")))

        def reconciled() -> bool:
            got = cp.kubectl("get", "ftj", "bot", "-n", jobs_ns, "-o", "json", check=False)
            phase = (
                json.loads(got.stdout).get("status", {}).get("phase")
                if got.returncode == 0
                else None
            )
            children = cp.kubectl("get", "job/bot-train", "configmap/bot-config", "role/bot-trainer",
                                  "rolebinding/bot-trainer", "-n", jobs_ns, check=False)  # fmt: skip
            return phase in ("Pending", "Initializing") and children.returncode == 0

        wait_for(
            reconciled, timeout=90, message=f"operator reconciled bot; log:\n{op.text()[-3000:]}"
        )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{release.liveness_port}/healthz", timeout=5
        ) as r:
            assert r.status == 200
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{release.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert f'finetune_operator_jobs{{namespace="{jobs_ns}",phase=' in metrics

        # The `helm test` hook's own command, pointed at this process instead of the Service DNS.
        hooks = [d for d in yaml.safe_load_all(release.run("get", "hooks", RELEASE).stdout) if d]
        (test_pod,) = [h for h in hooks if h["metadata"]["annotations"]["helm.sh/hook"] == "test"]
        command = test_pod["spec"]["containers"][0]["args"][0]
        url = f"http://{SA}-metrics.{release.ns}.svc:8080/metrics"
        assert url in command
        if shutil.which("wget"):
            local = command.replace(url, f"http://127.0.0.1:{release.metrics_port}/metrics")
            assert subprocess.run(["sh", "-c", local], timeout=30).returncode == 0, local
        time.sleep(2)  # a few timer ticks under the ServiceAccount's identity
        forbidden = rbac_denials(op.text())
        assert not forbidden, "\n".join(forbidden[:20])
    finally:
        op.stop()

    # --- upgrade: readSecrets turns on exactly `get secrets`, nothing else.
    release.install_or_upgrade("upgrade", rbac={"readSecrets": True})
    assert json.loads(release.run("status", RELEASE, "-o", "json").stdout)["version"] == 2
    assert release.can_i("get", "secrets", jobs_ns)
    assert not release.can_i("list", "secrets", jobs_ns)

    # --- upgrade to namespaced mode: rights only in the watched namespace.
    release.install_or_upgrade("upgrade", operator={"watchNamespaces": [jobs_ns]})
    assert release.can_i("create", "jobs.batch", jobs_ns)
    assert not release.can_i("create", "jobs.batch", "default")
    assert not release.can_i("get", "finetunejobs.finetune.dev", "kube-system")
    assert not release.can_i("get", "secrets", jobs_ns), "readSecrets is back to its default"
    assert release.can_i("list", "namespaces", None), "kopf follows namespaces in namespaced mode"
    assert f"--namespace={jobs_ns}" in release.deployment_args()

    # --- uninstall: the release's objects are gone, the CRD (and the user's jobs) stay.
    release.run("uninstall", RELEASE, "--wait")
    assert cp.kubectl("get", "clusterrole", f"{SA}-discovery", check=False).returncode != 0
    assert cp.kubectl("get", "deployment", SA, "-n", release.ns, check=False).returncode != 0
    assert cp.kubectl("get", "role", SA, "-n", jobs_ns, check=False).returncode != 0
    assert cp.kubectl("get", "crd", "finetunejobs.finetune.dev", check=False).returncode == 0
    assert cp.kubectl("get", "ftj", "bot", "-n", jobs_ns, check=False).returncode == 0


def test_ha_peering_install(release: Release) -> None:
    """ha.enabled: the kopf.dev CRDs and the ClusterKopfPeering hook are installed, and the operator
    (rendered args, ServiceAccount token) publishes its keep-alive in the peering object."""
    cp = release.cp
    release.install_or_upgrade("install", ha={"enabled": True, "peeringName": release.ns})
    peering = cp.kubectl("get", "clusterkopfpeering", release.ns, "-o", "json", check=False)
    assert peering.returncode == 0, peering.stderr
    args = release.deployment_args()
    assert f"--peering={release.ns}" in args and "--standalone" not in args
    assert release.can_i("patch", "clusterkopfpeerings.kopf.dev", None)
    op = LocalOperator(args, release.sa_kubeconfig(), release.tmp / "operator-ha.log")
    try:

        def keepalive() -> bool:
            doc = json.loads(
                cp.kubectl("get", "clusterkopfpeering", release.ns, "-o", "json").stdout
            )
            return bool(doc.get("status"))

        wait_for(
            keepalive, timeout=60, message=f"keep-alive in the peering; log:\n{op.text()[-3000:]}"
        )
        # The sweep reads the ClusterKopfPeering itself (ha.PeeringGate) with the SA's rights.
        wait_for(
            lambda: "sweep: active in peering" in op.text(),
            timeout=60,
            message=f"the only replica's sweep active; log:\n{op.text()[-3000:]}",
        )
        forbidden = rbac_denials(op.text())
        assert not forbidden, "\n".join(forbidden[:20])
    finally:
        op.stop()
    release.run("uninstall", RELEASE, "--wait")
    # The peering CRDs are kept (helm.sh/resource-policy: keep): other Kopf operators may use them.
    assert cp.kubectl("get", "crd", "clusterkopfpeerings.kopf.dev", check=False).returncode == 0
    cp.kubectl("delete", "clusterkopfpeering", release.ns, "--ignore-not-found", check=False)
