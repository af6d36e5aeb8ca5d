"""Pure builders of the inference endpoint: its Deployment, its Service, and the rollback of both.

Why it exists: the endpoint named by ``spec.serving.endpoint`` outlives any one FineTuneJob
(successive jobs compete to serve it), so its objects are not ordinary children. The Deployment
carries its own memory in annotations: who the champion is (job, uid, run URI, metrics), when
the current rollout started, and the previous champion with its pod template, so that a rollout
that never becomes available can be rolled back from what the cluster holds alone. Everything
here is dict in, dict out, and unit-tested field by field (tests/unit/test_serving_manifests.py).

Engines:
- builtin: the trainer image runs ``python -m finetune_trainer serve --model <run URI>``
  (readiness /readyz, liveness /healthz, Prometheus /metrics on the same port).
- vllm: ``vllm/vllm-openai`` serves the base model with the adapter as a LoRA module; an init
  container (the trainer image, ``python -m finetune_trainer pull``) fetches both from S3 into an
  emptyDir first. A full fine-tune (no adapter) is served as the model itself.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from finetune_operator.api import API_VERSION, KIND, FineTuneJobSpec
from finetune_operator.resources import MANAGED_BY, JobIdentity, storage_env
from finetune_operator.status import format_time

__all__ = [
    "ANN_CHAMPION",
    "ANN_PREVIOUS",
    "ANN_PREVIOUS_TEMPLATE",
    "ANN_ROLLED_BACK",
    "ANN_ROLLOUT_STARTED",
    "ANN_RUN_URI",
    "LABEL_ENDPOINT",
    "LABEL_SERVING_JOB",
    "MODELS_DIR",
    "SERVING_PORT",
    "VLLM_IMAGE",
    "Champion",
    "build_deployment",
    "build_endpoint_service",
    "build_pod_template",
    "build_rollback",
    "champion_of",
    "endpoint_labels",
    "endpoint_name",
    "endpoint_url",
    "owner_ref",
    "rollout_progress",
    "vllm_lora_rank",
]

SERVING_PORT = 8000
MODELS_DIR = "/models"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
"""Pinned vLLM image (set spec.serving.image to use another)."""

LABEL_ENDPOINT = "finetune.dev/endpoint"
LABEL_SERVING_JOB = "finetune.dev/serving-job"
"""The champion's job name on the pods (not finetune.dev/job: those are training pods)."""

ANN_CHAMPION = "finetune.dev/champion"
"""JSON: the job now serving {job, uid, runUri, metric, value, results}."""
ANN_RUN_URI = "finetune.dev/run-uri"
ANN_ROLLOUT_STARTED = "finetune.dev/rollout-started"
ANN_PREVIOUS = "finetune.dev/previous-champion"
"""JSON: the champion before the current rollout (same shape as ANN_CHAMPION)."""
ANN_PREVIOUS_TEMPLATE = "finetune.dev/previous-template"
"""JSON: {replicas, template} of the previous champion's Deployment, restored by a rollback."""
ANN_ROLLED_BACK = "finetune.dev/rolled-back"
"""JSON: {job, uid, at, reason} of the last rollout that was rolled back."""

_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class Champion:
    """The job serving an endpoint, as recorded on the endpoint's Deployment."""

    job: str
    uid: str
    run_uri: str
    metric: str
    value: str | None
    results: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "job": self.job,
                "uid": self.uid,
                "runUri": self.run_uri,
                "metric": self.metric,
                "value": self.value,
                "results": dict(self.results),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: object) -> Champion | None:
        """Parse an annotation; None when absent or unreadable (treated as "no champion")."""
        if not isinstance(text, str) or not text:
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not doc.get("uid"):
            return None
        results = doc.get("results") if isinstance(doc.get("results"), dict) else {}
        value = doc.get("value")
        return cls(
            job=str(doc.get("job") or ""),
            uid=str(doc["uid"]),
            run_uri=str(doc.get("runUri") or ""),
            metric=str(doc.get("metric") or ""),
            value=None if value is None else str(value),
            results={str(k): str(v) for k, v in (results or {}).items()},
        )

    def describe(self) -> str:
        shown = f"{self.metric} {self.value}" if self.metric else "no metric"
        return f"FineTuneJob {self.job!r} ({shown})"


def endpoint_name(ident: JobIdentity, spec: FineTuneJobSpec) -> str:
    """The Deployment and Service name: spec.serving.endpoint, else the job's name."""
    return spec.serving.endpoint or ident.name


def endpoint_url(endpoint: str, namespace: str) -> str:
    return f"http://{endpoint}.{namespace}.svc:{SERVING_PORT}"


def endpoint_labels(endpoint: str) -> dict[str, str]:
    """Selector labels: stable across champions (a Deployment's selector is immutable)."""
    return {
        "app.kubernetes.io/name": "finetune",
        "app.kubernetes.io/instance": endpoint,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_ENDPOINT: endpoint,
    }


