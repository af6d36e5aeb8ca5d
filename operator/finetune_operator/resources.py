"""Pure builders of every child object a FineTuneJob owns: dict in, dict out, no API calls.

Why it exists: the manifests the operator creates are the most reviewable part of its behaviour,
so they are built by plain functions that the unit tests check field by field, and that the
reconcile compares with what it observes. Names are deterministic (``<job>-config``,
``<job>-workers``, ``<job>-trainer``, ``<job>-train``) and every child carries an ownerReference
to its FineTuneJob, so deleting the job lets Kubernetes' garbage collector remove them all.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finetune_trainer.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    EXIT_BAD_INPUT,
    JobRef,
    ReportTarget,
    TrainerConfig,
)

from finetune_operator.api import API_VERSION, GROUP, KIND, PLURAL, FineTuneJobSpec

__all__ = [
    "ANNOTATION_GPU_SECONDS_BEFORE",
    "ANNOTATION_RUN_ID",
    "CONFIG_KEY",
    "CONTAINER_NAME",
    "LABEL_ATTEMPT",
    "LABEL_JOB",
    "LABEL_KUEUE_QUEUE",
    "MANAGED_BY",
    "METRICS_PORT",
    "WORK_DIR",
    "JobIdentity",
    "build_children",
    "build_config_map",
    "build_role",
    "build_role_binding",
    "build_service",
    "build_service_account",
    "build_train_job",
    "build_trainer_config",
    "child_names",
    "labels_for",
    "owner_reference",
    "processes_per_node",
    "run_id_for",
]

LABEL_JOB = "finetune.dev/job"
LABEL_ATTEMPT = "finetune.dev/attempt"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_RUN_ID = "finetune.dev/run-id"
ANNOTATION_GPU_SECONDS_BEFORE = "finetune.dev/gpu-seconds-before"
MANAGED_BY = "finetune-operator"
CONTAINER_NAME = "trainer"
CONFIG_KEY = "config.json"
METRICS_PORT = 9090
WORK_DIR = "/workspace"
GRACE_SECONDS = 180
"""Pod termination grace: above the trainer's 120 s SIGTERM checkpoint window (launch.py)."""


@dataclass(frozen=True)
class JobIdentity:
    """The owner's identity: everything a builder needs besides the spec."""

    name: str
    namespace: str
    uid: str

    @property
    def run_id(self) -> str:
        return run_id_for(self.name, self.uid)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobIdentity:
        meta = body.get("metadata") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace") or "default"),
            uid=str(meta.get("uid", "")),
        )


def run_id_for(name: str, uid: str) -> str:
    """``<name>-<uid[:8]>``: stable across attempts of one job, distinct for a re-created job."""
    return f"{name}-{uid.replace('-', '')[:8]}" if uid else name


def child_names(job: str) -> dict[str, str]:
    """The deterministic names of the children, by role."""
    return {
        "config": f"{job}-config",
        "service": f"{job}-workers",
        "serviceAccount": f"{job}-trainer",
        "role": f"{job}-trainer",
        "roleBinding": f"{job}-trainer",
        "job": f"{job}-train",
    }


def labels_for(job: str, component: str = "trainer") -> dict[str, str]:
    """Labels on every child (recommended app.kubernetes.io labels plus the owner's name)."""
    return {
        "app.kubernetes.io/name": "finetune",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_JOB: job,
    }


