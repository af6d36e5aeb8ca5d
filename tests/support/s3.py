"""Fixtures for a real S3 HTTP server on loopback (moto's server mode, via finetune_trainer.embedded_s3).

- ``s3_server`` (session): the running server; ``.endpoint_url``. Sets fake AWS credentials and
  the region in the environment for the whole session (child processes inherit them).
- ``s3_bucket`` (function): a fresh, empty bucket; returns its name.
- ``s3_store`` (function): a ``Store`` bound to the server.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from finetune_trainer.embedded_s3 import EmbeddedS3
    from finetune_trainer.storage import Store

_counter = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    from finetune_trainer.embedded_s3 import FAKE_CREDENTIALS, start_embedded_s3

    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    server = start_embedded_s3()
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_store(s3_server: EmbeddedS3) -> Store:
    from finetune_trainer.storage import Store

    return Store(endpoint_url=s3_server.endpoint_url, region="us-east-1")


@pytest.fixture
def s3_bucket(s3_store: Store, request: pytest.FixtureRequest) -> str:
    from finetune_trainer.embedded_s3 import ensure_bucket

    name = f"t{os.getpid()}-{next(_counter)}-{request.node.name[:30]}".lower()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")[:63]
    ensure_bucket(s3_store, name)
    return name


@pytest.fixture(scope="session")
def s3_auth_server() -> Iterator[str]:
    """A second, separate moto server (its own process) that checks credentials; yields its URL.

    moto only authenticates requests when INITIAL_NO_AUTH_ACTION_COUNT is set in the server's
    process, so this one runs as ``moto_server`` in a subprocess: any access key it never issued
    gets a real InvalidAccessKeyId / 403 from its S3 API.
    """
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