def owner_ref(job: str, uid: str) -> dict[str, Any]:
    """ownerReference to the champion job: deleting any other job leaves the endpoint alone."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job,
        "uid": uid,
        "controller": False,
        "blockOwnerDeletion": False,
    }


def champion_of(deployment: Mapping[str, Any] | None) -> Champion | None:
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    return Champion.from_json(annotations.get(ANN_CHAMPION))


def vllm_lora_rank(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that fits the adapter's rank."""
    return next((x for x in _VLLM_LORA_RANKS if x >= r), _VLLM_LORA_RANKS[-1])


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def _builtin_container(spec: FineTuneJobSpec, run_uri: str) -> dict[str, Any]:
    return {
        "name": "server",
        "image": spec.serving.image or spec.template.image,
        "command": ["python", "-m", "finetune_trainer", "serve"],
        "args": [
            "--model",
            run_uri,
            "--port",
            str(SERVING_PORT),
            "--cache-dir",
            MODELS_DIR,
        ],
        "env": storage_env(spec),
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/readyz", 5, 3),
        "livenessProbe": _probe("/healthz", 10, 6),
        "startupProbe": _probe("/healthz", 5, 60),
        "resources": copy.deepcopy(spec.serving.resources),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
    }


def _vllm_containers(
    endpoint: str, spec: FineTuneJobSpec, run_uri: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(init container pulling the model, vLLM server container)."""
    full = spec.method.type == "full"
    pull: dict[str, Any] = {
        "name": "pull-model",
        "image": spec.template.image,
        "command": ["python", "-m", "finetune_trainer", "pull"],
        "args": ["--run", run_uri, "--dest", MODELS_DIR],
        "env": storage_env(spec),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
    }
    if full:
        model_args = ["--model", f"{MODELS_DIR}/model"]
    else:
        rank = spec.method.lora.r if spec.method.lora is not None else 16
        model_args = [
            "--model", f"{MODELS_DIR}/base",
            "--tokenizer", f"{MODELS_DIR}/run",
            "--enable-lora",
            "--lora-modules", f"{endpoint}={MODELS_DIR}/adapter",
            "--max-lora-rank", str(vllm_lora_rank(rank)),
        ]  # fmt: skip
    server: dict[str, Any] = {
        "name": "server",
        "image": spec.serving.image or VLLM_IMAGE,
        "command": ["vllm", "serve"],
        "args": [
            *model_args,
            "--served-model-name",
            f"{endpoint}-base" if not full else endpoint,
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVING_PORT),
        ],
        "env": [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}],
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/health", 5, 3),
        "livenessProbe": _probe("/health", 10, 6),
        "startupProbe": _probe("/health", 10, 90),
        "resources": copy.deepcopy(spec.serving.resources),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    return pull, server


def build_pod_template(ident: JobIdentity, spec: FineTuneJobSpec, run_uri: str) -> dict[str, Any]:
    """The inference pod template for this job's run (no time stamps: equal inputs, equal output)."""
    endpoint = endpoint_name(ident, spec)
    labels = endpoint_labels(endpoint)
    labels[LABEL_SERVING_JOB] = ident.name
    volumes: list[dict[str, Any]] = [{"name": "models", "emptyDir": {}}]
    pod: dict[str, Any] = {"volumes": volumes, "terminationGracePeriodSeconds": 45}
    if spec.serving.engine == "vllm":
        pull, server = _vllm_containers(endpoint, spec, run_uri)
        pod["initContainers"] = [pull]
        pod["containers"] = [server]
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    else:
        pod["containers"] = [_builtin_container(spec, run_uri)]
    t = spec.template
    if t.image_pull_policy:
        for c in pod["containers"] + pod.get("initContainers", []):
            c["imagePullPolicy"] = t.image_pull_policy
    if t.node_selector:
        pod["nodeSelector"] = dict(t.node_selector)
    if t.tolerations:
        pod["tolerations"] = copy.deepcopy(t.tolerations)
    if t.priority_class_name:
        pod["priorityClassName"] = t.priority_class_name
    return {
        "metadata": {
            "labels": labels,
            "annotations": {
                ANN_RUN_URI: run_uri,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(SERVING_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod,
    }


def build_endpoint_service(
    endpoint: str, namespace: str, owner_references: list[dict[str, Any]]
) -> dict[str, Any]:
    """Service <endpoint>: port 8000 named http, selecting whichever model serves now.

    Its ownerReferences follow the Deployment's (the champion job, or none).
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": endpoint,
            "namespace": namespace,
            "labels": endpoint_labels(endpoint),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(SERVING_PORT),
                "prometheus.io/path": "/metrics",
            },
            "ownerReferences": [dict(r) for r in owner_references],
        },
        "spec": {
            "selector": {
                LABEL_ENDPOINT: endpoint,
                "app.kubernetes.io/component": "inference",
            },
            "ports": [
                {"name": "http", "port": SERVING_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_deployment(
    ident: JobIdentity,
    spec: FineTuneJobSpec,
    *,
    champion: Champion,
    now: datetime,
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The endpoint's Deployment serving ``champion`` (this job), replacing ``current`` if any.

    With a current Deployment the result is a full replacement (PUT) guarded by its
    resourceVersion; the current champion and pod template are kept in annotations for a rollback.
    Rolling update with maxUnavailable 0: the old model serves until the new one is ready. While
    the rollout runs, the current owners stay owners beside the challenger, so deleting either
    job mid-rollout leaves the endpoint up; once available, the challenger is the only owner.
    """
    endpoint = endpoint_name(ident, spec)
    annotations = {
        ANN_CHAMPION: champion.to_json(),
        ANN_RUN_URI: champion.run_uri,
        ANN_ROLLOUT_STARTED: format_time(now),
    }
    meta: dict[str, Any] = {
        "name": endpoint,
        "namespace": ident.namespace,
        "labels": endpoint_labels(endpoint),
        "annotations": annotations,
        "ownerReferences": [owner_ref(champion.job, champion.uid)],
    }
    if current is not None:
        cur_meta = current.get("metadata") or {}
        cur_ann = dict(cur_meta.get("annotations") or {})
        previous = champion_of(current)
        if previous is not None:
            annotations[ANN_PREVIOUS] = previous.to_json()
            annotations[ANN_PREVIOUS_TEMPLATE] = json.dumps(
                {
                    "replicas": (current.get("spec") or {}).get("replicas", 1),
                    "template": (current.get("spec") or {}).get("template") or {},
                },
                sort_keys=True,
            )
        if ANN_ROLLED_BACK in cur_ann:
            annotations[ANN_ROLLED_BACK] = cur_ann[ANN_ROLLED_BACK]
        if cur_meta.get("resourceVersion"):
            meta["resourceVersion"] = cur_meta["resourceVersion"]
        kept = [
            dict(r) for r in cur_meta.get("ownerReferences") or [] if r.get("uid") != champion.uid
        ]
        meta["ownerReferences"] = [*kept, owner_ref(champion.job, champion.uid)]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.serving.replicas,
            "selector": {
                "matchLabels": {
                    LABEL_ENDPOINT: endpoint,
                    "app.kubernetes.io/component": "inference",
                }
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": spec.serving.rollout_deadline_seconds,
            "template": build_pod_template(ident, spec, champion.run_uri),
        },
    }


def build_rollback(
    current: Mapping[str, Any],
    *,
    failed: Champion,
    previous_owner_exists: bool,
    now: datetime,
    reason: str,
) -> tuple[dict[str, Any], Champion | None]:
    """Roll the endpoint back to the champion before ``failed``: (full Deployment, restored one).

    The previous pod template and replica count come from the Deployment's own annotations. The
    ownerReference goes back to the previous champion if that FineTuneJob still exists; if it was
    deleted meanwhile the endpoint is left without owner (an ownerReference to a deleted object
    would make the garbage collector delete the endpoint). Without a previous model (a first
    rollout failed) the Deployment is scaled to 0 and carries no champion.
    """
    doc = copy.deepcopy(dict(current))
    doc.pop("status", None)
    meta = doc.setdefault("metadata", {})
    meta.pop("managedFields", None)
    ann = dict(meta.get("annotations") or {})
    previous = Champion.from_json(ann.get(ANN_PREVIOUS))
    try:
        saved = json.loads(ann.get(ANN_PREVIOUS_TEMPLATE) or "null")
    except ValueError:
        saved = None
    for key in (ANN_PREVIOUS, ANN_PREVIOUS_TEMPLATE, ANN_ROLLOUT_STARTED, ANN_CHAMPION):
        ann.pop(key, None)
    ann[ANN_ROLLED_BACK] = json.dumps(
        {"job": failed.job, "uid": failed.uid, "at": format_time(now), "reason": reason},
        sort_keys=True,
    )
    spec = doc.setdefault("spec", {})
    restored: Champion | None = None
    if previous is not None and isinstance(saved, dict) and isinstance(saved.get("template"), dict):
        spec["template"] = saved["template"]
        spec["replicas"] = int(saved.get("replicas", 1))
        ann[ANN_CHAMPION] = previous.to_json()
        ann[ANN_RUN_URI] = previous.run_uri
        meta["ownerReferences"] = (
            [owner_ref(previous.job, previous.uid)] if previous_owner_exists else []
        )
        restored = previous
    else:
        spec["replicas"] = 0
        ann.pop(ANN_RUN_URI, None)
    meta["annotations"] = ann
    return doc, restored


def rollout_progress(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """(complete, detail) as ``kubectl rollout status`` judges a Deployment."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    st = deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    if int(st.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False, "waiting for the deployment controller to see the new template"
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    if updated < want:
        return False, f"{updated} of {want} new replicas created"
    if total > updated:
        return False, f"{total - updated} old replica(s) still serving until the new ones are ready"
    if available < updated:
        return False, f"{available} of {updated} new replicas available"
    return True, f"{available} of {want} replicas available"
