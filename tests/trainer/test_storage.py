"""Storage against a real S3 HTTP server on loopback (moto server mode) and on local paths."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.storage import (
    COUNTERS,
    MANIFEST_NAME,
    SUCCESS_NAME,
    StorageError,
    Store,
    TransferSettings,
    open_store,
    safe_relative_path,
)

MiB = 1024 * 1024


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"model_type": "llama"}',
        "weights/part-0.bin": os.urandom(300_000),
        "weights/part-1.bin": os.urandom(70_000),
        "deep/a/b/c.txt": b"hello\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def small_parts_store(endpoint: str) -> Store:
    """Multipart from 5 MiB (S3's minimum part size) so a 12 MiB file goes in 3 parts."""
    return Store(
        endpoint_url=endpoint,
        settings=TransferSettings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB),
    )


# ------------------------------------------------------------------------------ round trips


def test_prefix_round_trip(s3_store: Store, s3_bucket: str, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    uploaded = s3_store.upload(tmp_path / "src", f"s3://{s3_bucket}/models/m1/")
    assert sorted(o.key for o in uploaded) == sorted(files)

    listed = s3_store.list(f"s3://{s3_bucket}/models/m1/")
    assert {o.key: o.size for o in listed} == {k: len(v) for k, v in files.items()}
    # a prefix named without its trailing slash means the same prefix
    assert {o.key for o in s3_store.list(f"s3://{s3_bucket}/models/m1")} == set(files)

    got = s3_store.download(f"s3://{s3_bucket}/models/m1/", tmp_path / "dst")
    assert read_tree(tmp_path / "dst") == files
    assert {Path(o.path) for o in got} == {tmp_path / "dst" / k for k in files}
    assert s3_store.exists(f"s3://{s3_bucket}/models/m1/")
    assert not s3_store.exists(f"s3://{s3_bucket}/models/m2/")


def test_single_object_round_trip(s3_store: Store, s3_bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n')
    # a URI ending in '/' gets the file's name; otherwise the URI is the key
    s3_store.upload(src, f"s3://{s3_bucket}/data/")
    s3_store.upload(src, f"s3://{s3_bucket}/data/renamed.jsonl")
    assert {o.key for o in s3_store.list(f"s3://{s3_bucket}/data/")} == {
        "train.jsonl",
        "renamed.jsonl",
    }
    got = s3_store.download(f"s3://{s3_bucket}/data/renamed.jsonl", tmp_path / "dl")
    assert [Path(o.path).name for o in got] == ["renamed.jsonl"]
    assert (tmp_path / "dl" / "renamed.jsonl").read_text() == src.read_text()

    s3_store.write_bytes(f"s3://{s3_bucket}/x/y.bin", b"\x00\x01")
    assert s3_store.read_bytes(f"s3://{s3_bucket}/x/y.bin") == b"\x00\x01"
    assert s3_store.etag(f"s3://{s3_bucket}/x/y.bin") == hashlib.md5(b"\x00\x01").hexdigest()


def test_local_paths_behave_like_s3(tmp_path: Path) -> None:
    store = open_store()
    files = make_tree(tmp_path / "src")
    store.upload(tmp_path / "src", str(tmp_path / "out" / "copy"))
    assert read_tree(tmp_path / "out" / "copy") == files
    got = store.download(str(tmp_path / "out" / "copy"), tmp_path / "dst")
    assert read_tree(tmp_path / "dst") == files
    assert {o.etag for o in got} == {hashlib.sha256(v).hexdigest() for v in files.values()}
    assert (
        store.etag(str(tmp_path / "src" / "config.json"))
        == hashlib.sha256(files["config.json"]).hexdigest()
    )
    assert store.etag(str(tmp_path / "src")) == store.etag(str(tmp_path / "dst"))

    run = tmp_path / "artifacts" / "runs" / "r1"
    manifest_uri = store.push_run(tmp_path / "src", str(run))
    assert store.is_complete(str(run))
    assert Path(manifest_uri) == run / MANIFEST_NAME
    store.delete_prefix(str(run / "weights"), within=str(run))
    assert not store.is_complete(str(run))  # manifest names files that are gone
    with pytest.raises(StorageError, match="not under"):
        store.delete_prefix(str(tmp_path / "src"), within=str(run))


# --------------------------------------------------------------------- skip and multipart


def test_download_skips_unchanged_files(s3_store: Store, s3_bucket: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    uri = f"s3://{s3_bucket}/ds/"
    s3_store.upload(tmp_path / "src", uri)
    calls: list[tuple[int, int]] = []
    s3_store.download(uri, tmp_path / "dst", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == 300_000 + 70_000 + 6 + 23
    done = [d for d, _ in calls]
    assert done == sorted(done)  # reported in order, though transfers run in parallel

    before = COUNTERS.snapshot()["bytes_pulled"]
    calls.clear()
    s3_store.download(uri, tmp_path / "dst", progress=lambda d, t: calls.append((d, t)))
    assert COUNTERS.snapshot()["bytes_pulled"] == before  # nothing transferred
    assert calls[-1] == (0, 0)

    # a changed object (same size, new content) and a locally damaged file are fetched again
    s3_store.write_bytes(uri + "deep/a/b/c.txt", b"HELLO\n")
    (tmp_path / "dst" / "config.json").write_bytes(b"x" * 23)
    s3_store.download(uri, tmp_path / "dst")
    assert COUNTERS.snapshot()["bytes_pulled"] == before + 6 + 23
    assert (tmp_path / "dst" / "deep/a/b/c.txt").read_bytes() == b"HELLO\n"
    assert (tmp_path / "dst" / "config.json").read_bytes() == b'{"model_type": "llama"}'


def test_upload_skips_objects_already_there(
    s3_store: Store, s3_bucket: str, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src")
    s3_store.upload(tmp_path / "src", f"s3://{s3_bucket}/p/")
    before = COUNTERS.snapshot()["bytes_pushed"]
    s3_store.upload(tmp_path / "src", f"s3://{s3_bucket}/p/")
    assert COUNTERS.snapshot()["bytes_pushed"] == before
    (tmp_path / "src" / "deep/a/b/c.txt").write_bytes(b"changed\n")
    s3_store.upload(tmp_path / "src", f"s3://{s3_bucket}/p/")
    assert COUNTERS.snapshot()["bytes_pushed"] == before + 8


def test_multipart_above_threshold(s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    store = small_parts_store(s3_server.endpoint_url)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB + 123))
    [info] = store.upload(big, f"s3://{s3_bucket}/m/")
    assert info.etag.endswith("-3"), info.etag  # S3's multipart ETag: md5-of-md5s "-<parts>"
    got = store.download(f"s3://{s3_bucket}/m/big.bin", tmp_path / "dl")
    assert (tmp_path / "dl" / "big.bin").read_bytes() == big.read_bytes()
    # the multipart ETag is recomputed locally, so a second download is skipped
    before = COUNTERS.snapshot()["bytes_pulled"]
    store.download(f"s3://{s3_bucket}/m/big.bin", tmp_path / "dl")
    assert COUNTERS.snapshot()["bytes_pulled"] == before
    assert got[0].size == 12 * MiB + 123


# ------------------------------------------------------------------------------ traversal


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "..", "a/..", "", "C:/x", "a\\..\\x"]
)
def test_escaping_keys_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="escape the target directory"):
        safe_relative_path(key, source="s3://b/p/" + key, dest_dir=tmp_path)


def test_traversal_object_refused_before_writing(
    s3_store: Store, s3_bucket: str, tmp_path: Path
) -> None:
    # a real object whose key, relative to the prefix, starts at the root: "p//etc/evil"
    s3_store.write_bytes(f"s3://{s3_bucket}/p/ok.txt", b"ok")
    s3_store.client.put_object(Bucket=s3_bucket, Key="p//etc/evil", Body=b"evil")
    assert "/etc/evil" in {o.key for o in s3_store.list(f"s3://{s3_bucket}/p/")}
    dest = tmp_path / "dest"
    with pytest.raises(StorageError, match="/etc/evil") as err:
        s3_store.download(f"s3://{s3_bucket}/p/", dest)
    assert "escape" in str(err.value)
    assert not dest.exists() or not any(dest.rglob("*"))  # nothing written, not even ok.txt


# ------------------------------------------------------------------------------ clear errors


def test_missing_bucket_error_names_it(s3_store: Store) -> None:
    with pytest.raises(StorageError) as err:
        s3_store.download("s3://no-such-bucket-here/models/m/", "/tmp/never")
    msg = str(err.value)
    assert "no-such-bucket-here" in msg and "does not exist" in msg and "create" in msg


def test_wrong_credentials_error(s3_auth_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = Store(endpoint_url=s3_auth_server)
    for op in (
        lambda: store.write_bytes("s3://team-bucket/x", b"1"),
        lambda: store.read_bytes("s3://team-bucket/x"),
        lambda: store.list("s3://team-bucket/p/"),
    ):
        with pytest.raises(StorageError) as err:
            op()
        msg = str(err.value)
        assert "rejected the credentials" in msg and "team-bucket" in msg
        assert "AWS_ACCESS_KEY_ID" in msg


def test_unreachable_endpoint_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    store = Store(
        endpoint_url=f"http://127.0.0.1:{port}",
        settings=TransferSettings(max_attempts=1, connect_timeout=2),
    )
    with pytest.raises(StorageError, match=r"cannot reach the S3 endpoint .*storage.endpoint"):
        store.list("s3://bucket/prefix/")


def test_missing_key_error(s3_store: Store, s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=f"no object at s3://{s3_bucket}/nope.json"):
        s3_store.read_bytes(f"s3://{s3_bucket}/nope.json")
    with pytest.raises(StorageError, match="nothing to download"):
        s3_store.download(f"s3://{s3_bucket}/nothing/", tmp_path)


# ------------------------------------------------------------------------------ runs


def test_push_run_manifest_and_success_last(
    s3_store: Store, s3_bucket: str, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "run")
    run_uri = f"s3://{s3_bucket}/team/job/runs/r-1/"
    order: list[str] = []
    s3_store.client.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **kw: order.append(params["Key"])
    )
    manifest_uri = s3_store.push_run(tmp_path / "run", run_uri)
    assert manifest_uri == run_uri + MANIFEST_NAME
    assert order[-2:] == [f"team/job/runs/r-1/{MANIFEST_NAME}", f"team/job/runs/r-1/{SUCCESS_NAME}"]
    manifest = json.loads(s3_store.read_bytes(manifest_uri))
    assert manifest["files"] == [
        {"path": k, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()}
        for k, v in sorted(files.items())
    ]
    assert s3_store.is_complete(run_uri)
    # nothing was written outside the run's prefix
    assert all(o.key.startswith("team/job/runs/r-1/") for o in s3_store.list(f"s3://{s3_bucket}/"))


def test_interrupted_push_never_looks_complete(
    s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    store = small_parts_store(s3_server.endpoint_url)
    run_uri = f"s3://{s3_bucket}/out/runs/r-2/"
    make_tree(tmp_path / "run")
    store.push_run(tmp_path / "run", run_uri)  # an earlier complete push of this run
    assert store.is_complete(run_uri)

    (tmp_path / "run" / "merged.bin").write_bytes(os.urandom(11 * MiB))
    parts = {"n": 0}

    def fail_second_part(**kw: Any) -> None:
        parts["n"] += 1
        if parts["n"] == 2:
            raise ConnectionAbortedError("injected: connection lost mid-upload")

    store.client.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    with pytest.raises(StorageError, match="injected"):
        store.push_run(tmp_path / "run", run_uri)

    assert not store.is_complete(run_uri)
    assert not store.exists(run_uri + SUCCESS_NAME)
    assert not store.exists(run_uri + MANIFEST_NAME)
    assert not store.exists(run_uri + "merged.bin")
    assert store.incomplete_uploads(run_uri) == []  # the multipart upload was aborted

    store.client.meta.events.unregister("before-call.s3.UploadPart", fail_second_part)
    store.push_run(tmp_path / "run", run_uri)  # the retry completes it
    assert store.is_complete(run_uri)


def test_delete_prefix_stays_within(s3_store: Store, s3_bucket: str) -> None:
    run = f"s3://{s3_bucket}/o/runs/r/"
    for key in ("checkpoints/step-1/a", "checkpoints/step-10/a", "adapter/x"):
        s3_store.write_bytes(run + key, b"1")
    s3_store.write_bytes(f"s3://{s3_bucket}/o/other/keep", b"1")
    assert s3_store.delete_prefix(run + "checkpoints/step-1", within=run) == 1
    assert s3_store.exists(run + "checkpoints/step-10/a")  # a sibling with the same stem stays
    for outside in (
        f"s3://{s3_bucket}/o/other/",
        f"s3://{s3_bucket}/o/runs/r/../../other/",
        f"s3://{s3_bucket}/",
        "s3://other-bucket/o/runs/r/x",
        "/tmp/o/runs/r/x",
    ):
        with pytest.raises(StorageError, match="not under"):
            s3_store.delete_prefix(outside, within=run)
    assert s3_store.exists(f"s3://{s3_bucket}/o/other/keep")


def test_prefix_etag_is_stable_and_content_sensitive(
    s3_store: Store, s3_bucket: str, tmp_path: Path
) -> None:
    make_tree(tmp_path / "src")
    s3_store.upload(tmp_path / "src", f"s3://{s3_bucket}/a/")
    s3_store.upload(tmp_path / "src", f"s3://{s3_bucket}/b/")
    first = s3_store.etag(f"s3://{s3_bucket}/a/")
    assert first == s3_store.etag(f"s3://{s3_bucket}/b/") == s3_store.etag(f"s3://{s3_bucket}/a")
    s3_store.write_bytes(f"s3://{s3_bucket}/b/config.json", b"{}")
    assert s3_store.etag(f"s3://{s3_bucket}/b/") != first


def test_transient_errors_are_retried(s3_store: Store, s3_bucket: str) -> None:
    """A 503 SlowDown from the server (injected once before sending) is retried, not surfaced."""
    from botocore.awsrequest import AWSResponse

    sent = {"n": 0}

    class _Raw:
        def stream(self, **kw: Any) -> Iterator[bytes]:
            yield b""

    def slow_down_once(request: Any, **kw: Any) -> AWSResponse | None:
        sent["n"] += 1
        if sent["n"] == 1:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            resp = AWSResponse(request.url, 503, {}, _Raw())
            resp._content = body
            return resp
        return None

    s3_store.client.meta.events.register("before-send.s3.PutObject", slow_down_once)
    s3_store.write_bytes(f"s3://{s3_bucket}/retry/x", b"payload")
    assert sent["n"] == 2
    assert s3_store.read_bytes(f"s3://{s3_bucket}/retry/x") == b"payload"


def test_open_store_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_operator.api import StorageSpec

    monkeypatch.delenv("AWS_REGION", raising=False)
    for var in ("FINETUNE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    spec = StorageSpec(endpoint="http://minio.local:9000", region="eu-west-3")
    store = open_store(spec)
    assert (store.endpoint_url, store.region) == ("http://minio.local:9000", "eu-west-3")
    assert store.client.meta.config.s3["addressing_style"] == "path"
    assert open_store(spec, endpoint_url="http://other:1").endpoint_url == "http://other:1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert open_store(spec).region == "ap-south-1"
    assert open_store(None).endpoint_url is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://ceph.local:7480")
    assert open_store(None).endpoint_url == "http://ceph.local:7480"
    assert open_store(None).client.meta.config.s3["addressing_style"] == "path"
    assert open_store(spec).endpoint_url == "http://minio.local:9000"  # the spec wins
