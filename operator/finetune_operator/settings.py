"""Operator settings: one frozen dataclass, filled from command-line flags and environment variables.

Why it exists: the reconcile logic needs a few tunables (timer interval, restart backoff) and the
runner needs ports and scoping; keeping them in one typed value (rather than module globals) lets
the pure reconcile take them as an argument and the tests pick short intervals.

Every flag has an environment variable of the same name in upper case with the prefix
``FINETUNE_OPERATOR_`` (``--timer-interval`` ↔ ``FINETUNE_OPERATOR_TIMER_INTERVAL``); a flag wins
over the environment.

HA: with ``--peering`` several replicas run and Kopf lets only the one with the highest priority
work. Replicas sharing a priority pause each other (all of them), so each replica needs its own:
``--priority`` sets it; left unset, it is derived from the replica's name (``$POD_NAME``, which the
Helm chart sets; else ``<hostname>-<pid>``) hashed into 1..``DERIVED_PRIORITY_MAX``. An operator
started by hand with a priority above that range takes over from every derived replica.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DERIVED_PRIORITY_MAX",
    "ENV_PREFIX",
    "OperatorSettings",
    "ReconcileSettings",
    "build_parser",
    "derive_priority",
    "from_args",
    "replica_name",
]

ENV_PREFIX = "FINETUNE_OPERATOR_"
DERIVED_PRIORITY_MAX = 32767
"""Derived priorities lie in 1..32767; two replicas collide with a chance of 1 in 32767."""


def replica_name(environ: Mapping[str, str]) -> str:
    """This replica's name: ``$POD_NAME`` (set by the chart), else ``<hostname>-<pid>``."""
    return environ.get("POD_NAME", "").strip() or f"{socket.gethostname()}-{os.getpid()}"


def derive_priority(name: str) -> int:
    """A stable priority in 1..DERIVED_PRIORITY_MAX for a replica name (SHA-256, not ``hash()``,
    whose value changes from one process to the next)."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return 1 + digest % DERIVED_PRIORITY_MAX


@dataclass(frozen=True)
class ReconcileSettings:
    """Knobs of the pure reconcile (passed into ``reconcile.reconcile``)."""

    restart_backoff_seconds: float = 10.0
    """Delay before the first gang restart; doubles with each further attempt."""
    restart_backoff_max_seconds: float = 600.0
    """Upper bound of the restart delay."""
    trainer_report_interval_seconds: float = 10.0
    """How often the trainer may patch status (written into the trainer config)."""
    default_port: int = 29500
    """MASTER_PORT of the torch rendezvous."""


@dataclass(frozen=True)
class OperatorSettings:
    """Everything ``finetune operator`` is configured with."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means every namespace (cluster-wide)."""
    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (0 disables it)."""
    liveness_port: int = 8081
    """Port of the liveness endpoint GET /healthz (0 disables it)."""
    peering: str = ""
    """Kopf peering name for HA (several replicas, one active); empty means standalone."""
    priority: int = 0
    """Kopf peering priority of this replica (the highest live one works; 0 when standalone)."""
    identity: str = ""
    """This replica's identity in the peering object (its replica name); empty when standalone."""
    peering_lifetime: int = 60
    """Seconds a replica's keep-alive stays valid; a SIGKILLed active replica is replaced after it."""
    timer_interval: float = 10.0
    """Seconds between periodic reconciles of every FineTuneJob (deadlines, child changes)."""
    verbose: bool = False
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)


def _env(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _optional_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = _env(environ, name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(
            f"finetune operator: {ENV_PREFIX}{name.upper().replace('-', '_')}={raw!r} is not an "
            "integer; set a whole number or unset it"
        ) from None


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``finetune operator`` argument parser, with defaults taken from the environment."""
    env = os.environ if environ is None else environ
    d = OperatorSettings()
    r = d.reconcile
    p = argparse.ArgumentParser(
        prog="finetune operator",
        description="Run the FineTuneJob operator against the cluster of $KUBECONFIG (or the "
        "in-cluster service account). Flags may also be given as FINETUNE_OPERATOR_<FLAG> "
        "environment variables.",
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="namespace to watch (repeatable, or comma-separated); default: all namespaces",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env(env, "metrics-port", str(d.metrics_port))),
        help="Prometheus /metrics port, 0 to disable (default %(default)s)",
    )
    p.add_argument(
        "--liveness-port",
        type=int,
        default=int(_env(env, "liveness-port", str(d.liveness_port))),
        help="liveness endpoint port (GET /healthz), 0 to disable (default %(default)s)",
    )
    p.add_argument(
        "--peering",
        default=_env(env, "peering", d.peering),
        help="Kopf peering name for HA; empty = standalone (default)",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="no peering even if --peering is set (the default when --peering is empty)",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=_optional_int(env, "priority"),
        help="Kopf peering priority of this replica; the highest live replica works, the others "
        "stand by. Default: derived from $POD_NAME (or hostname and pid), in 1.."
        f"{DERIVED_PRIORITY_MAX}",
    )
    p.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(_env(env, "peering-lifetime", str(d.peering_lifetime))),
        help="seconds a keep-alive in the peering stays valid: a standby takes over at most this "
        "long after the active replica dies (default %(default)s)",
    )
    p.add_argument(
        "--timer-interval",
        type=float,
        default=float(_env(env, "timer-interval", str(d.timer_interval))),
        help="seconds between periodic reconciles (default %(default)s)",
    )
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=float(_env(env, "restart-backoff", str(r.restart_backoff_seconds))),
        help="seconds before the first gang restart, doubled per attempt (default %(default)s)",
    )
    p.add_argument(
        "--restart-backoff-max",
        type=float,
        default=float(_env(env, "restart-backoff-max", str(r.restart_backoff_max_seconds))),
        help="cap of the gang restart delay (default %(default)s)",
    )
    p.add_argument(
        "--trainer-report-interval",
        type=float,
        default=float(_env(env, "trainer-report-interval", str(r.trainer_report_interval_seconds))),
        help="minimum seconds between the trainer's status patches (default %(default)s)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def from_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Parse flags (falling back to the environment) into settings; argparse exits on errors."""
    env = os.environ if environ is None else environ
    parser = build_parser(env)
    a = parser.parse_args(list(argv))
    raw_ns: list[str] = a.namespace or [
        n for n in _env(env, "namespace", "").split(",") if n.strip()
    ]
    namespaces = tuple(
        sorted({part.strip() for item in raw_ns for part in item.split(",") if part.strip()})
    )
    if a.timer_interval <= 0:
        parser.error("--timer-interval must be > 0 seconds")
    if a.restart_backoff < 0 or a.restart_backoff_max < a.restart_backoff:
        parser.error("--restart-backoff must be >= 0 and <= --restart-backoff-max")
    if a.peering_lifetime < 1:
        parser.error("--peering-lifetime must be >= 1 second")
    peering = "" if a.standalone else a.peering
    identity = replica_name(env) if peering else ""
    if not peering:
        priority = 0
    elif a.priority is not None:
        priority = a.priority
    else:
        priority = derive_priority(identity)
    return OperatorSettings(
        namespaces=namespaces,
        metrics_port=a.metrics_port,
        liveness_port=a.liveness_port,
        peering=peering,
        priority=priority,
        identity=identity,
        peering_lifetime=a.peering_lifetime,
        timer_interval=a.timer_interval,
        verbose=a.verbose,
        reconcile=ReconcileSettings(
            restart_backoff_seconds=a.restart_backoff,
            restart_backoff_max_seconds=a.restart_backoff_max,
            trainer_report_interval_seconds=a.trainer_report_interval,
        ),
    )
