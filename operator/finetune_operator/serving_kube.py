"""API I/O for the inference endpoint: observe its Deployment/Service, apply the serving actions.

Why it exists: the endpoint is shared by successive FineTuneJobs, so its objects are read by the
name in spec.serving.endpoint (not the job's child names) and written with a full replacement
guarded by resourceVersion (a race between two challengers becomes a 409, retried with a fresh
observation). It sits beside ``kube.py`` and reuses its error sorting, so the handlers treat
serving failures exactly like the other API failures.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.kube import TIMEOUT, Kube, _translate
from finetune_operator.reconcile import Observed
from finetune_operator.serving import EndpointObservation, ServingAction, ServingPatch, ServingPut
from finetune_operator.serving_manifests import ANN_PREVIOUS, Champion, champion_of
from finetune_operator.status import TERMINAL_PHASES

__all__ = ["ServingKube", "replacement_patch"]


def replacement_patch(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch replacing labels, annotations, owners and the whole spec.

    Setting metadata.resourceVersion to the observed one makes the API server refuse (409) if the
    object changed since: the same guard as a PUT, with the ``patch`` verb the chart grants.
    """
    meta = manifest["metadata"]
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
    ]
    empty: dict[str, Any] = {"labels": {}, "annotations": {}, "ownerReferences": []}
    for key, default in empty.items():
        value = meta.get(key) or default
        ops.append({"op": "add", "path": f"/metadata/{key}", "value": value})
    ops.append({"op": "add", "path": "/spec", "value": manifest["spec"]})
    return ops


class ServingKube:
    """Reads and writes the endpoint objects named by spec.serving.endpoint."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.core = kube.core
        self.apps = client.AppsV1Api(kube.core.api_client)

    def _get(self, what: str, fn: Any, name: str, ns: str) -> dict[str, Any] | None:
        try:
            resp = fn(name, ns, _preload_content=False, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _translate(exc, what) from exc
        except Exception as exc:
            raise _translate(exc, what) from exc
        doc = json.loads(resp.data) if resp.data else {}
        return doc if isinstance(doc, dict) else {}

    def observe(self, obs: Observed) -> Observed:
        """Add the endpoint to the observation while an active job has serving enabled."""
        body = obs.body
        spec = body.get("spec") or {}
        serving = spec.get("serving") or {}
        st = body.get("status") or {}
        phase = st.get("phase")
        champion = phase == "Succeeded" and (st.get("serving") or {}).get("promoted")
        job_done = any(
            c.get("type") in ("Complete", "SuccessCriteriaMet") and c.get("status") == "True"
            for c in ((obs.job or {}).get("status") or {}).get("conditions") or []
        )
        # Only when the serving decision can be near (no extra reads during hours of training).
        active = phase not in TERMINAL_PHASES and (
            job_done or phase in ("Evaluating", "Uploading", "Deploying")
        )
        if not serving.get("enabled") or not (champion or active):
            return obs
        meta = body.get("metadata") or {}
        ns = str(meta.get("namespace"))
        name = str(serving.get("endpoint") or meta.get("name"))
        dep = self._get(
            f"get Deployment {ns}/{name}", self.apps.read_namespaced_deployment, name, ns
        )
        svc = self._get(f"get Service {ns}/{name}", self.core.read_namespaced_service, name, ns)
        alive = False
        ann = ((dep or {}).get("metadata") or {}).get("annotations") or {}
        previous = Champion.from_json(ann.get(ANN_PREVIOUS))
        current = champion_of(dep)
        rolling_out = active and current is not None and current.uid == meta.get("uid")
        if rolling_out and previous is not None and previous.job:  # a rollback may need it
            other = self.kube.read_job_resource(ns, previous.job)
            alive = other is not None and (other.get("metadata") or {}).get("uid") == previous.uid
        endpoint = EndpointObservation(deployment=dep, service=svc, previous_owner_exists=alive)
        return dataclasses.replace(obs, endpoint=endpoint)

    def apply(self, body: Mapping[str, Any], action: ServingAction) -> None:
        """Create, replace (PUT with resourceVersion) or merge-patch an endpoint object."""
        ns = str((body.get("metadata") or {}).get("namespace"))
        if isinstance(action, ServingPut):
            kind = str(action.manifest["kind"])
            name = str(action.manifest["metadata"]["name"])
            create, patch = {
                "Deployment": (
                    self.apps.create_namespaced_deployment,
                    self.apps.patch_namespaced_deployment,
                ),
                "Service": (
                    self.core.create_namespaced_service,
                    self.core.patch_namespaced_service,
                ),
            }[kind]
            what = f"put {kind} {ns}/{name}"
            meta = action.manifest["metadata"]
            try:
                if meta.get("resourceVersion"):
                    patch(
                        name,
                        ns,
                        replacement_patch(action.manifest),
                        _request_timeout=TIMEOUT,
                        _content_type="application/json-patch+json",
                    )
                else:
                    create(ns, action.manifest, _request_timeout=TIMEOUT)
            except ApiException as exc:
                # 409 on create: it exists now (another job, or us before a crash): re-observe.
                raise _translate(exc, what) from exc
            except Exception as exc:
                raise _translate(exc, what) from exc
        elif isinstance(action, ServingPatch):
            patch_fn = {
                "Deployment": self.apps.patch_namespaced_deployment,
                "Service": self.core.patch_namespaced_service,
            }[action.kind]
            what = f"patch {action.kind} {ns}/{action.name}"
            try:
                patch_fn(
                    action.name,
                    ns,
                    action.patch,
                    _request_timeout=TIMEOUT,
                    _content_type="application/merge-patch+json",
                )
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise _translate(exc, what) from exc
            except Exception as exc:
                raise _translate(exc, what) from exc
