"""Object storage for the trainer and the server: s3:// URIs and local paths behind one ``Store``.

Why it exists: every byte a FineTuneJob reads (base model, datasets, checkpoints) or writes
(checkpoints, artifacts) goes through here, so the rules of ARCHITECTURE.md §4 live in one place:

- s3:// URIs on AWS or any S3-compatible endpoint (MinIO, Ceph: path-style addressing), and plain
  local paths (``finetune run``) with the same layout and the same guarantees.
- Parallel multipart transfers through boto3's transfer manager (settings in ``TransferSettings``,
  measured in bench/storage/), retries of transient errors (botocore ``standard`` retry mode),
  incomplete multipart uploads aborted when a transfer fails.
- Files already present with the same size and ETag are not transferred again.
- Object keys that would escape the local target directory (``../x``, absolute keys) are refused
  before anything is written.
- ``push_run`` uploads a run, then ``manifest.json`` (path, size, sha256 of every file), then
  ``_SUCCESS`` last; it never writes outside the run's prefix. ``is_complete`` checks all three.
- Failures raise ``StorageError`` whose message names the bucket/URI and says what to do.

Bytes moved are counted in ``COUNTERS`` (read by the trainer's metrics: bytes pulled/pushed).
``progress(bytes_done, bytes_total)`` callbacks are called from transfer worker threads, one at a
time and in order (keep them cheap).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune_operator.api import StorageSpec

__all__ = [
    "COUNTERS",
    "MANIFEST_NAME",
    "SUCCESS_NAME",
    "ObjectInfo",
    "ProgressFn",
    "S3Location",
    "StorageError",
    "Store",
    "TransferCounters",
    "TransferSettings",
    "is_s3_uri",
    "join_uri",
    "open_store",
    "parse_s3_uri",
    "safe_relative_path",
]

MANIFEST_NAME = "manifest.json"
SUCCESS_NAME = "_SUCCESS"
MiB = 1024 * 1024

ProgressFn = Callable[[int, int], None]


class StorageError(RuntimeError):
    """A storage operation failed; the message names the bucket/URI and says what to do."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or local file).

    uri: the object's full URI (``s3://bucket/key``) or absolute local path.
    key: its path relative to the URI that was listed / downloaded / uploaded (for a single
         object, its base name); POSIX separators.
    size: bytes.
    etag: the S3 ETag (quotes stripped), or the sha256 hex digest of a local file.
    path: the local file involved (download destination, upload source, local file), or "".
    """

    uri: str
    key: str
    size: int
    etag: str
    path: str = ""


@dataclass(frozen=True)
class TransferSettings:
    """Tuned transfer-manager settings (see bench/storage/README.md for the measurements).

    max_concurrency: parallel requests per call (across files and parts of one file).
    multipart_threshold / multipart_chunksize: files at or above the threshold go multipart in
    parts of chunksize bytes (S3 allows at most 10,000 parts: the chunk grows for huge files).
    max_attempts / retry_mode: total attempts (first try included) of a request that fails with
    throttling, 5xx or connection errors (botocore retry mode standard or adaptive).
    """

    max_concurrency: int = 16
    multipart_threshold: int = 16 * MiB
    multipart_chunksize: int = 16 * MiB
    max_attempts: int = 6
    retry_mode: str = "standard"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0

    @classmethod
    def from_env(cls) -> TransferSettings:
        """Defaults, overridable with FINETUNE_S3_CONCURRENCY / _CHUNK_MB / _THRESHOLD_MB / _MAX_ATTEMPTS."""
        env = os.environ
        base = cls()
        return cls(
            max_concurrency=int(env.get("FINETUNE_S3_CONCURRENCY", base.max_concurrency)),
            multipart_threshold=int(
                float(env.get("FINETUNE_S3_THRESHOLD_MB", base.multipart_threshold / MiB)) * MiB
            ),
            multipart_chunksize=int(
                float(env.get("FINETUNE_S3_CHUNK_MB", base.multipart_chunksize / MiB)) * MiB
            ),
            max_attempts=int(env.get("FINETUNE_S3_MAX_ATTEMPTS", base.max_attempts)),
        )


class TransferCounters:
    """Process-wide totals of bytes moved (the trainer exports them as Prometheus counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_pulled = 0
        self.bytes_pushed = 0

    def add_pulled(self, n: int) -> None:
        with self._lock:
            self.bytes_pulled += n

    def add_pushed(self, n: int) -> None:
        with self._lock:
            self.bytes_pushed += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"bytes_pulled": self.bytes_pulled, "bytes_pushed": self.bytes_pushed}


