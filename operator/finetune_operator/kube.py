"""API I/O for the reconcile: read what is observed, apply actions, patch status.

Why it exists: the reconcile is pure and the handlers are thin, so every call to the Kubernetes API
lives here, behind a few functions that speak plain dicts (camelCase, as on the wire). Errors are
sorted into three kinds the handlers act on: ``TransientApiError`` (409 conflicts, 429, 5xx,
timeouts, connection errors: retry with backoff), ``InvalidChildError`` (the API rejected a child
built from the user's spec with 400/422: the spec escaped admission, fail the job), and anything
else (a bug: logged, retried by the timer).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.reconcile import (
    Action,
    Create,
    Delete,
    DeleteSelf,
    Event,
    Observed,
    Update,
)
from finetune_operator.resources import LABEL_JOB, MANAGED_BY, child_names
from finetune_operator.status import format_time

__all__ = [
    "InvalidChildError",
    "Kube",
    "TransientApiError",
]

TIMEOUT = (5.0, 30.0)  # (connect, read) seconds for every request


class TransientApiError(Exception):
    """A failure worth retrying after ``delay`` seconds (conflict, throttling, 5xx, network)."""

    def __init__(self, message: str, delay: float = 2.0) -> None:
        super().__init__(message)
        self.delay = delay


class InvalidChildError(Exception):
    """The API server rejected a child rendered from the spec (400/422): the spec is invalid."""


def _translate(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, ApiException):
        code = int(exc.status or 0)
        body = str(exc.body or exc.reason or "")
        if code in (409, 429) or code >= 500 or code == 0:
            delay = 1.0 if code == 409 else 5.0
            return TransientApiError(f"{what}: HTTP {code}: {body[:500]}", delay)
        if code in (400, 422):
            with contextlib.suppress(ValueError, AttributeError):
                body = str(json.loads(body).get("message", body))
            return InvalidChildError(f"{what}: {body[:700]}")
        return exc  # type: ignore[no-any-return]
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError, TimeoutError)):
        return TransientApiError(f"{what}: {exc}", 5.0)
    return exc


class Kube:
    """Typed-enough wrappers around the kubernetes client, returning wire-format dicts."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # ---------------------------------------------------------------------------- low level

    def _raw(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """Call an API method without deserialising; None on 404."""
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _translate(exc, what) from exc
        except Exception as exc:
            raise _translate(exc, what) from exc
        data = resp.data
        doc = json.loads(data) if data else {}
        return doc if isinstance(doc, dict) else {}

    def _ops(self, kind: str) -> tuple[Any, Any, Any, Any]:
        """(read, create, patch, delete) namespaced methods for a child kind."""
        c, b, r = self.core, self.batch, self.rbac
        table: dict[str, tuple[Any, Any, Any, Any]] = {
            "ConfigMap": (
                c.read_namespaced_config_map,
                c.create_namespaced_config_map,
                c.patch_namespaced_config_map,
                c.delete_namespaced_config_map,
            ),
            "Service": (
                c.read_namespaced_service,
                c.create_namespaced_service,
                c.patch_namespaced_service,
                c.delete_namespaced_service,
            ),
            "ServiceAccount": (
                c.read_namespaced_service_account,
                c.create_namespaced_service_account,
                c.patch_namespaced_service_account,
                c.delete_namespaced_service_account,
            ),
            "Role": (
                r.read_namespaced_role,
                r.create_namespaced_role,
                r.patch_namespaced_role,
                r.delete_namespaced_role,
            ),
            "RoleBinding": (
                r.read_namespaced_role_binding,
                r.create_namespaced_role_binding,
                r.patch_namespaced_role_binding,
                r.delete_namespaced_role_binding,
            ),
            "Job": (
                b.read_namespaced_job,
                b.create_namespaced_job,
                b.patch_namespaced_job,
                b.delete_namespaced_job,
            ),
        }
        return table[kind]

    # ---------------------------------------------------------------------------- reading

    def read_job_resource(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The FineTuneJob, fresh from the API (None once it is gone)."""
        return self._raw(
            f"get FineTuneJob {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )

    def list_jobs(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every FineTuneJob in these namespaces (all namespaces when empty)."""
        docs: list[dict[str, Any] | None]
        if namespaces:
            docs = [
                self._raw(
                    f"list FineTuneJobs in {ns}",
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    ns,
                    PLURAL,
                )
                for ns in namespaces
            ]
        else:
            docs = [
                self._raw(
                    "list FineTuneJobs",
                    self.custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                )
            ]
        return [item for doc in docs for item in (doc or {}).get("items") or []]

    def observe(self, body: Mapping[str, Any], now: datetime) -> Observed | None:
        """Read the FineTuneJob and everything it owns; None when the job no longer exists."""
        meta = body.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        fresh = self.read_job_resource(ns, name)
        if fresh is None:
            return None
        names = child_names(name)
        children: dict[str, Mapping[str, Any] | None] = {}
        for kind, key in (
            ("ServiceAccount", "serviceAccount"),
            ("Role", "role"),
            ("RoleBinding", "roleBinding"),
            ("Service", "service"),
            ("ConfigMap", "config"),
        ):
            children[kind] = self._raw(
                f"get {kind} {ns}/{names[key]}", self._ops(kind)[0], names[key], ns
            )
        job = self._raw(
            f"get Job {ns}/{names['job']}", self.batch.read_namespaced_job, names["job"], ns
        )
        pods_doc = self._raw(
            f"list pods of {ns}/{names['job']}",
            self.core.list_namespaced_pod,
            ns,
            label_selector=f"{LABEL_JOB}={name},app.kubernetes.io/managed-by={MANAGED_BY}",
        )
        pods = list((pods_doc or {}).get("items") or [])
        base_job = None
        from_job = ((fresh.get("spec") or {}).get("baseModel") or {}).get("fromJob")
        if isinstance(from_job, str) and from_job:
            base_job = self.read_job_resource(ns, from_job)
        return Observed(
            body=fresh, now=now, children=children, job=job, pods=pods, base_job=base_job
        )

    # ---------------------------------------------------------------------------- writing

    def patch_status(self, body: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource, guarded by the observed resourceVersion.

        The guard turns a race with another writer (the trainer, a second operator replica) into
        a 409, which is retried with a fresh observation instead of deciding on stale state.
        """
        meta = body.get("metadata") or {}
        doc: dict[str, Any] = {"status": dict(patch)}
        if meta.get("resourceVersion"):
            doc["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                ns,
                PLURAL,
                name,
                doc,
                _request_timeout=TIMEOUT,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise _translate(exc, f"patch status of FineTuneJob {ns}/{name}") from exc
        except Exception as exc:
            raise _translate(exc, f"patch status of FineTuneJob {ns}/{name}") from exc

    def apply(self, body: Mapping[str, Any], action: Action) -> None:
        """Apply one action; idempotent (exists on create / gone on delete are fine)."""
        meta = body.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str(meta.get("name"))
        try:
            if isinstance(action, Create):
                kind = str(action.manifest["kind"])
                try:
                    self._ops(kind)[1](ns, action.manifest, _request_timeout=TIMEOUT)
                except ApiException as exc:
                    if exc.status != 409:  # already exists: someone (we, earlier) made it
                        raise
            elif isinstance(action, Update):
                self._ops(action.kind)[2](action.name, ns, action.patch, _request_timeout=TIMEOUT)
            elif isinstance(action, Delete):
                self._delete(action.kind, ns, action.name, owner=name)
            elif isinstance(action, DeleteSelf):
                uid = meta.get("uid")
                self.custom.delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    ns,
                    PLURAL,
                    name,
                    _request_timeout=TIMEOUT,
                    body=client.V1DeleteOptions(
                        preconditions=client.V1Preconditions(uid=uid) if uid else None,
                        propagation_policy="Background",
                    ),
                )
        except ApiException as exc:
            if exc.status == 404 and not isinstance(action, Create):
                return
            raise _translate(exc, f"{type(action).__name__} for {ns}/{name}") from exc
        except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
            raise _translate(exc, f"{type(action).__name__} for {ns}/{name}") from exc

    def _delete(self, kind: str, ns: str, child: str, *, owner: str) -> None:
        try:
            self._ops(kind)[3](child, ns, propagation_policy="Background", _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
        if kind != "Job":
            return
        # The garbage collector would remove the pods too, but later: delete them now so that
        # no GPU stays held and the next attempt's pods get the rendezvous hostnames.
        pods = self._raw(
            f"list pods of {ns}/{child}",
            self.core.list_namespaced_pod,
            ns,
            label_selector=f"{LABEL_JOB}={owner},batch.kubernetes.io/job-name={child}",
        )
        for pod in (pods or {}).get("items") or []:
            pmeta = pod.get("metadata") or {}
            if pmeta.get("deletionTimestamp"):
                continue
            try:
                self.core.delete_namespaced_pod(pmeta.get("name"), ns, _request_timeout=TIMEOUT)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def post_event(
        self, body: Mapping[str, Any], event: Event, now: datetime, component: str = MANAGED_BY
    ) -> None:
        """Create a core/v1 Event on the FineTuneJob; failures are not worth failing a reconcile."""
        meta = body.get("metadata") or {}
        ns = str(meta.get("namespace"))
        ts = format_time(now)
        ev = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "FineTuneJob",
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": component},
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(ns, ev, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise _translate(exc, f"post event on {ns}/{meta.get('name')}") from exc
        except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
            raise _translate(exc, f"post event on {ns}/{meta.get('name')}") from exc
