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
