"""The one level-based reconcile: what is observed now → the next phase, a status patch, actions.

Why it exists: every lifecycle rule of a FineTuneJob (gang start, restarts with backoff, deadlines,
suspend, completion, TTL) is decided here by a pure function of the observed state, so the same
observation always yields the same decision. That makes the operator idempotent (running it twice
changes nothing), crash-safe (a restarted operator re-derives everything from the cluster) and
unit-testable without a cluster. ``handlers.py`` observes, calls ``reconcile`` and applies.

Run state lives in the cluster, never in memory: the attempt being run is ``status.attempts`` (1 +
gang restarts after failures); a Job whose ``finetune.dev/attempt`` label differs is stale and
deleted; the restart delay is measured from the failed Job's Failed condition, so the failed Job is
kept until the delay has passed; GPU-seconds of earlier attempts ride on the Job's annotation.
Ordering for crash safety: the handler writes the status patch before it applies the actions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from finetune_trainer.config import EXIT_BAD_INPUT

from finetune_operator import serving
from finetune_operator.api import API_VERSION, KIND, FineTuneJobSpec
from finetune_operator.resources import (
    ANNOTATION_GPU_SECONDS_BEFORE,
    CONFIG_KEY,
    CONTAINER_NAME,
    LABEL_ATTEMPT,
    JobIdentity,
    build_children,
    build_train_job,
    child_names,
)
from finetune_operator.settings import ReconcileSettings
from finetune_operator.status import (
    STAGES,
    TERMINAL_PHASES,
    TRAINER_FIELDS,
    WARNING_REASONS,
    desired_conditions,
    format_time,
    merge_conditions,
    parse_time,
    stage_rank,
)
from finetune_operator.validation import validate_document

__all__ = [
    "Action",
    "Create",
    "Decision",
    "Delete",
    "DeleteSelf",
    "Event",
    "Observed",
    "Update",
    "fail",
    "reconcile",
]

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
GPU_SECONDS_STEP = 60


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Observed:
    """Everything the reconcile looks at, read from the API just before."""

    body: Mapping[str, Any]
    """The FineTuneJob (metadata, spec, status)."""
    now: datetime
    children: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    """Static children by kind (ServiceAccount, Role, RoleBinding, Service, ConfigMap)."""
    job: Mapping[str, Any] | None = None
    """The batch Job ``<job>-train`` (any attempt), or None."""
    pods: Sequence[Mapping[str, Any]] = ()
    """Pods of ``<job>-train`` (any attempt)."""
    base_job: Mapping[str, Any] | None = None
    """The FineTuneJob named by spec.baseModel.fromJob, or None (absent or not asked for)."""
    endpoint: serving.EndpointObservation | None = None
    """The serving endpoint's Deployment/Service (read only while a serving job is active)."""


# ----------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Create:
    """Create this object (an existing one of the same name is left as it is)."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class Update:
    """Merge-patch an existing child (kind/name) with this patch."""

    kind: str
    name: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    """Delete a child; deleting the Job also deletes its pods at once (no GPU stays held)."""

    kind: str
    name: str


@dataclass(frozen=True)
class DeleteSelf:
    """Delete the FineTuneJob itself (ttlSecondsAfterFinished)."""


Action = Create | Update | Delete | DeleteSelf | serving.ServingPut | serving.ServingPatch


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the FineTuneJob."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    """The reconcile's verdict."""

    phase: str
    reason: str
    message: str
    status_patch: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    previous_phase: str | None = None


# ----------------------------------------------------------------------------------- helpers


def _validated_spec(body: Mapping[str, Any]) -> tuple[FineTuneJobSpec | None, list[str]]:
    """The spec checked by the same rules as admission (``validation``); problems name fields."""
    meta = body.get("metadata") or {}
    doc = {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": body.get("kind", KIND),
        "metadata": {"name": meta.get("name", ""), "namespace": meta.get("namespace")},
        "spec": body.get("spec") or {},
    }
    job, problems = validate_document(doc)
    if job is None:
        return None, problems or ["spec: invalid"]
    return job.spec, []