def owner_reference(ident: JobIdentity) -> dict[str, Any]:
    """The controller ownerReference pointing at the FineTuneJob."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ident.name,
        "uid": ident.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(ident: JobIdentity, name: str, component: str = "trainer") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ident.namespace,
        "labels": labels_for(ident.name, component),
        "ownerReferences": [owner_reference(ident)],
    }


def processes_per_node(spec: FineTuneJobSpec) -> int:
    """torchrun processes per pod: explicit, else one per GPU, else 1."""
    d = spec.distributed
    if d.processes_per_node:
        return d.processes_per_node
    return d.gpus_per_node if d.gpus_per_node > 0 else 1


def build_trainer_config(
    ident: JobIdentity,
    spec: FineTuneJobSpec,
    *,
    base_model_uri: str,
    attempt: int,
    report_interval_seconds: float = 10.0,
) -> TrainerConfig:
    """The trainer config for one attempt (reports go to the status subresource)."""
    return TrainerConfig(
        job=JobRef(name=ident.name, namespace=ident.namespace, uid=ident.uid),
        run_id=ident.run_id,
        spec=spec,
        base_model_uri=base_model_uri,
        attempt=attempt,
        work_dir=WORK_DIR,
        image=spec.template.image,
        report=ReportTarget(
            kubernetes=True,
            status_file=None,
            termination_log="/dev/termination-log",
            metrics_port=METRICS_PORT,
            min_interval_seconds=report_interval_seconds,
        ),
    )


def build_config_map(ident: JobIdentity, config: TrainerConfig) -> dict[str, Any]:
    """ConfigMap ``<job>-config`` with the trainer config JSON under ``config.json``."""
    meta = _meta(ident, child_names(ident.name)["config"])
    meta["annotations"] = {ANNOTATION_RUN_ID: config.run_id}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIG_KEY: config.to_json()},
    }


def build_service(ident: JobIdentity, *, port: int = 29500) -> dict[str, Any]:
    """Headless Service ``<job>-workers``: stable DNS for each pod (rendezvous on rank 0).

    publishNotReadyAddresses: the pods have no readiness probe gating rendezvous, and rank 0 must
    resolve before every pod is ready.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ident, child_names(ident.name)["service"]),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: ident.name, "app.kubernetes.io/component": "trainer"},
            "ports": [
                {"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT},
            ],
        },
    }


def build_service_account(ident: JobIdentity) -> dict[str, Any]:
    """ServiceAccount ``<job>-trainer``: the identity the training pods report with."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ident, child_names(ident.name)["serviceAccount"]),
    }


def build_role(ident: JobIdentity) -> dict[str, Any]:
    """Role ``<job>-trainer``: read this FineTuneJob and patch its status, nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(ident, child_names(ident.name)["role"]),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [ident.name],
                "verbs": ["get", "patch"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [PLURAL],
                "resourceNames": [ident.name],
                "verbs": ["get"],
            },
        ],
    }


def build_role_binding(ident: JobIdentity) -> dict[str, Any]:
    """RoleBinding ``<job>-trainer``: binds the Role to the job's ServiceAccount."""
    names = child_names(ident.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ident, names["roleBinding"]),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": names["role"],
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": names["serviceAccount"],
                "namespace": ident.namespace,
            }
        ],
    }


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    """Container resources: the template's, plus GPU requests = limits from gpusPerNode."""
    res: dict[str, Any] = copy.deepcopy(spec.template.resources)
    gpus = spec.distributed.gpus_per_node
    if gpus > 0:
        gpu = spec.template.gpu_resource_name
        res.setdefault("requests", {})[gpu] = str(gpus)
        res.setdefault("limits", {})[gpu] = str(gpus)
    return res


def storage_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """S3 settings for every pod that reads or writes the job's storage (training, serving,
    init containers): region, endpoint and credentials from the Secret."""
    env: list[dict[str, Any]] = [{"name": "AWS_DEFAULT_REGION", "value": spec.storage.region}]
    if spec.storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": spec.storage.endpoint})
        env.append({"name": "FINETUNE_S3_ENDPOINT", "value": spec.storage.endpoint})
    if spec.storage.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append(
                {
                    "name": key,
                    "valueFrom": {
                        "secretKeyRef": {"name": spec.storage.credentials_secret, "key": key}
                    },
                }
            )
    return env


