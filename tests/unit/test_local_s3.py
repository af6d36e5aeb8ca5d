"""Storage decisions and checks of `finetune run` (no server needed)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.local_s3 import (
    StorageProblem,
    check_reachable,
    credentials_in_env,
    decide_storage,
    parse_seed,
)

LOCAL = {"local": True}


def _spec(**over: Any) -> FineTuneJobSpec:
    doc: dict[str, Any] = {
        "task": "causal-lm",
        "baseModel": {"uri": "s3://models/tiny/"},
        "datasets": [{"name": "d", "uri": "s3://data/train.jsonl", "format": "text"}],
        "output": {"uri": "s3://artifacts/x/"},
    }
    doc.update(over)
    return FineTuneJobSpec.model_validate(doc, context=LOCAL)


def test_decide_storage() -> None:
    empty: dict[str, str] = {"HOME": "/nonexistent"}
    assert decide_storage(_spec(), empty) == "embedded"
    assert decide_storage(_spec(), {**empty, "AWS_ACCESS_KEY_ID": "k"}) == "real"
    assert decide_storage(_spec(), {**empty, "AWS_PROFILE": "p"}) == "real"
    with_endpoint = _spec(storage={"endpoint": "http://minio:9000"})
    assert decide_storage(with_endpoint, empty) == "real"
    assert decide_storage(with_endpoint, empty, force_embedded=True) == "embedded"
    local = _spec(
        baseModel={"uri": "./m/"},
        datasets=[{"name": "d", "uri": "./d.jsonl", "format": "text"}],
        output={"uri": "./out/"},
    )
    assert decide_storage(local, {**empty, "AWS_ACCESS_KEY_ID": "k"}) == "none"


def test_credentials_file_counts(tmp_path: Path) -> None:
    assert not credentials_in_env({"HOME": str(tmp_path)})
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert credentials_in_env({"HOME": str(tmp_path)})


def test_parse_seed(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("{}\n")
    assert parse_seed(f"s3://data/a.jsonl={f}") == ("s3://data/a.jsonl", f)
    for bad in ("s3://data/a.jsonl", f"data/a.jsonl={f}", "s3://data/a.jsonl=", f"s3:///x={f}"):
        with pytest.raises(ValueError, match="--seed"):
            parse_seed(bad)
    with pytest.raises(ValueError, match="does not exist"):
        parse_seed(f"s3://data/a.jsonl={tmp_path / 'missing'}")


def test_unreachable_endpoint_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on the port now
    with pytest.raises(StorageProblem, match=rf"http://127.0.0.1:{port}.*does not answer"):
        check_reachable(f"http://127.0.0.1:{port}")
    with pytest.raises(StorageProblem, match="not an http"):
        check_reachable("minio:9000")
