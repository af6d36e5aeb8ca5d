"""Is this replica the active one? The peering verdict for the operator's own sweep thread.

Why it exists: with ``--peering`` several replicas run and Kopf pauses the watch handlers of all
but the highest-priority live one. The periodic sweep (handlers.Sweeper) is a plain thread, not a
Kopf handler, so Kopf's pause does not reach it, and Kopf exposes no public way to ask whether it
is paused. Rather than a second election (a Lease could elect a different replica than Kopf did,
and then two replicas would reconcile), the sweep reads the same peering object(s) that Kopf
reads and applies Kopf's own rule (kopf/_core/engines/peering.py, ``process_peering_event``):
this replica works only if it has announced itself and no live peer has a priority higher than or
equal to its own (equal priorities pause everyone). A peering object that cannot be read means
"stand by": never two active replicas, at the price of a missed sweep round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from kubernetes import client

from finetune_operator.settings import OperatorSettings
from finetune_operator.status import parse_time

__all__ = ["PeeringGate", "Verdict", "verdict"]

log = logging.getLogger("finetune_operator")

KOPF_GROUP, KOPF_VERSION = "kopf.dev", "v1"
TIMEOUT = 10


@dataclass(frozen=True)
class Verdict:
    active: bool
    reason: str


def verdict(peers: Mapping[str, Any], identity: str, priority: int, now: datetime) -> Verdict:
    """Kopf's rule over one peering object's ``status`` (identity → priority/lifetime/lastseen)."""
    if identity not in peers or not isinstance(peers.get(identity), Mapping):
        return Verdict(False, f"{identity} has not announced itself in the peering yet")
    blocking: list[str] = []
    for other, info in peers.items():
        if other == identity or not isinstance(info, Mapping):
            continue
        seen = parse_time(info.get("lastseen"))
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
        if seen is not None and seen + lifetime <= now:
            continue  # dead: its keep-alive expired (Kopf cleans it up)
        other_priority = int(info.get("priority", 0))
        if other_priority > priority:
            blocking.append(f"{other} (priority {other_priority} > {priority})")
        elif other_priority == priority:
            blocking.append(f"{other} (same priority {priority}: Kopf pauses both)")
    if blocking:
        return Verdict(False, "standing by for " + ", ".join(blocking))
    return Verdict(True, f"active with priority {priority}")


class PeeringGate:
    """Callable answering "may the sweep act now?"; always yes when standalone."""

    def __init__(
        self,
        custom: client.CustomObjectsApi | None,
        settings: OperatorSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.custom = custom
        self.settings = settings
        self.clock = clock
        self._last: Verdict | None = None

    def __call__(self) -> bool:
        if not self.settings.peering or self.custom is None:
            return True
        v = self._decide()
        if self._last is None or v.active != self._last.active:
            log.info("sweep: %s", v.reason)
        self._last = v
        return v.active

    def _decide(self) -> Verdict:
        s = self.settings
        try:
            bodies = self._read_peerings()
        except Exception as exc:  # unreadable peering: stand by rather than risk two workers
            return Verdict(False, f"cannot read peering {s.peering!r}: {exc}")
        now = self.clock()
        for where, body in bodies:
            v = verdict(body.get("status") or {}, s.identity, s.priority, now)
            if not v.active:
                return Verdict(False, f"{v.reason} [{where}]")
        return Verdict(True, f"active in peering {s.peering!r} with priority {s.priority}")

    def _read_peerings(self) -> list[tuple[str, Mapping[str, Any]]]:
        assert self.custom is not None
        s = self.settings
        if not s.namespaces:  # cluster-wide operator: one ClusterKopfPeering, as Kopf uses
            body = self.custom.get_cluster_custom_object(
                KOPF_GROUP, KOPF_VERSION, "clusterkopfpeerings", s.peering, _request_timeout=TIMEOUT
            )
            return [("cluster-wide", body)]
        out: list[tuple[str, Mapping[str, Any]]] = []
        for ns in s.namespaces:  # namespaced operator: a KopfPeering in each watched namespace
            body = self.custom.get_namespaced_custom_object(
                KOPF_GROUP, KOPF_VERSION, ns, "kopfpeerings", s.peering, _request_timeout=TIMEOUT
            )
            out.append((ns, body))
        return out
