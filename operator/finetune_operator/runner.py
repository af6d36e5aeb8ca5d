"""``finetune operator``: run the Kopf operator against a cluster.

Why it exists: the entry point wires settings, the Kubernetes client, the handlers, /metrics and
the liveness endpoint together, and nothing more. It talks to the cluster of ``$KUBECONFIG`` (or
the in-cluster service account), in all namespaces or those given with ``--namespace``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import kopf
from kubernetes import client, config

from finetune_operator import handlers, metrics
from finetune_operator.ha import PeeringGate
from finetune_operator.kube import Kube
from finetune_operator.settings import OperatorSettings, from_args

__all__ = ["cli", "make_api_client"]

log = logging.getLogger("finetune_operator")


def make_api_client() -> client.ApiClient:
    """A client for the in-cluster service account, or else the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def run(settings: OperatorSettings) -> int:
    """Run until SIGINT/SIGTERM."""
    api = make_api_client()
    registry = kopf.OperatorRegistry()
    gate = PeeringGate(client.CustomObjectsApi(api), settings)
    handlers.register(registry, settings, Kube(api), active=gate)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
        log.info("metrics on :%d/metrics", settings.metrics_port)
    liveness = (
        f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    )
    scope = ", ".join(settings.namespaces) or "all namespaces"
    log.info("watching FineTuneJobs in %s (timer %.1fs)", scope, settings.timer_interval)
    if settings.peering:
        log.info(
            "peering %r as %s with priority %d (keep-alive lifetime %ds)",
            settings.peering,
            settings.identity,
            settings.priority,
            settings.peering_lifetime,
        )
    # Our own identity (the replica name) so that ha.PeeringGate finds this replica in the peering;
    # Kopf types it as a NewType of str that it does not export.
    identity: Any = settings.identity or None
    kopf.run(
        registry=registry,
        standalone=not settings.peering,
        peering_name=settings.peering or None,
        priority=settings.priority if settings.peering else None,
        identity=identity,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=liveness,
    )
    return 0


def cli(argv: Sequence[str]) -> int:
    settings = from_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not settings.verbose:
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        return run(settings)
    except config.ConfigException as exc:
        print(
            f"finetune operator: no cluster configuration: {exc}. Set KUBECONFIG to a kubeconfig "
            "file, or run inside a pod with a service account.",
            file=sys.stderr,
        )
        return 2
