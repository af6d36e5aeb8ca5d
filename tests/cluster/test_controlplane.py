"""Prove the test control plane is a real Kubernetes: scheduling, Jobs, GC, RBAC, Deployments.

Why: every other cluster-tier test trusts these fixtures; these tests fail if a controller is
missing, RBAC is off, kwok does not drive pods as documented, or `make cluster` does not clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import (
    REPO,
    ControlPlaneError,
    cp_module,
    set_pod_ready,
    set_pod_result,
    wait_for,
)

pytestmark = pytest.mark.cluster


def get(cp: Any, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def apply(cp: Any, namespace: str, manifest: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def pods(cp: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(get(cp, "pods", "-n", namespace, "-l", selector)["items"])


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def test_indexed_gpu_job_is_scheduled_on_gpu_nodes_and_completes(
    control_plane: Any, namespace: str
) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train"},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "example.invalid/trainer:1",
                            "resources": {
                                "limits": {"nvidia.com/gpu": "8", "cpu": "4", "memory": "16Gi"}
                            },
                        }
                    ],
                }
            },
        },
    }
    apply(control_plane, namespace, job)
    running = wait_for(
        lambda: (
            (
                ps := [
                    p
                    for p in pods(control_plane, namespace, "job-name=train")
                    if p["status"].get("phase") == "Running"
                ]
            )
            and len(ps) == 2
            and ps
        ),
        timeout=60,
        message="both job pods Running",
    )
    nodes = {p["spec"]["nodeName"] for p in running}
    # 8 GPUs each on 8-GPU nodes: the scheduler must place them on two different nodes.
    assert len(nodes) == 2, nodes
    for node in nodes:
        assert get(control_plane, "node", node)["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    indexes = sorted(
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in running
    )
    assert indexes == ["0", "1"]

    for pod in running:
        set_pod_result(control_plane, namespace, pod["metadata"]["name"], 0)
    done = wait_for(
        lambda: (
            (j := get(control_plane, "job", "train", "-n", namespace))
            and condition(j, "Complete") == "True"
            and j
        ),
        timeout=60,
        message="job train Complete",
    )
    assert done["status"]["succeeded"] == 2
    assert done["status"]["completedIndexes"] == "0,1"


def test_pod_driven_to_failed_reports_exit_code_and_message(
    control_plane: Any, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "worker", "labels": {"app": "worker"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "example.invalid/w:1"}],
        },
    }
    apply(control_plane, namespace, pod)
    wait_for(
        lambda: condition(get(control_plane, "pod", "worker", "-n", namespace), "Ready") == "True",
        timeout=60,
        message="pod worker Ready",
    )
    message = 'bad data: row 3 has no \'text\'\n{"hint": "see \\"docs\\""}'
    set_pod_result(control_plane, namespace, "worker", 65, message=message)
    failed = wait_for(
        lambda: (
            (p := get(control_plane, "pod", "worker", "-n", namespace))["status"]["phase"]
            == "Failed"
            and p
        ),
        timeout=30,
        message="pod worker Failed",
    )
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 65
    assert terminated["reason"] == "Error"
    assert terminated["message"] == message


def test_deleting_an_owner_garbage_collects_its_children(
    control_plane: Any, namespace: str
) -> None:
    control_plane.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=a=1")
    owner_uid = get(control_plane, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    for i in range(2):
        child = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"child-{i}",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
                ],
            },
            "data": {"i": str(i)},
        }
        apply(control_plane, namespace, child)
    control_plane.kubectl("create", "configmap", "bystander", "-n", namespace)
    control_plane.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: (
            not [
                c
                for c in get(control_plane, "configmaps", "-n", namespace)["items"]
                if c["metadata"]["name"].startswith("child-")
            ]
        ),
        timeout=60,
        message="garbage collector to delete child-0 and child-1",
    )
    assert (
        get(control_plane, "configmap", "bystander", "-n", namespace)["metadata"]["name"]
        == "bystander"
    )


def test_rbac_answers_can_i_for_a_service_account(control_plane: Any, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cp.kubectl(
        "create", "role", "pod-reader", "-n", namespace, "--verb=get,list,watch", "--resource=pods"
    )
    cp.kubectl("create", "rolebinding", "reader", "-n", namespace, "--role=pod-reader",
               f"--serviceaccount={namespace}:reader")  # fmt: skip
    who = f"--as=system:serviceaccount:{namespace}:reader"

    def can_i(*args: str) -> str:
        return str(cp.kubectl("auth", "can-i", *args, who, check=False).stdout.strip())

    assert wait_for(
        lambda: can_i("list", "pods", "-n", namespace) == "yes", timeout=10, message="RBAC grant"
    )
    assert can_i("delete", "pods", "-n", namespace) == "no"
    assert can_i("list", "secrets", "-n", namespace) == "no"
    assert can_i("list", "pods", "-n", "kube-system") == "no"

    # TokenRequest works and the issued token authenticates as that service account.
    token = cp.kubectl(
        "create", "token", "reader", "-n", namespace, "--duration=10m"
    ).stdout.strip()
    as_token = [str(cp.tools_dir / "kubectl"), "--server", cp.server, "--token", token,
                "--certificate-authority", str(cp.state_dir / "pki" / "ca.crt")]  # fmt: skip
    listed = subprocess.run(
        [*as_token, "get", "pods", "-n", namespace], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    denied = subprocess.run(
        [*as_token, "get", "secrets", "-n", namespace], capture_output=True, text=True, timeout=30
    )
    assert denied.returncode != 0
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr


def test_deployment_becomes_available_and_follows_pod_readiness(
    control_plane: Any, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl(
        "create",
        "deployment",
        "server",
        "-n",
        namespace,
        "--image=example.invalid/serve:1",
        "--replicas=2",
    )
    wait_for(
        lambda: (
            (d := get(cp, "deployment", "server", "-n", namespace))["status"].get(
                "availableReplicas"
            )
            == 2
            and condition(d, "Available") == "True"
        ),
        timeout=60,
        message="deployment server Available with 2 replicas",
    )
    victim = pods(cp, namespace, "app=server")[0]["metadata"]["name"]
    set_pod_ready(cp, namespace, victim, False)
    wait_for(
        lambda: (
            get(cp, "deployment", "server", "-n", namespace)["status"].get("readyReplicas") == 1
        ),
        timeout=30,
        message="readyReplicas to drop to 1 after marking a pod not ready",
    )
    pod = get(cp, "pod", victim, "-n", namespace)
    assert pod["status"]["phase"] == "Running"
    assert condition(pod, "Ready") == "False"
    set_pod_ready(cp, namespace, victim, True)
    wait_for(
        lambda: (
            get(cp, "deployment", "server", "-n", namespace)["status"].get("readyReplicas") == 2
        ),
        timeout=30,
        message="readyReplicas back to 2",
    )


def test_start_names_missing_tools(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match=r"kube-apiserver.*make tools"):
        cp_module.start(tmp_path)


def test_make_cluster_prints_kubeconfig_and_stops_cleanly_on_sigterm(
    control_plane: Any, tmp_path: Path
) -> None:
    """hack/cluster.py (what `make cluster` runs): ready line, a usable cluster, clean SIGTERM."""
    env = {**os.environ, "TOOLS_DIR": str(control_plane.tools_dir)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "hack" / "cluster.py"),
            "--nodes",
            "1",
            "--logs-dir",
            str(tmp_path / "logs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        started = time.monotonic()
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("KUBECONFIG="), (
            line,
            proc.stderr.read() if proc.poll() is not None else "",
        )
        kubeconfig = Path(line.split("=", 1)[1])
        print(f"make cluster warm start: {time.monotonic() - started:.1f}s")
        nodes = subprocess.run(
            [str(control_plane.tools_dir / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "nodes", "-o", "name"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert nodes.stdout.split() == ["node/gpu-node-0"]
        state_dir = kubeconfig.parent
        component_pids = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()]  # fmt: skip
        assert len(component_pids) == 5, component_pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not state_dir.exists(), "state dir left behind"
    for pid in component_pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), pid
    assert (tmp_path / "logs" / "kube-apiserver.log").stat().st_size > 0


def test_deleting_a_running_job_removes_its_pods(control_plane: Any, namespace: str) -> None:
    """Job pods carry the job-tracking finalizer; kwok deletes, the job controller releases them."""
    cp = control_plane
    cp.kubectl("create", "job", "gang", "-n", namespace, "--image=example.invalid/trainer:1")
    wait_for(
        lambda: [
            p for p in pods(cp, namespace, "job-name=gang") if p["status"].get("phase") == "Running"
        ],
        timeout=60,
        message="pod of job gang Running",
    )
    cp.kubectl("delete", "job", "gang", "-n", namespace, "--cascade=background")
    wait_for(
        lambda: not pods(cp, namespace, "job-name=gang"),
        timeout=60,
        message="garbage collector and kwok to remove the pods of the deleted job",
    )


def test_start_retries_when_a_port_is_taken_before_the_component_binds(
    control_plane: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Fault injection: the first port handed out is already bound (as when a concurrent cluster
    wins the race for it); kube-apiserver fails to bind, start() retries with fresh ports."""
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = cp_module._free_port
    handed: list[int] = []

    def free_port() -> int:
        handed.append(taken if not handed else real_free_port())
        return handed[-1]

    monkeypatch.setattr(cp_module, "_free_port", free_port)
    try:
        with cp_module.start(
            control_plane.tools_dir, logs_dir=tmp_path, nodes=cp_module.NodePool(count=1)
        ) as cp:
            assert cp.server != f"https://127.0.0.1:{taken}"
            assert cp.kubectl("get", "nodes", "-o", "name").stdout.split() == ["node/gpu-node-0"]
    finally:
        squatter.close()
    assert "address already in use" in (tmp_path / "kube-apiserver.log").read_text()