def _cond(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def _job_failed(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return _cond(job, "Failed") or _cond(job, "FailureTarget")


def _job_complete(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return _cond(job, "Complete") or _cond(job, "SuccessCriteriaMet")


def _trainer_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs.get("state") or {})
    return {}


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    term = _trainer_state(pod).get("terminated")
    return dict(term) if isinstance(term, Mapping) else None


def _pod_index(pod: Mapping[str, Any]) -> int:
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(
        COMPLETION_INDEX
    )
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return -1


def _pod_started(pod: Mapping[str, Any]) -> datetime | None:
    state = _trainer_state(pod)
    for key in ("running", "terminated"):
        sub = state.get(key)
        if isinstance(sub, Mapping) and parse_time(sub.get("startedAt")):
            return parse_time(sub.get("startedAt"))
    if (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
        return parse_time((pod.get("status") or {}).get("startTime"))
    return None


def _pod_finished(pod: Mapping[str, Any]) -> datetime | None:
    term = _terminated(pod)
    return parse_time(term.get("finishedAt")) if term else None


def gpu_seconds(pods: Sequence[Mapping[str, Any]], gpus_per_pod: int, now: datetime) -> int:
    """GPU-seconds the pods held: gpus * (finish or now - start), summed."""
    total = 0.0
    for pod in pods:
        start = _pod_started(pod)
        if start is None:
            continue
        end = _pod_finished(pod) or now
        total += max(0.0, (end - start).total_seconds()) * gpus_per_pod
    return int(total)


def _failure_summary(pods: Sequence[Mapping[str, Any]]) -> tuple[int | None, str]:
    """(exit code, message) of the first failed trainer, bad-input failures first."""
    failed = []
    for pod in pods:
        term = _terminated(pod)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Failed" or (term and term.get("exitCode") not in (None, 0)):
            code = term.get("exitCode") if term else None
            failed.append((pod, code if isinstance(code, int) else None, term or {}))
    if not failed:
        return None, "the training Job failed"
    failed.sort(key=lambda f: (f[1] != EXIT_BAD_INPUT, _pod_index(f[0])))
    pod, code, term = failed[0]
    name = (pod.get("metadata") or {}).get("name", "?")
    detail = str(term.get("message") or term.get("reason") or "").strip()
    msg = f"pod {name} (node rank {_pod_index(pod)}) exited with code {code}"
    if detail:
        msg += f": {detail[:300]}"
    return code, msg


def _summary(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The trainer's final summary from a termination message (node 0 first), or {}."""
    for pod in sorted(pods, key=_pod_index):
        term = _terminated(pod)
        if not term or not term.get("message"):
            continue
        try:
            doc = json.loads(str(term["message"]))
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


def _backoff(attempt: int, s: ReconcileSettings) -> float:
    return float(min(s.restart_backoff_max_seconds, s.restart_backoff_seconds * 2 ** (attempt - 1)))


# -------------------------------------------------------------------------------- reconcile


class _Builder:
    """Accumulates one decision; keeps ``reconcile`` readable."""

    def __init__(self, obs: Observed, settings: ReconcileSettings) -> None:
        self.obs = obs
        self.s = settings
        self.meta: Mapping[str, Any] = obs.body.get("metadata") or {}
        self.status: Mapping[str, Any] = obs.body.get("status") or {}
        self.ident = JobIdentity.from_body(obs.body)
        self.names = child_names(self.ident.name)
        self.patch: dict[str, Any] = {}
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.requeue: float | None = None

    def set(self, key: str, value: Any) -> None:
        if self.status.get(key) != value:
            self.patch[key] = value

    def wait(self, seconds: float) -> None:
        seconds = max(0.5, seconds)
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def delete_job(self) -> None:
        if self.obs.job is not None and not (self.obs.job.get("metadata") or {}).get(
            "deletionTimestamp"
        ):
            self.actions.append(Delete("Job", self.names["job"]))

    def finish(
        self,
        phase: str,
        reason: str,
        message: str,
        *,
        stage: object = None,
        evaluation: Mapping[str, Any] | None = None,
        serving_enabled: bool = False,
    ) -> Decision:
        old_phase = self.status.get("phase")
        old_reason = self.status.get("reason")
        gen = self.meta.get("generation")
        self.set("phase", phase)
        self.set("reason", reason)
        self.set("message", message)
        if isinstance(gen, int):
            self.set("observedGeneration", gen)
        if not self.status.get("runId") and self.ident.uid:
            self.set("runId", self.ident.run_id)
        if stage is None:
            stage = (self.status.get("progress") or {}).get("stage")
        if evaluation is None:
            evaluation = self.status.get("evaluation") or {}
        desired = desired_conditions(
            phase=phase,
            reason=reason,
            message=message,
            stage=stage,
            evaluation=evaluation,
            serving_enabled=serving_enabled,
            existing=self.status.get("conditions") or [],
        )
        conds = merge_conditions(
            self.status.get("conditions") or [],
            desired,
            now=self.obs.now,
            generation=gen if isinstance(gen, int) else None,
        )
        self.set("conditions", conds)
        # gpuSeconds grows every second while pods run: written alone it is written at most every
        # GPU_SECONDS_STEP, so that the operator's own status patches do not feed back into a
        # watch-event → reconcile → patch loop.
        if set(self.patch) == {"gpuSeconds"}:
            old = self.status.get("gpuSeconds")
            if isinstance(old, int) and 0 <= self.patch["gpuSeconds"] - old < GPU_SECONDS_STEP:
                del self.patch["gpuSeconds"]
        if (old_phase, old_reason) != (phase, reason):
            etype = "Warning" if phase == "Failed" or reason in WARNING_REASONS else "Normal"
            prefix = f"{old_phase or 'New'} → {phase}" if old_phase != phase else phase
            self.events.insert(0, Event(etype, reason, f"{prefix}: {message}"[:1000]))
        return Decision(
            phase=phase,
            reason=reason,
            message=message,
            status_patch=self.patch,
            actions=self.actions,
            events=self.events,
            requeue_after=self.requeue,
            previous_phase=str(old_phase) if old_phase else None,
        )


def reconcile(obs: Observed, settings: ReconcileSettings | None = None) -> Decision:
    """Decide the next step for one FineTuneJob from what is observed now (pure)."""
    s = settings or ReconcileSettings()
    b = _Builder(obs, s)
    status = b.status
    phase = str(status.get("phase") or "")

    # Being deleted: the garbage collector removes the children; nothing to decide.
    if (obs.body.get("metadata") or {}).get("deletionTimestamp"):
        return Decision(phase=phase, reason=str(status.get("reason") or ""), message="")

    # Terminal: keep the verdict; make sure no pod stays up after a failure; honour the TTL.
    if phase in TERMINAL_PHASES:
        return _terminal(b, phase)

    spec, problems = _validated_spec(obs.body)
    if spec is None:
        b.delete_job()
        b.set("completionTime", format_time(obs.now))
        shown = "; ".join(problems[:3]) + (
            f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        msg = shown + " — fix the manifest and re-create the FineTuneJob"
        return b.finish("Failed", "InvalidSpec", msg)
    serving_on = spec.serving.enabled
    fin = _finisher(b, serving_on)

    # Resolve the base model (fromJob → the other job's output), reusing an earlier resolution.
    base_uri, wait_reason = _resolve_base_model(b, spec)
    if base_uri is None:
        if wait_reason[0] == "Failed":
            b.delete_job()
            b.set("completionTime", format_time(obs.now))
            return fin("Failed", wait_reason[1], wait_reason[2])
        b.wait(5)
        return fin("Pending", wait_reason[1], wait_reason[2])

    attempt = int(status.get("attempts") or 1)
    # Static children first (the ConfigMap carries the attempt number the Job will run).
    for manifest in build_children(
        b.ident,
        spec,
        base_model_uri=base_uri,
        attempt=attempt,
        report_interval_seconds=s.trainer_report_interval_seconds,
        port=s.default_port,
    ):
        _ensure(b, manifest)
    b.set("attempts", attempt)

    job = obs.job
    job_meta = (job or {}).get("metadata") or {}
    job_attempt = str((job_meta.get("labels") or {}).get(LABEL_ATTEMPT, ""))
    pods = [
        p
        for p in obs.pods
        if str(((p.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT)) == str(attempt)
    ]
    gpus = spec.distributed.gpus_per_node
    base_gpu = int((job_meta.get("annotations") or {}).get(ANNOTATION_GPU_SECONDS_BEFORE) or 0)
    if job is not None and job_attempt == str(attempt):
        b.set("gpuSeconds", base_gpu + gpu_seconds(pods, gpus, obs.now))
    elif status.get("gpuSeconds") is None:
        b.set("gpuSeconds", 0)

    # Suspend: pods removed, checkpoint kept; resume re-creates the Job for the same attempt.
    if spec.suspend:
        b.delete_job()
        ckpt = (status.get("checkpoint") or {}).get("step")
        kept = f"checkpoint at step {ckpt} kept" if ckpt is not None else "no checkpoint yet"
        return fin(
            "Suspended",
            "Suspended",
            f"training pods removed, {kept}; set spec.suspend to false to resume",
        )

    # activeDeadlineSeconds, counted from the first gang start.
    start = parse_time(status.get("startTime"))
    ads = spec.run_policy.active_deadline_seconds
    if ads and start is not None:
        left = ads - (obs.now - start).total_seconds()
        if left <= 0:
            b.delete_job()
            b.set("completionTime", format_time(obs.now))
            return fin(
                "Failed",
                "DeadlineExceeded",
                f"the job ran longer than runPolicy.activeDeadlineSeconds={ads}; pods removed",
            )
        b.wait(left)

    # A Job of another attempt, or one being deleted: wait for it to go away.
    if job is not None and (job_attempt != str(attempt) or job_meta.get("deletionTimestamp")):
        b.delete_job()
        b.wait(1)
        return fin(
            "Pending",
            "Restarting",
            f"waiting for the previous gang to stop before attempt {attempt} starts",
        )

    if job is None:
        b.actions.append(
            Create(
                build_train_job(
                    b.ident,
                    spec,
                    attempt=attempt,
                    gpu_seconds_before=int(status.get("gpuSeconds") or 0),
                    port=s.default_port,
                )
            )
        )
        if start is None:
            b.set("startTime", format_time(obs.now))
        b.wait(1)
        n = spec.distributed.nodes
        return fin(
            "Pending", "Creating", f"creating the training gang ({n} pod(s), attempt {attempt})"
        )

    return _running(b, spec, job, pods, attempt, fin)


def fail(
    obs: Observed, reason: str, message: str, settings: ReconcileSettings | None = None
) -> Decision:
    """Fail the job at once (e.g. the API rejected a child rendered from the spec)."""
    b = _Builder(obs, settings or ReconcileSettings())
    b.delete_job()
    b.set("completionTime", format_time(obs.now))
    serving_on = bool(((obs.body.get("spec") or {}).get("serving") or {}).get("enabled"))
    return b.finish("Failed", reason, message, serving_enabled=serving_on)


class Finisher(Protocol):
    """``_Builder.finish`` with the job's serving flag bound."""

    def __call__(self, phase: str, reason: str, message: str, **kw: Any) -> Decision: ...


def _finisher(b: _Builder, serving_on: bool) -> Finisher:
    def fin(phase: str, reason: str, message: str, **kw: Any) -> Decision:
        return b.finish(phase, reason, message, serving_enabled=serving_on, **kw)

    return fin


def _terminal(b: _Builder, phase: str) -> Decision:
    status = b.status
    if phase == "Failed":
        b.delete_job()
    raw_spec = b.obs.body.get("spec") or {}
    serving_on = bool((raw_spec.get("serving") or {}).get("enabled"))
    ttl = (raw_spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    done = parse_time(status.get("completionTime"))
    if done is None:
        b.set("completionTime", format_time(b.obs.now))
        done = b.obs.now
    if isinstance(ttl, int) and ttl >= 0:
        left = ttl - (b.obs.now - done).total_seconds()
        if left <= 0:
            b.actions.append(DeleteSelf())
            b.events.append(
                Event(
                    "Normal",
                    "Expired",
                    f"deleted {ttl}s after it finished (runPolicy.ttlSecondsAfterFinished)",
                )
            )
        else:
            b.wait(left)
    if serving_on and b.obs.endpoint is not None and not b.actions:
        # A champion that finished: say so when a newer job took the endpoint; keep replicas.
        serving_status, serving_actions = serving.follow_champion(
            b.ident, raw_spec.get("serving") or {}, status, b.obs.endpoint
        )
        if serving_status is not None:
            b.set("serving", serving_status)
            b.events.append(Event("Normal", "NoLongerServing", str(serving_status["message"])))
        b.actions.extend(serving_actions)
    return b.finish(
        phase,
        str(status.get("reason") or phase),
        str(status.get("message") or ""),
        serving_enabled=serving_on,
    )


def _resolve_base_model(
    b: _Builder, spec: FineTuneJobSpec
) -> tuple[str | None, tuple[str, str, str]]:
    """(uri, _) or (None, (phase, reason, message)) while the fromJob is not usable."""
    if spec.base_model.uri:
        return spec.base_model.uri, ("", "", "")
    other = spec.base_model.from_job or ""
    cm = b.obs.children.get("ConfigMap")
    if cm:
        try:
            uri = json.loads((cm.get("data") or {}).get(CONFIG_KEY, "{}")).get("baseModelUri")
        except ValueError:
            uri = None
        if uri:
            return str(uri), ("", "", "")
    if b.obs.base_job is None:
        return None, (
            "Pending",
            "WaitingForBaseJob",
            f"baseModel.fromJob: FineTuneJob {other!r} "
            f"not found in namespace {b.ident.namespace!r}; waiting for it",
        )
    st = b.obs.base_job.get("status") or {}
    if st.get("phase") == "Failed":
        return None, (
            "Failed",
            "BaseJobFailed",
            f"baseModel.fromJob: FineTuneJob {other!r} "
            "failed; point baseModel at a succeeded job or a uri",
        )
    if st.get("phase") not in ("Succeeded", "Deploying"):
        return None, (
            "Pending",
            "WaitingForBaseJob",
            f"baseModel.fromJob: waiting for "
            f"FineTuneJob {other!r} to succeed (phase {st.get('phase') or 'none'})",
        )
    art = st.get("artifacts") or {}
    uri = art.get("mergedUri") or art.get("uri")
    if not uri:
        return None, (
            "Failed",
            "BaseJobHasNoArtifacts",
            f"baseModel.fromJob: FineTuneJob "
            f"{other!r} succeeded but reports no status.artifacts.uri",
        )
    return str(uri), ("", "", "")


def _ensure(b: _Builder, manifest: dict[str, Any]) -> None:
    kind = str(manifest["kind"])
    name = str(manifest["metadata"]["name"])
    seen = b.obs.children.get(kind)
    if seen is None:
        b.actions.append(Create(manifest))
        return
    for key in ("data", "rules"):
        if key in manifest and seen.get(key) != manifest[key]:
            b.actions.append(Update(kind, name, {key: manifest[key]}))


def _restart_or_fail(
    b: _Builder,
    spec: FineTuneJobSpec,
    attempt: int,
    cause: str,
    message: str,
    fin: Finisher,
) -> Decision:
    limit = spec.run_policy.backoff_limit
    if attempt - 1 >= limit:
        b.delete_job()
        b.set("completionTime", format_time(b.obs.now))
        return fin(
            "Failed",
            "BackoffLimitExceeded",
            f"{message}; {attempt - 1} restart(s) used of runPolicy.backoffLimit={limit} "
            f"(last failure: {cause})",
        )
    b.set("attempts", attempt + 1)
    b.delete_job()
    return fin(
        "Pending",
        cause,
        f"{message}; restarting the gang from the latest checkpoint (attempt {attempt + 1} of "
        f"{limit + 1})",
    )


def _running(
    b: _Builder,
    spec: FineTuneJobSpec,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    attempt: int,
    fin: Finisher,
) -> Decision:
    obs = b.obs
    status = b.status
    nodes = spec.distributed.nodes
    progress = status.get("progress") or {}
    stage = progress.get("stage")
    job_created = parse_time((job.get("metadata") or {}).get("creationTimestamp")) or obs.now
    hb = parse_time(progress.get("lastHeartbeatTime"))
    fresh = hb is not None and hb >= job_created

    failed = _job_failed(job)
    if failed is not None:
        code, detail = _failure_summary(pods)
        if code == EXIT_BAD_INPUT or (failed.get("reason") == "PodFailurePolicy" and code is None):
            b.delete_job()
            b.set("completionTime", format_time(obs.now))
            return fin(
                "Failed",
                "InvalidData",
                f"{detail} — the trainer rejected its input "
                "(bad data or config); fix it and re-create the job, retrying cannot help",
            )
        limit = spec.run_policy.backoff_limit
        if attempt - 1 >= limit:
            return _restart_or_fail(b, spec, attempt, "PodFailed", detail, fin)
        failed_at = parse_time(failed.get("lastTransitionTime")) or job_created
        delay = _backoff(attempt, b.s)
        left = delay - (obs.now - failed_at).total_seconds()
        if left > 0:
            b.wait(left)
            return fin(
                "Pending",
                "BackoffRestart",
                f"{detail}; restarting the gang in "
                f"{int(left + 0.999)}s (backoff {int(delay)}s, attempt {attempt + 1} of "
                f"{limit + 1})",
            )
        return _restart_or_fail(b, spec, attempt, "Restarting", detail, fin)

    if _job_complete(job) is not None:
        return _completed(b, spec, pods, fin)

    # The gang is up when every index has a running (or finished) pod.
    up = {
        _pod_index(p)
        for p in pods
        if (p.get("status") or {}).get("phase") in ("Running", "Succeeded")
    }
    gang_up = len(up) >= nodes
    queued = bool((job.get("spec") or {}).get("suspend"))
    if not gang_up and not fresh:
        if queued:
            b.wait(5)
            return fin(
                "Pending",
                "Queued",
                f"waiting for Kueue to admit the gang (queue {spec.run_policy.queue_name!r})",
            )
        since = parse_time((job.get("status") or {}).get("startTime")) or job_created
        limit_s = spec.run_policy.max_pending_seconds
        waited = (obs.now - since).total_seconds()
        if waited >= limit_s:
            b.delete_job()
            b.set("completionTime", format_time(obs.now))
            return fin(
                "Failed",
                "Unschedulable",
                f"only {len(up)} of {nodes} training pods "
                f"were running after runPolicy.maxPendingSeconds={limit_s}; pods removed "
                "so no GPU stays held",
            )
        b.wait(limit_s - waited)
        return fin("Pending", "Scheduling", f"{len(up)} of {nodes} training pods running")

    # Stall: no heartbeat for progressDeadlineSeconds since the gang (or the last report) started.
    started = [t for t in (_pod_started(p) for p in pods) if t is not None]
    ref = max(started) if started else job_created
    if fresh and hb is not None and hb > ref:
        ref = hb
    pds = spec.run_policy.progress_deadline_seconds
    silent = (obs.now - ref).total_seconds()
    if silent >= pds:
        return _restart_or_fail(
            b,
            spec,
            attempt,
            "Stalled",
            f"no progress report from the trainer for {int(silent)}s "
            f"(runPolicy.progressDeadlineSeconds={pds})",
            fin,
        )
    b.wait(pds - silent)

    rank = stage_rank(stage) if fresh else -1
    if rank < STAGES.index("training"):
        what = f"trainer stage {stage}" if fresh and stage else "pulling model and data"
        return fin(
            "Initializing",
            "Initializing",
            f"{what} (attempt {attempt})",
            stage=stage if fresh else None,
        )
    if rank == STAGES.index("training"):
        pct = progress.get("percent")
        msg = f"training step {progress.get('step', 0)}/{progress.get('totalSteps', '?')}"
        msg += f" ({pct}%)" if pct is not None else ""
        return fin("Training", "Training", msg + f", attempt {attempt}", stage=stage)
    if rank == STAGES.index("evaluating"):
        return fin("Evaluating", "Evaluating", "evaluating the fine-tuned model", stage=stage)
    return fin("Uploading", "Uploading", "uploading artifacts", stage=stage)


def _completed(
    b: _Builder, spec: FineTuneJobSpec, pods: Sequence[Mapping[str, Any]], fin: Finisher
) -> Decision:
    """The Job completed: fill trainer fields the status lacks from the termination message."""
    status = b.status
    summary = _summary(pods)
    for key in TRAINER_FIELDS:
        if key not in status and isinstance(summary.get(key), dict):
            b.patch[key] = summary[key]
    evaluation = dict(status.get("evaluation") or {})
    raw_eval = summary.get("evaluation")
    summary_eval: dict[str, Any] = raw_eval if isinstance(raw_eval, dict) else {}
    for key in ("results", "baseline"):
        if not evaluation.get(key) and summary_eval.get(key):
            evaluation[key] = summary_eval[key]
            b.patch.setdefault("evaluation", {})[key] = summary_eval[key]
    # The evaluation gate (operator-owned evaluation.passed/message), for every job.
    view = dict(status)
    view.update(b.patch)
    view["evaluation"] = evaluation
    verdict = serving.gate_verdict(spec, view)
    if any(evaluation.get(k) != v for k, v in verdict.items()):
        evaluation.update(verdict)
        b.patch.setdefault("evaluation", {}).update(verdict)
    if spec.serving.enabled:
        d = serving.decide(b.ident, spec, view, b.obs.endpoint, b.obs.now)
        b.actions.extend(d.actions)
        if d.serving_status and status.get("serving") != d.serving_status:
            b.patch["serving"] = d.serving_status
        if d.requeue_after is not None:
            b.wait(d.requeue_after)
        if d.phase in TERMINAL_PHASES:
            b.set("completionTime", status.get("completionTime") or format_time(b.obs.now))
        return fin(d.phase, d.reason, d.message, stage="done", evaluation=evaluation)
    b.set("completionTime", status.get("completionTime") or format_time(b.obs.now))
    art = (status.get("artifacts") or b.patch.get("artifacts") or {}).get("uri")
    where = f"; artifacts at {art}" if art else ""
    gate = "" if verdict["passed"] else f"; {verdict['message']} (serving is disabled)"
    return fin(
        "Succeeded",
        "Succeeded",
        f"training finished{where}{gate}",
        stage="done",
        evaluation=evaluation,
    )
