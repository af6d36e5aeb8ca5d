"""The trainer's status reports against a real kube-apiserver, with the job's own ServiceAccount.

The Reporter uses the in-cluster code path (token file, CA file, KUBERNETES_SERVICE_HOST/PORT),
pointed at a token minted for ``<job>-trainer`` bound to the operator's Role. It may merge-patch
its own job's status (operator-owned fields stay as they were) and nothing else.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from finetune_operator.resources import (
    JobIdentity,
    build_role,
    build_role_binding,
    build_service_account,
    child_names,
)
from finetune_trainer.config import JobRef
from finetune_trainer.report import StatusPatcher
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster


def _job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny/"},
            "datasets": [{"name": "d", "uri": "s3://data/d.jsonl", "format": "text"}],
            "output": {"uri": f"s3://out/{name}/"},
        },
    }


def _in_cluster_files(
    control_plane: Any, namespace: str, sa: str, tmp_path: Path
) -> dict[str, Any]:
    token = control_plane.kubectl("create", "token", sa, "-n", namespace).stdout.strip()
    (tmp_path / "token").write_text(token)
    kubeconfig = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        (tmp_path / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        (tmp_path / "ca.crt").write_bytes(Path(cluster["certificate-authority"]).read_bytes())
    server = urlparse(cluster["server"])
    return {
        "token_file": str(tmp_path / "token"),
        "ca_file": str(tmp_path / "ca.crt"),
        "environ": {
            "KUBERNETES_SERVICE_HOST": server.hostname,
            "KUBERNETES_SERVICE_PORT": str(server.port),
        },
    }


def test_trainer_patches_only_its_own_jobs_status(
    control_plane: Any, crd_installed: str, namespace: str, tmp_path: Path
) -> None:
    for name in ("bot", "other"):
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_job(name)))
    uid = json.loads(
        control_plane.kubectl("get", "ftj", "bot", "-n", namespace, "-o", "json").stdout
    )["metadata"]["uid"]
    ident = JobIdentity(name="bot", namespace=namespace, uid=uid)
    for manifest in (build_service_account(ident), build_role(ident), build_role_binding(ident)):
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    # the operator's fields, written by the operator (admin here)
    control_plane.kubectl(
        "patch", "ftj", "bot", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Training", "attempts": 2}}),
    )  # fmt: skip

    creds = _in_cluster_files(
        control_plane, namespace, child_names("bot")["serviceAccount"], tmp_path
    )
    from finetune_operator.api import FineTuneJobSpec
    from finetune_trainer.config import ReportTarget, TrainerConfig
    from finetune_trainer.report import Reporter

    spec = FineTuneJobSpec.model_validate(_job("bot")["spec"])
    config = TrainerConfig(
        job=JobRef("bot", namespace),
        run_id="bot-1",
        spec=spec,
        base_model_uri="s3://models/tiny/",
        report=ReportTarget(
            kubernetes=True, termination_log=None, metrics_port=None, min_interval_seconds=0.0
        ),
    )
    reporter = Reporter(config, patcher=StatusPatcher(JobRef("bot", namespace), **creds))
    reporter.stage("training")
    reporter.on_event({"event": "train_begin", "step": 0, "total_steps": 40})
    reporter.on_event({"event": "log", "step": 10, "loss": 0.75, "learning_rate": 1e-4})
    reporter.finish()

    status = json.loads(
        control_plane.kubectl("get", "ftj", "bot", "-n", namespace, "-o", "json").stdout
    )["status"]
    assert status["phase"] == "Training" and status["attempts"] == 2  # untouched
    assert status["progress"]["stage"] == "training"
    assert status["progress"]["step"] == 10 and status["progress"]["totalSteps"] == 40
    assert status["progress"]["percent"] == 25
    assert status["metrics"]["trainLoss"] == "0.75"

    with pytest.raises(ApiException) as refused:
        StatusPatcher(JobRef("other", namespace), **creds).patch({"progress": {"step": 1}})
    assert refused.value.status == 403
    other = json.loads(
        control_plane.kubectl("get", "ftj", "other", "-n", namespace, "-o", "json").stdout
    )
    assert not (other.get("status") or {}).get("progress")
