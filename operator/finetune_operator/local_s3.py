"""Which object storage ``finetune run`` uses, and the checks made before anything starts.

Why it exists: a manifest written for the cluster names s3:// URIs. On a laptop with no S3
configured, the local runner starts the embedded S3-compatible server
(``finetune_trainer.embedded_s3``: moto's server mode on 127.0.0.1) and points every process at
it; with an endpoint or credentials configured it talks to that S3 for real. The decision and the
reachability check live here, free of any I/O beyond one TCP connect, so they are unit-tested.

Decision (``decide_storage``): no s3:// URI in the manifest → no S3 at all; ``--embedded-s3`` →
embedded; ``spec.storage.endpoint`` set, or AWS credentials in the environment (variables, a
profile, or ~/.aws/credentials) → that S3, for real; otherwise → embedded.

The embedded server keeps its objects in ``<workdir>/s3/<bucket>/<key>`` between runs (loaded at
start, written back when the run ends, Ctrl-C included): checkpoints survive for resume, artifacts
can be read on disk, and putting a file there is one way to seed a bucket.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from finetune_operator.api import FineTuneJobSpec

__all__ = [
    "StorageProblem",
    "check_reachable",
    "credentials_in_env",
    "decide_storage",
    "free_port",
    "is_s3",
    "job_uris",
    "parse_seed",
]

_CRED_VARS = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")


class StorageProblem(Exception):
    """S3 is unreachable, refused us, or lacks an input (the message names the URI/field)."""


def is_s3(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith("s3://")


def job_uris(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    """(field, uri) of every location the job reads (base model, data) or writes (output)."""
    uris: list[tuple[str, str]] = []
    if spec.base_model.uri:
        uris.append(("spec.baseModel.uri", spec.base_model.uri))
    uris += [(f"spec.datasets[{i}].uri", d.uri) for i, d in enumerate(spec.datasets)]
    if spec.validation is not None and spec.validation.uri:
        uris.append(("spec.validation.uri", spec.validation.uri))
    uris += [
        (f"spec.evaluation.datasets[{i}].uri", d.uri)
        for i, d in enumerate(spec.evaluation.datasets)
    ]
    uris.append(("spec.output.uri", spec.output.uri))
    return uris


def credentials_in_env(environ: Mapping[str, str]) -> bool:
    """Whether the environment configures AWS credentials (variables or a credentials file)."""
    if any(environ.get(v) for v in _CRED_VARS):
        return True
    home = environ.get("HOME")
    creds = environ.get("AWS_SHARED_CREDENTIALS_FILE") or (
        f"{home}/.aws/credentials" if home else ""
    )
    return bool(creds) and Path(creds).is_file()


def decide_storage(
    spec: FineTuneJobSpec, environ: Mapping[str, str], *, force_embedded: bool = False
) -> Literal["none", "embedded", "real"]:
    """none: no s3:// URI; real: the configured endpoint/credentials; embedded: loopback server."""
    if not any(is_s3(uri) for _, uri in job_uris(spec)):
        return "none"
    if force_embedded:
        return "embedded"
    if spec.storage.endpoint or credentials_in_env(environ):
        return "real"
    return "embedded"


def parse_seed(arg: str) -> tuple[str, Path]:
    """``s3://bucket/key=PATH`` → (uri, path); ValueError with the fix when malformed."""
    uri, sep, path = arg.partition("=")
    if not sep or not is_s3(uri) or not path:
        raise ValueError(
            f"--seed {arg!r}: expected s3://BUCKET/KEY=LOCAL_PATH "
            "(e.g. --seed s3://data/train.jsonl=./train.jsonl)"
        )
    if len(uri) <= len("s3://") or uri[len("s3://") :].startswith("/"):
        raise ValueError(f"--seed {arg!r}: the URI names no bucket")
    local = Path(path).expanduser()
    if not local.exists():
        raise ValueError(f"--seed {arg!r}: {local} does not exist")
    return uri, local


def check_reachable(endpoint_url: str, field_name: str = "spec.storage.endpoint") -> None:
    """Fail fast, naming the endpoint, when nothing answers there (no retry storm first)."""
    parsed = urlparse(endpoint_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise StorageProblem(
            f"{field_name}: {endpoint_url!r} is not an http(s):// URL; write it like "
            "http://minio.local:9000"
        )
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=3):
            pass
    except OSError as exc:
        raise StorageProblem(
            f"the S3 endpoint {endpoint_url} ({field_name}) does not answer "
            f"({exc.strerror or exc}). Start that S3 server or fix the endpoint; to use the "
            "embedded local S3 instead, leave spec.storage.endpoint empty and unset the AWS "
            "credential variables, or pass --embedded-s3"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for torchrun's rendezvous and the server)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
