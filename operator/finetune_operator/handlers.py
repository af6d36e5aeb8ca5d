"""Kopf registrations: observe, call the pure reconcile, apply. Nothing else.

Why it exists: handlers are the only place where Kopf meets the operator's logic, and they stay
thin so that the decisions remain testable without a cluster. Two triggers drive the same
level-based reconcile: every watch event of a FineTuneJob (create, spec change, the trainer's
status reports, resume after an operator restart) and a periodic sweep over all FineTuneJobs
(deadlines, backoff, changes of the children, which are not watched). A per-object lock keeps the
two from running one object at once.

The sweep is a plain thread, not a Kopf timer, on purpose: Kopf timers put a finalizer on every
object, so a FineTuneJob could not be deleted while the operator is down, and a job deleting
itself from its own timer (ttlSecondsAfterFinished) was left hanging with its finalizer.
Because Kopf's peering pauses only its own handlers, the sweep asks a gate (ha.PeeringGate) before
each round and acts only in the active replica, so a standby neither writes nor posts Events.

Failure handling: transient API errors (409, 429, 5xx, timeouts) are retried with exponential
backoff by the sweep; a child the API server rejects marks the job Failed (InvalidSpec) instead of
looping; any other exception is logged, counted and reported as an Event, and never escapes to stop others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import kopf

from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.kube import InvalidChildError, Kube, TransientApiError
from finetune_operator.metrics import metrics
from finetune_operator.reconcile import Decision, Event, Observed, fail, reconcile
from finetune_operator.serving import ServingPatch, ServingPut
from finetune_operator.serving_kube import ServingKube
from finetune_operator.settings import OperatorSettings
from finetune_operator.status import parse_time

__all__ = ["Reconciler", "register"]

log = logging.getLogger("finetune_operator")


class Reconciler:
    """One reconcile of one object: observe → decide → status patch → actions → events."""

    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self.kube = kube
        self.serving = ServingKube(kube)
        self.settings = settings
        self._locks: dict[str, threading.Lock] = {}
        self._failures: dict[str, int] = {}  # uid -> consecutive transient failures
        self._retry_at: dict[str, float] = {}  # uid -> monotonic time the sweep may retry
        self._guard = threading.Lock()

    def _lock(self, uid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        with self._guard:
            self._locks.pop(uid, None)
        metrics.forget(uid)

    def run(self, body: Mapping[str, Any], *, from_sweep: bool = False) -> None:
        """Reconcile once; never raises (one bad object never stops the others).

        After a transient API error the sweep leaves the object alone for an exponentially
        growing delay (1 s, 2 s, 4 s ... capped at 60 s); a watch event still reconciles it.
        """
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if from_sweep and time.monotonic() < self._retry_at.get(uid, 0.0):
            return
        lock = self._lock(uid)
        if not lock.acquire(blocking=False):
            return  # a reconcile of this object is running; the sweep re-checks soon
        started = time.monotonic()
        try:
            self._run(body)
            self._failures.pop(uid, None)
            self._retry_at.pop(uid, None)
        except TransientApiError as exc:
            metrics.reconcile_errors.inc()
            n = self._failures[uid] = self._failures.get(uid, 0) + 1
            delay = min(60.0, max(exc.delay, 2.0 ** (n - 1)))
            self._retry_at[uid] = time.monotonic() + delay
            log.warning(
                "%s/%s: %s (retry in %.0fs)", meta.get("namespace"), meta.get("name"), exc, delay
            )
            if n == 1 and "HTTP 409" not in str(exc):  # conflicts are routine: no Event for them
                self._best_effort_event(
                    body, Event("Warning", "ApiError", f"{exc} (retrying with backoff)"[:900])
                )
        except Exception as exc:
            metrics.reconcile_errors.inc()
            log.exception("%s/%s: reconcile failed", meta.get("namespace"), meta.get("name"))
            self._best_effort_event(body, Event("Warning", "ReconcileError", f"{exc}"[:900]))
        finally:
            metrics.reconcile_duration.observe(time.monotonic() - started)
            lock.release()

    def _run(self, body: Mapping[str, Any]) -> None:
        now = datetime.now(timezone.utc)
        obs = self.kube.observe(body, now)
        if obs is None:
            self.forget(str((body.get("metadata") or {}).get("uid", "")))
            return
        obs = self.serving.observe(obs)
        decision = reconcile(obs, self.settings.reconcile)
        try:
            self._apply(obs, decision)
        except InvalidChildError as exc:
            decision = fail(
                obs,
                "InvalidSpec",
                f"the API server rejected a child built from the spec: {exc} — fix the "
                "manifest and re-create the FineTuneJob",
                self.settings.reconcile,
            )
            self._apply(obs, decision)

    def _apply(self, obs: Observed, decision: Decision) -> None:
        # Status first: a crash after this point is repaired by the next reconcile, which sees
        # the new status (e.g. attempts) and re-derives the same actions.
        if decision.status_patch:
            self.kube.patch_status(obs.body, decision.status_patch)
        for action in decision.actions:
            if isinstance(action, ServingPut | ServingPatch):
                self.serving.apply(obs.body, action)
            else:
                self.kube.apply(obs.body, action)
        for event in decision.events:
            self._best_effort_event(obs.body, event, obs.now)
        self._record(obs, decision)

    def _record(self, obs: Observed, decision: Decision) -> None:
        meta = obs.body.get("metadata") or {}
        uid, ns = str(meta.get("uid", "")), str(meta.get("namespace", ""))
        if not decision.phase:
            return
        metrics.set_phase(uid, ns, decision.phase)
        if decision.previous_phase != decision.phase:
            metrics.phase_transitions.labels(to=decision.phase).inc()
            attempts = (obs.body.get("status") or {}).get("attempts") or 1
            created = parse_time(meta.get("creationTimestamp"))
            if decision.phase == "Training" and attempts == 1 and created is not None:
                metrics.time_to_training.observe(max(0.0, (obs.now - created).total_seconds()))

    def _best_effort_event(
        self, body: Mapping[str, Any], event: Event, now: datetime | None = None
    ) -> None:
        try:
            self.kube.post_event(body, event, now or datetime.now(timezone.utc))
        except Exception as exc:  # an Event is a courtesy; never fail the reconcile for one
            log.warning("could not post event %s: %s", event.reason, exc)


class Sweeper:
    """Reconcile every FineTuneJob every ``timer_interval`` seconds, a few at a time."""

    def __init__(
        self, rec: Reconciler, workers: int = 4, active: Callable[[], bool] | None = None
    ) -> None:
        self.rec = rec
        self.active = active or (lambda: True)
        self.stop_event = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep")
        self.thread = threading.Thread(target=self._loop, name="sweeper", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        interval = self.rec.settings.timer_interval
        while not self.stop_event.wait(interval):
            try:
                if not self.active():
                    continue  # a standby replica: the active one sweeps
            except Exception as exc:
                log.warning("sweep: cannot tell whether this replica is active: %s", exc)
                continue
            try:
                bodies = self.rec.kube.list_jobs(self.rec.settings.namespaces)
            except Exception as exc:
                metrics.reconcile_errors.inc()
                log.warning("sweep: cannot list FineTuneJobs: %s", exc)
                continue
            futures = [self.pool.submit(self.rec.run, b, from_sweep=True) for b in bodies]
            for f in futures:
                f.exception()  # wait for the round; run() never raises


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    kube: Kube,
    active: Callable[[], bool] | None = None,
) -> Reconciler:
    """Register the handlers into ``registry``; returns the reconciler they share.

    ``active`` gates the periodic sweep (see ha.PeeringGate); None means always active.
    """
    rec = Reconciler(kube, settings)
    sweeper = Sweeper(rec, active=active)
    lifetime = settings.peering_lifetime

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.lifetime = lifetime
        # Kopf's bookkeeping goes to annotations: the status schema has no room for it.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="kopf.finetune.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kopf.finetune.dev", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING  # our own Events tell the story
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        settings.execution.max_workers = 16
        sweeper.start()

    @kopf.on.cleanup(registry=registry)
    def stop_sweeper(**_: Any) -> None:
        sweeper.stop()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A private registry has no default login handler: use the kubernetes client's config
        # (in-cluster service account, else $KUBECONFIG), as ``runner.make_api_client`` does.
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def on_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            rec.forget(str(body.get("metadata", {}).get("uid", "")))
            return
        rec.run(body)

    return rec
