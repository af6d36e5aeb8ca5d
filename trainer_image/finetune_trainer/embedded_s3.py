"""An S3-compatible HTTP server on loopback, for `finetune run` on a laptop and for the tests.

Why it exists: the trainer only speaks object storage (s3:// URIs), and a laptop has no S3. When
a manifest names no endpoint and no credentials are set, the local runner starts this server
(moto's ``ThreadedMotoServer``: the real S3 REST API over HTTP, in a thread of the calling
process) and points the trainer processes at ``endpoint_url``.

Limits (read before relying on it):
- Data lives in memory (moto spools large objects to temporary files) and is LOST when the server
  stops, unless ``data_dir`` is given: then ``data_dir/<bucket>/<key>`` files are loaded into the
  server at start, and every bucket is written back there (objects added, changed and deleted)
  at ``stop()``. Nothing is saved if the process is killed before ``stop()``.
- moto keeps its state per process: two servers started in one process share their buckets.
- Credentials are not checked (any key id/secret works); ``env()`` gives harmless fake ones.
- One process serves every request: fine for tiny models and tests, not a production store.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from finetune_trainer.storage import StorageError, Store, is_s3_uri, parse_s3_uri

__all__ = ["EmbeddedS3", "ensure_bucket", "seed", "start_embedded_s3"]

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "finetune-embedded",
    "AWS_SECRET_ACCESS_KEY": "finetune-embedded-secret",
    "AWS_REGION": "us-east-1",
}


class EmbeddedS3:
    """A running embedded server: ``endpoint_url``, ``store()``, ``stop()``; a context manager."""

    def __init__(self, server: Any, endpoint_url: str, data_dir: Path | None) -> None:
        self._server = server
        self.endpoint_url = endpoint_url
        self.data_dir = data_dir
        self._stopped = False

    def env(self) -> dict[str, str]:
        """Environment for processes that talk to this server (fake credentials, region)."""
        return dict(FAKE_CREDENTIALS)

    def store(self) -> Store:
        """A Store bound to this server (uses the fake credentials, whatever the environment says)."""
        for k, v in FAKE_CREDENTIALS.items():
            os.environ.setdefault(k, v)
        return Store(endpoint_url=self.endpoint_url, region=FAKE_CREDENTIALS["AWS_REGION"])

    def buckets(self) -> list[str]:
        resp = self.store().client.list_buckets()
        return sorted(b["Name"] for b in resp.get("Buckets", []))

    def stop(self) -> None:
        """Save to data_dir (if any), then stop serving. Safe to call twice."""
        if self._stopped:
            return
        try:
            if self.data_dir is not None:
                _save(self.store(), self.data_dir)
        finally:
            self._server.stop()
            self._stopped = True

    def __enter__(self) -> EmbeddedS3:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_embedded_s3(
    host: str = "127.0.0.1", port: int = 0, data_dir: str | Path | None = None
) -> EmbeddedS3:
    """Start the server (port 0: a free port) and, with data_dir, load the buckets saved there."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # moto is in the `local` and `dev` extras
        raise StorageError(
            "the embedded S3 server needs moto: pip install 'finetune-operator[local]', or set "
            "spec.storage.endpoint to a real S3-compatible endpoint"
        ) from exc
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    url_host = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
    embedded = EmbeddedS3(
        server, f"http://{url_host}:{bound_port}", Path(data_dir) if data_dir else None
    )
    if embedded.data_dir is not None:
        try:
            _load(embedded.store(), embedded.data_dir)
        except BaseException:
            server.stop()
            raise
    return embedded


def ensure_bucket(store: Store, bucket: str) -> None:
    """Create the bucket unless it exists."""
    client = store.client
    try:
        client.head_bucket(Bucket=bucket)
        return
    except Exception:
        pass
    try:
        if store.region == "us-east-1":
            client.create_bucket(Bucket=bucket)
        else:
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": store.region}
            )
    except Exception as exc:
        raise store._error(exc, f"s3://{bucket}/") from exc


def seed(store: Store, local_path: str | Path, uri: str) -> list[Any]:
    """Upload a local file or directory to ``uri`` (an s3:// URI), creating its bucket if needed."""
    if not is_s3_uri(uri):
        raise StorageError(f"seed needs an s3:// destination, got {uri!r}")
    ensure_bucket(store, parse_s3_uri(uri).bucket)
    return store.upload(local_path, uri)


def _load(store: Store, data_dir: Path) -> None:
    if not data_dir.is_dir():
        data_dir.mkdir(parents=True, exist_ok=True)
        return
    for bucket_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        ensure_bucket(store, bucket_dir.name)
        if any(bucket_dir.iterdir()):
            store.upload(bucket_dir, f"s3://{bucket_dir.name}/")


def _save(store: Store, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    names = {b["Name"] for b in store.client.list_buckets().get("Buckets", [])}
    for stale in [p for p in data_dir.iterdir() if p.is_dir() and p.name not in names]:
        shutil.rmtree(stale)
    for bucket in sorted(names):
        bucket_dir = data_dir / bucket
        bucket_dir.mkdir(exist_ok=True)
        objects = store.list(f"s3://{bucket}/")
        if objects:
            store.download(f"s3://{bucket}/", bucket_dir)
        keep = {o.key for o in objects}
        for path in sorted(bucket_dir.rglob("*"), reverse=True):
            rel = path.relative_to(bucket_dir).as_posix()
            if path.is_file() and rel not in keep:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
