"""The embedded S3 server: a real S3 HTTP API on loopback, seeding, and data_dir persistence."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from finetune_trainer.embedded_s3 import EmbeddedS3, seed
from finetune_trainer.storage import Store


def test_serves_s3_over_http(s3_server: EmbeddedS3, s3_store: Store, tmp_path: Path) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text('{"text": "x"}\n')
    seed(s3_store, tmp_path / "d", "s3://seeded-bucket/data/")
    assert "seeded-bucket" in s3_server.buckets()
    # plain HTTP (a presigned URL, path-style): the server really speaks the S3 REST API
    url = s3_store.client.generate_presigned_url(
        "get_object", Params={"Bucket": "seeded-bucket", "Key": "data/train.jsonl"}
    )
    assert url.startswith(f"{s3_server.endpoint_url}/seeded-bucket/data/train.jsonl?")
    with urllib.request.urlopen(url) as r:
        assert r.read() == b'{"text": "x"}\n'


PROGRAM = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from finetune_trainer.embedded_s3 import seed, start_embedded_s3
    data_dir, mode = sys.argv[1], sys.argv[2]
    with start_embedded_s3(data_dir=data_dir) as s3:
        store = s3.store()
        if mode == "write":
            src = Path(data_dir).parent / "src"
            src.mkdir()
            (src / "a.txt").write_text("alpha")
            (src / "b.txt").write_text("beta")
            seed(store, src, "s3://keep/p/")
        elif mode == "change":
            store.delete_prefix("s3://keep/p/b.txt", within="s3://keep/p/")
            store.write_bytes("s3://keep/p/c.txt", b"gamma")
        else:
            for o in store.list("s3://keep/"):
                print(o.key, store.read_bytes(o.uri).decode())
    """
)


def run(data_dir: Path, mode: str) -> str:
    # a fresh process each time: moto's state is per process, so only data_dir can carry it over
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(data_dir), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def test_data_dir_survives_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "s3data"
    run(data_dir, "write")
    assert (data_dir / "keep" / "p" / "a.txt").read_text() == "alpha"
    assert run(data_dir, "read").splitlines() == ["p/a.txt alpha", "p/b.txt beta"]
    run(data_dir, "change")
    assert run(data_dir, "read").splitlines() == ["p/a.txt alpha", "p/c.txt gamma"]
    assert not (data_dir / "keep" / "p" / "b.txt").exists()