COUNTERS = TransferCounters()


# ------------------------------------------------------------------------------------ URIs


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/key`` → (bucket, key); an invalid URI raises StorageError."""
    if not is_s3_uri(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI (expected s3://bucket/key)")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket: write it as s3://bucket/key")
    return S3Location(bucket, key)


def join_uri(base: str, rel: str) -> str:
    """Append a relative POSIX path to a prefix URI or local path."""
    if is_s3_uri(base):
        return (base if base.endswith("/") else base + "/") + rel.lstrip("/")
    return str(Path(_local_path(base)) / rel)


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return Path(uri).expanduser()


def safe_relative_path(rel: str, *, source: str, dest_dir: Path | str) -> Path:
    """Where ``rel`` lands under dest_dir; refuse anything that could escape it.

    Absolute keys, ``..`` segments and keys that resolve outside dest_dir raise StorageError
    naming the offending key.
    """
    dest = Path(dest_dir).resolve()
    posix = PurePosixPath(rel)
    bad = (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or posix.is_absolute()
        or any(part == ".." for part in posix.parts)
        or ":" in posix.parts[0]
    )
    if not bad:
        target = (dest / Path(*posix.parts)).resolve()
        bad = dest != target and dest not in target.parents
    if bad:
        raise StorageError(
            f"refusing object {rel!r} from {source}: its key would escape the target directory "
            f"{dest} (absolute key or '..'); remove or rename that object in the source"
        )
    return dest / Path(*posix.parts)


# --------------------------------------------------------------------------------- helpers


class _Progress:
    """Thread-safe aggregate of bytes done across parallel transfers."""

    def __init__(self, total: int, fn: ProgressFn | None, counter: Callable[[int], None]) -> None:
        self.total = total
        self.done = 0
        self._fn = fn
        self._counter = counter
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        self._counter(n)
        # the callback runs under the lock, so it sees bytes_done in order and never concurrently
        with self._lock:
            self.done += n
            if self._fn is not None:
                self._fn(max(0, min(self.done, self.total)), self.total)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def sha256_file(path: Path | str) -> str:
    """sha256 hex digest of a file (cached per path/size/mtime within the process)."""
    p = Path(path)
    st = p.stat()
    cache_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        hit = _SHA_CACHE.get(cache_key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[cache_key] = digest
    return digest


def s3_etag_of_file(path: Path | str, part_size: int | None) -> str:
    """The ETag S3 gives a file uploaded whole (part_size None: md5) or in parts of part_size."""
    p = Path(path)
    size = p.stat().st_size
    if part_size is None or size < part_size:
        h = hashlib.md5(usedforsecurity=False)
        with p.open("rb") as f:
            for block in iter(lambda: f.read(4 * MiB), b""):
                h.update(block)
        return h.hexdigest()
    digests = []
    with p.open("rb") as f:
        for part in iter(lambda: f.read(part_size), b""):
            digests.append(hashlib.md5(part, usedforsecurity=False).digest())
    return hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest() + f"-{len(digests)}"


def _matches_etag(path: Path, size: int, etag: str, chunksize: int) -> bool:
    """Whether the local file has the remote object's size and ETag (plain or multipart)."""
    try:
        if path.stat().st_size != size:
            return False
    except FileNotFoundError:
        return False
    if "-" not in etag:
        return len(etag) == 32 and s3_etag_of_file(path, None) == etag
    parts = int(etag.rsplit("-", 1)[1])
    candidates = {chunksize, 8 * MiB, math.ceil(size / parts / MiB) * MiB}
    for part_size in sorted(candidates):
        if math.ceil(size / part_size) == parts and s3_etag_of_file(path, part_size) == etag:
            return True
    return False