def _env(ident: JobIdentity, spec: FineTuneJobSpec, port: int) -> list[dict[str, Any]]:
    names = child_names(ident.name)
    env: list[dict[str, Any]] = [
        {"name": "NNODES", "value": str(spec.distributed.nodes)},
        {
            "name": "NODE_RANK",
            "valueFrom": {
                "fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                }
            },
        },
        {"name": "NPROC_PER_NODE", "value": str(processes_per_node(spec))},
        {"name": "MASTER_ADDR", "value": f"{names['job']}-0.{names['service']}"},
        {"name": "MASTER_PORT", "value": str(port)},
        {"name": CONFIG_ENV, "value": DEFAULT_CONFIG_PATH},
        {"name": "FINETUNE_JOB_NAME", "value": ident.name},
        {"name": "FINETUNE_JOB_NAMESPACE", "value": ident.namespace},
        *storage_env(spec),
    ]
    names_set = {e["name"] for e in env}
    # User env comes last; it may add variables but never replace the contract ones.
    env += [copy.deepcopy(e) for e in spec.template.env if e.get("name") not in names_set]
    return env


def build_train_job(
    ident: JobIdentity,
    spec: FineTuneJobSpec,
    *,
    attempt: int,
    gpu_seconds_before: int = 0,
    port: int = 29500,
) -> dict[str, Any]:
    """Indexed batch/v1 Job ``<job>-train``: one pod per node, the whole gang or nothing.

    backoffLimit 0: any failed pod fails the Job and the operator restarts the whole gang (from
    the latest checkpoint). podFailurePolicy: the bad-input exit code fails the Job at once (the
    operator does not retry it); a disruption (preemption, eviction) is ignored by the Job's
    counting. With runPolicy.queueName the Job is created suspended for Kueue to admit.
    """
    names = child_names(ident.name)
    t = spec.template
    labels = labels_for(ident.name)
    labels[LABEL_ATTEMPT] = str(attempt)
    pod_labels = dict(labels)
    if spec.run_policy.queue_name:
        labels[LABEL_KUEUE_QUEUE] = spec.run_policy.queue_name
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": t.image,
        "command": ["python", "-m", "finetune_trainer", "launch"],
        "env": _env(ident, spec, port),
        "ports": [
            {"name": "rendezvous", "containerPort": port},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": _resources(spec),
        "volumeMounts": [
            {
                "name": "config",
                "mountPath": DEFAULT_CONFIG_PATH.rsplit("/", 1)[0],
                "readOnly": True,
            },
            {"name": "workspace", "mountPath": WORK_DIR},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if t.image_pull_policy:
        container["imagePullPolicy"] = t.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "subdomain": names["service"],
        "serviceAccountName": names["serviceAccount"],
        "automountServiceAccountToken": True,
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names["config"]}},
            {"name": "workspace", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if t.node_selector:
        pod_spec["nodeSelector"] = dict(t.node_selector)
    if t.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(t.tolerations)
    if t.affinity:
        pod_spec["affinity"] = copy.deepcopy(t.affinity)
    if t.priority_class_name:
        pod_spec["priorityClassName"] = t.priority_class_name
    if t.scheduler_name:
        pod_spec["schedulerName"] = t.scheduler_name
    nodes = spec.distributed.nodes
    meta = _meta(ident, names["job"])
    meta["labels"] = labels
    meta["annotations"] = {
        ANNOTATION_RUN_ID: ident.run_id,
        ANNOTATION_GPU_SECONDS_BEFORE: str(int(gpu_seconds_before)),
    }
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": 0,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER_NAME,
                        "operator": "In",
                        "values": [EXIT_BAD_INPUT],
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {ANNOTATION_RUN_ID: ident.run_id},
            },
            "spec": pod_spec,
        },
    }
    if spec.run_policy.queue_name:
        job_spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def build_children(
    ident: JobIdentity,
    spec: FineTuneJobSpec,
    *,
    base_model_uri: str,
    attempt: int,
    report_interval_seconds: float = 10.0,
    port: int = 29500,
) -> list[dict[str, Any]]:
    """The static children, in creation order (the Job is built separately, per attempt)."""
    config = build_trainer_config(
        ident,
        spec,
        base_model_uri=base_model_uri,
        attempt=attempt,
        report_interval_seconds=report_interval_seconds,
    )
    return [
        build_service_account(ident),
        build_role(ident),
        build_role_binding(ident),
        build_service(ident, port=port),
        build_config_map(ident, config),
    ]