def _prefix_digest(objects: Iterable[ObjectInfo]) -> str:
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: o.key):
        h.update(f"{o.key}\0{o.size}\0{o.etag}\n".encode())
    return h.hexdigest()


def _iter_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, file) for every regular file under root, sorted."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if f.is_file():
                yield f.relative_to(root).as_posix(), f


def _atomic_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------ Store


class Store:
    """s3:// URIs and local paths alike. Create with ``open_store``; safe to share across threads."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        settings: TransferSettings | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.settings = settings or TransferSettings.from_env()
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- client ------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use (local-only stores never need one)."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                s = self.settings
                config = Config(
                    region_name=self.region,
                    retries={"total_max_attempts": s.max_attempts, "mode": s.retry_mode},
                    max_pool_connections=max(10, s.max_concurrency + 4),
                    connect_timeout=s.connect_timeout,
                    read_timeout=s.read_timeout,
                    # custom endpoints (MinIO, Ceph, the embedded server): bucket in the path
                    s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                    # older S3-compatible servers reject the newer default checksum trailers
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                session = boto3.session.Session(region_name=self.region)
                self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
            return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        s = self.settings
        return TransferConfig(
            multipart_threshold=s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=s.max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )

    def _where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def _error(self, exc: BaseException, uri: str) -> StorageError:
        """Translate a botocore/s3transfer failure into a StorageError that says what to do."""
        if isinstance(exc, StorageError):
            return exc
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        bucket = parse_s3_uri(uri).bucket if is_s3_uri(uri) else uri
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"no S3 credentials found for {uri}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (in a cluster: spec.storage.credentialsSecret)"
            )
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
            return StorageError(
                f"cannot reach the S3 endpoint {self._where()} for {uri} ({exc}): check "
                "spec.storage.endpoint and that the server is up and reachable"
            )
        if isinstance(exc, ReadTimeoutError):
            return StorageError(
                f"the S3 endpoint {self._where()} timed out on {uri} after retries: retry later"
            )
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            msg = str(err.get("Message", "")) or str(exc)
            if code == "NoSuchBucket":
                return StorageError(
                    f"bucket {bucket!r} does not exist at {self._where()} (while accessing "
                    f"{uri}): create the bucket or fix the URI / spec.storage.endpoint"
                )
            if code in {
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "403",
                "Forbidden",
                "InvalidToken",
                "ExpiredToken",
                "InvalidClientTokenId",
            }:
                return StorageError(
                    f"S3 at {self._where()} rejected the credentials for bucket {bucket!r} "
                    f"({uri}): {code}: {msg.rstrip('.')}. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                    "(spec.storage.credentialsSecret) and that they may access this bucket"
                )
            if code in {"NoSuchKey", "404", "NotFound"}:
                return StorageError(
                    f"no object at {uri} (bucket {bucket!r} at {self._where()}): check the URI; "
                    "a prefix (directory) should end with '/'"
                )
            return StorageError(f"S3 error {code} on {uri} at {self._where()}: {msg}")
        return StorageError(f"storage operation on {uri} failed: {type(exc).__name__}: {exc}")

    # -- listing -------------------------------------------------------------------------------

    def _s3_list_prefix(self, loc: S3Location, uri: str) -> list[ObjectInfo]:
        prefix = loc.key
        out: list[ObjectInfo] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=loc.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue  # "folder" marker objects made by consoles
                    out.append(
                        ObjectInfo(
                            uri=f"s3://{loc.bucket}/{key}",
                            key=key[len(prefix) :],
                            size=int(obj["Size"]),
                            etag=str(obj.get("ETag", "")).strip('"'),
                        )
                    )
        except Exception as exc:
            raise self._error(exc, uri) from exc
        return out

    def _s3_head(self, loc: S3Location, uri: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=loc.bucket, Key=loc.key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise self._error(exc, uri) from exc
        except Exception as exc:
            raise self._error(exc, uri) from exc
        return ObjectInfo(
            uri=loc.uri,
            key=PurePosixPath(loc.key).name,
            size=int(head["ContentLength"]),
            etag=str(head.get("ETag", "")).strip('"'),
        )

    def list(self, uri: str) -> builtins.list[ObjectInfo]:
        """Objects at uri: the one object it names, else everything under it as a prefix.

        Keys in the result are relative to the prefix (a single object: its base name). A URI that
        matches nothing gives []; a missing bucket or rejected credentials raise StorageError.
        """
        if is_s3_uri(uri):
            loc = parse_s3_uri(uri)
            if loc.key and not loc.key.endswith("/"):
                one = self._s3_head(loc, uri)
                if one is not None:
                    return [one]
                loc = S3Location(loc.bucket, loc.key + "/")
            return self._s3_list_prefix(loc, uri)
        path = _local_path(uri)
        if path.is_file():
            return [
                ObjectInfo(
                    str(path.resolve()),
                    path.name,
                    path.stat().st_size,
                    sha256_file(path),
                    str(path),
                )
            ]
        if path.is_dir():
            return [
                ObjectInfo(str(f.resolve()), rel, f.stat().st_size, sha256_file(f), str(f))
                for rel, f in _iter_files(path)
            ]
        return []

    def exists(self, uri: str) -> bool:
        """Whether uri names an object/file or a non-empty prefix/directory."""
        if is_s3_uri(uri):
            loc = parse_s3_uri(uri)
            if loc.key and not loc.key.endswith("/") and self._s3_head(loc, uri) is not None:
                return True
            prefix = loc.key if (not loc.key or loc.key.endswith("/")) else loc.key + "/"
            try:
                resp = self.client.list_objects_v2(Bucket=loc.bucket, Prefix=prefix, MaxKeys=1)
            except Exception as exc:
                raise self._error(exc, uri) from exc
            return bool(resp.get("KeyCount", 0))
        path = _local_path(uri)
        return path.is_file() or (path.is_dir() and any(path.iterdir()))

    def etag(self, uri: str) -> str:
        """S3 ETag of an object, sha256 of a local file, or a stable digest of a prefix's etags."""
        objects = self.list(uri)
        if not objects:
            raise StorageError(f"no object or prefix at {uri}: check the URI")
        if len(objects) == 1 and not (uri.endswith("/") or _local_path(uri).is_dir()):
            return objects[0].etag
        return _prefix_digest(objects)

    # -- small objects -------------------------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        if is_s3_uri(uri):
            loc = parse_s3_uri(uri)
            try:
                body = self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
            except Exception as exc:
                raise self._error(exc, uri) from exc
            COUNTERS.add_pulled(len(body))
            return bytes(body)
        path = _local_path(uri)
        if not path.is_file():
            raise StorageError(f"no file at {path}: check the path")
        data = path.read_bytes()
        COUNTERS.add_pulled(len(data))
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        if is_s3_uri(uri):
            loc = parse_s3_uri(uri)
            try:
                self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
            except Exception as exc:
                raise self._error(exc, uri) from exc
        else:
            _atomic_write(_local_path(uri), data)
        COUNTERS.add_pushed(len(data))

    # -- download ------------------------------------------------------------------------------

    def download(
        self, uri: str, dest_dir: str | Path, progress: ProgressFn | None = None
    ) -> builtins.list[ObjectInfo]:
        """Fetch one object (into dest_dir/<name>) or a prefix (keys kept as relative paths).

        Files already present with the same size and ETag/sha256 are skipped. Every key is checked
        before anything is written: keys escaping dest_dir raise StorageError. Files appear
        atomically (written to a temporary name, then renamed).
        """
        dest = Path(dest_dir)
        objects = self.list(uri)
        if not objects:
            raise StorageError(
                f"nothing to download at {uri}: no such object or prefix; check the URI "
                "(and that the data was uploaded)"
            )
        targets = [safe_relative_path(o.key, source=o.uri, dest_dir=dest) for o in objects]
        dest.mkdir(parents=True, exist_ok=True)
        todo: builtins.list[tuple[ObjectInfo, Path]] = []
        for o, target in zip(objects, targets, strict=True):
            if is_s3_uri(uri):
                same = _matches_etag(target, o.size, o.etag, self.settings.multipart_chunksize)
            else:
                same = (
                    target.is_file()
                    and target.stat().st_size == o.size
                    and (
                        Path(o.path).resolve() == target.resolve() or sha256_file(target) == o.etag
                    )
                )
            if not same:
                todo.append((o, target))
        tracker = _Progress(sum(o.size for o, _ in todo), progress, COUNTERS.add_pulled)
        if is_s3_uri(uri):
            self._s3_download(todo, tracker, uri)
        else:
            for o, target in todo:
                _atomic_copy(Path(o.path), target)
                tracker.add(o.size)
        if progress is not None and not todo:
            progress(0, 0)
        return [
            ObjectInfo(o.uri, o.key, o.size, o.etag, str(t))
            for o, t in zip(objects, targets, strict=True)
        ]

    def _s3_download(
        self, todo: builtins.list[tuple[ObjectInfo, Path]], tracker: _Progress, uri: str
    ) -> None:
        from boto3.s3.transfer import create_transfer_manager

        if not todo:
            return
        for _, target in todo:
            target.parent.mkdir(parents=True, exist_ok=True)
        current = uri
        try:
            with create_transfer_manager(self.client, self._transfer_config()) as tm:
                futures = []
                for o, target in todo:
                    loc = parse_s3_uri(o.uri)
                    futures.append(
                        (
                            o.uri,
                            tm.download(
                                loc.bucket,
                                loc.key,
                                str(target),
                                subscribers=[_Subscriber(o.size, tracker)],
                            ),
                        )
                    )
                for obj_uri, fut in futures:
                    current = obj_uri
                    fut.result()
        except Exception as exc:
            raise self._error(exc, current) from exc

    # -- upload --------------------------------------------------------------------------------

    def upload(
        self, src_path: str | Path, uri: str, progress: ProgressFn | None = None
    ) -> builtins.list[ObjectInfo]:
        """Upload a file (to uri, or uri/<name> if uri ends with '/') or a directory (to prefix uri).

        Objects already there with the same size and ETag are skipped. A failed multipart upload is
        aborted (nothing half-written stays behind as an incomplete upload).
        """
        src = Path(src_path)
        if src.is_file():
            dest_uri = join_uri(uri, src.name) if uri.endswith("/") else uri
            pairs = [(src.name, src, dest_uri)]
        elif src.is_dir():
            pairs = [(rel, f, join_uri(uri, rel)) for rel, f in _iter_files(src)]
        else:
            raise StorageError(f"nothing to upload: {src} does not exist")
        return self._upload_pairs(pairs, uri, progress)

    def _upload_pairs(
        self, pairs: builtins.list[tuple[str, Path, str]], uri: str, progress: ProgressFn | None
    ) -> builtins.list[ObjectInfo]:
        sizes = {dest: f.stat().st_size for _, f, dest in pairs}
        if is_s3_uri(uri):
            existing = {o.uri: o for o in self.list(uri)} if pairs else {}
            todo = []
            for rel, f, dest in pairs:
                have = existing.get(dest)
                if have is None or not _matches_etag(
                    f, have.size, have.etag, self.settings.multipart_chunksize
                ):
                    todo.append((rel, f, dest))
            tracker = _Progress(sum(sizes[d] for _, _, d in todo), progress, COUNTERS.add_pushed)
            self._s3_upload(todo, tracker)
            if progress is not None and not todo:
                progress(0, 0)
            final = {o.uri: o for o in self.list(uri)}
            return [
                ObjectInfo(
                    dest, rel, sizes[dest], final[dest].etag if dest in final else "", str(f)
                )
                for rel, f, dest in pairs
            ]
        tracker = _Progress(sum(sizes.values()), progress, COUNTERS.add_pushed)
        out = []
        for rel, f, dest in pairs:
            target = _local_path(dest)
            if not (target.exists() and target.resolve() == f.resolve()):
                _atomic_copy(f, target)
            tracker.add(sizes[dest])
            out.append(
                ObjectInfo(str(target.resolve()), rel, sizes[dest], sha256_file(target), str(f))
            )
        return out

    def _s3_upload(self, todo: builtins.list[tuple[str, Path, str]], tracker: _Progress) -> None:
        from boto3.s3.transfer import create_transfer_manager

        if not todo:
            return
        current = todo[0][2]
        try:
            with create_transfer_manager(self.client, self._transfer_config()) as tm:
                futures = []
                for _, f, dest in todo:
                    loc = parse_s3_uri(dest)
                    futures.append(
                        (
                            dest,
                            tm.upload(
                                str(f),
                                loc.bucket,
                                loc.key,
                                subscribers=[_Subscriber(f.stat().st_size, tracker)],
                            ),
                        )
                    )
                for dest, fut in futures:
                    current = dest
                    fut.result()
        except BaseException as exc:
            # s3transfer aborts the multipart uploads it started; make sure of it for our keys.
            self._abort_incomplete([parse_s3_uri(d) for _, _, d in todo])
            if isinstance(exc, Exception):
                raise self._error(exc, current) from exc
            raise

    def _abort_incomplete(self, locs: builtins.list[S3Location]) -> None:
        """Abort incomplete multipart uploads of exactly these keys (best effort)."""
        by_bucket: dict[str, set[str]] = {}
        for loc in locs:
            by_bucket.setdefault(loc.bucket, set()).add(loc.key)
        for bucket, keys in by_bucket.items():
            prefix = os.path.commonprefix(sorted(keys))  # noqa: RUF071 (string prefix of keys)
            with contextlib.suppress(Exception):
                pages = self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=bucket, Prefix=prefix
                )
                for page in pages:
                    for up in page.get("Uploads", []):
                        if up["Key"] in keys:
                            self.client.abort_multipart_upload(
                                Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]
                            )

    def incomplete_uploads(self, uri: str) -> builtins.list[str]:
        """Keys under an s3:// prefix with multipart uploads still open (for checks and tests)."""
        loc = parse_s3_uri(uri)
        try:
            resp = self.client.list_multipart_uploads(Bucket=loc.bucket, Prefix=loc.key)
        except Exception as exc:
            raise self._error(exc, uri) from exc
        return [str(u["Key"]) for u in resp.get("Uploads", [])]

    # -- delete --------------------------------------------------------------------------------

    def delete_prefix(self, uri: str, *, within: str) -> int:
        """Delete the object or prefix at uri, which must lie under ``within``; returns the count.

        The guard keeps a job from ever deleting outside its own prefix (e.g. old checkpoints
        under runs/<runId>/checkpoints/).
        """
        _require_within(uri, within)
        if is_s3_uri(uri):
            loc = parse_s3_uri(uri)
            keys: builtins.list[str] = []
            if loc.key and not loc.key.endswith("/") and self._s3_head(loc, uri) is not None:
                keys.append(loc.key)
            prefix = loc.key if loc.key.endswith("/") else loc.key + "/"
            keys += [
                parse_s3_uri(o.uri).key
                for o in self._s3_list_prefix(S3Location(loc.bucket, prefix), uri)
            ]
            try:
                for i in range(0, len(keys), 1000):
                    batch = [{"Key": k} for k in keys[i : i + 1000]]
                    self.client.delete_objects(
                        Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
            except Exception as exc:
                raise self._error(exc, uri) from exc
            return len(keys)
        path = _local_path(uri)
        if path.is_file():
            path.unlink()
            return 1
        if path.is_dir():
            n = sum(1 for _ in _iter_files(path))
            shutil.rmtree(path)
            return n
        return 0

    # -- runs ----------------------------------------------------------------------------------

    def push_run(
        self, local_dir: str | Path, run_uri: str, progress: ProgressFn | None = None
    ) -> str:
        """Publish a run: every file of local_dir, then manifest.json, then ``_SUCCESS`` last.

        Any earlier ``_SUCCESS``/manifest at run_uri is removed first, so a push that fails midway
        never looks complete. Writes nothing outside run_uri. Returns the manifest's URI.
        """
        src = Path(local_dir)
        if not src.is_dir():
            raise StorageError(f"cannot push run: {src} is not a directory")
        run_uri = run_uri if run_uri.endswith("/") else run_uri + "/"
        if is_s3_uri(run_uri) and not parse_s3_uri(run_uri).key.strip("/"):
            raise StorageError(
                f"refusing to push a run to the bucket root {run_uri}: use a prefix such as "
                "s3://bucket/team/job/runs/<runId>/"
            )
        manifest_uri = join_uri(run_uri, MANIFEST_NAME)
        success_uri = join_uri(run_uri, SUCCESS_NAME)
        for marker in (success_uri, manifest_uri):
            if self.exists(marker):
                self.delete_prefix(marker, within=run_uri)
        pairs = [
            (rel, f, join_uri(run_uri, rel))
            for rel, f in _iter_files(src)
            if rel not in (MANIFEST_NAME, SUCCESS_NAME)
        ]
        files = [
            {"path": rel, "size": f.stat().st_size, "sha256": sha256_file(f)} for rel, f, _ in pairs
        ]
        self._upload_pairs(pairs, run_uri, progress)
        manifest = json.dumps({"files": files}, indent=2, sort_keys=True).encode()
        self.write_bytes(manifest_uri, manifest)
        marker_doc = {
            "manifest": MANIFEST_NAME,
            "manifestSha256": hashlib.sha256(manifest).hexdigest(),
            "files": len(files),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.write_bytes(success_uri, json.dumps(marker_doc, sort_keys=True).encode())
        return manifest_uri

    def is_complete(self, run_uri: str) -> bool:
        """``_SUCCESS`` and manifest.json present, and every manifest file there with its size."""
        run_uri = run_uri if run_uri.endswith("/") else run_uri + "/"
        if is_s3_uri(run_uri):
            present = {o.key: o.size for o in self.list(run_uri)}
        else:  # sizes only: no need to hash a local run's files
            root = _local_path(run_uri)
            present = (
                {rel: f.stat().st_size for rel, f in _iter_files(root)} if root.is_dir() else {}
            )
        if SUCCESS_NAME not in present or MANIFEST_NAME not in present:
            return False
        try:
            manifest = json.loads(self.read_bytes(join_uri(run_uri, MANIFEST_NAME)))
            return all(present.get(f["path"]) == f["size"] for f in manifest["files"])
        except (ValueError, KeyError, TypeError):
            return False


class _Subscriber:
    """s3transfer subscriber: gives the known size (saves a HEAD) and forwards progress."""

    def __init__(self, size: int, tracker: _Progress) -> None:
        self._size = size
        self._tracker = tracker

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._tracker.add(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        pass


def _require_within(uri: str, within: str) -> None:
    """Raise unless uri lies under the prefix ``within`` (same store, no '..' tricks)."""
    refuse = StorageError(
        f"refusing to delete {uri}: it is not under {within}, the only prefix this run may "
        "delete in"
    )
    if is_s3_uri(uri) != is_s3_uri(within):
        raise refuse
    if is_s3_uri(uri):
        a, w = parse_s3_uri(uri), parse_s3_uri(within)
        if ".." in PurePosixPath(a.key).parts or a.bucket != w.bucket:
            raise refuse
        wkey = w.key if (not w.key or w.key.endswith("/")) else w.key + "/"
        if not wkey.strip("/"):
            raise refuse  # never a whole bucket
        if not (a.key == wkey.rstrip("/") or a.key.startswith(wkey)):
            raise refuse
        return
    a_path, w_path = _local_path(uri).resolve(), _local_path(within).resolve()
    if w_path == Path(w_path.anchor) or not (a_path == w_path or w_path in a_path.parents):
        raise refuse


def open_store(
    storage_spec: StorageSpec | None = None, *, endpoint_url: str | None = None
) -> Store:
    """A Store for a job's storage settings.

    Endpoint: ``endpoint_url`` if given, else spec.storage.endpoint, else the environment
    (FINETUNE_S3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), else AWS. Any custom endpoint
    gets path-style addressing. Region: AWS_REGION / AWS_DEFAULT_REGION, else spec.storage.region.
    Credentials: boto3's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the job's Secret,
    or ambient IRSA / instance-profile credentials).
    """
    endpoint = (
        endpoint_url
        or (storage_spec.endpoint if storage_spec is not None else "")
        or os.environ.get("FINETUNE_S3_ENDPOINT")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    region = (
        os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or (storage_spec.region if storage_spec is not None else "")
        or "us-east-1"
    )
    return Store(endpoint_url=endpoint, region=region)
