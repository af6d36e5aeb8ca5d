"""`finetune run` refuses bad input before starting anything: one paragraph, the right exit code.

These run the real command in-process up to the point where it would launch the trainer.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from finetune_operator.cli import main

GOOD = """\
apiVersion: finetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: tiny}
spec:
  task: causal-lm
  baseModel: {uri: ./model/}
  datasets: [{name: d, uri: ./train.jsonl, format: text}]
  output: {uri: ./out/}
"""


def _run(tmp_path: Path, manifest: str, *args: str) -> int:
    path = tmp_path / "job.yaml"
    path.write_text(manifest)
    return main(["run", str(path), "--workdir", str(tmp_path / "work"), *args])


def test_bad_manifest_exit_2_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run(tmp_path, GOOD.replace("format: text", "format: txt"))
    err = capsys.readouterr().err
    assert code == 2
    assert "spec.datasets[0].format" in err
    assert "Traceback" not in err


def test_not_yaml_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "spec: [unclosed") == 2
    assert "job.yaml" in capsys.readouterr().err


def test_missing_local_inputs_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = _run(tmp_path, GOOD)
    err = capsys.readouterr().err
    assert code == 2
    assert "spec.baseModel.uri" in err and "spec.datasets[0].uri" in err
    assert "--demo" in err  # says what to do
    assert "Traceback" not in err


def test_unreachable_s3_exit_1_names_the_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = (
        GOOD.replace("./model/", "s3://models/tiny/")
        .replace("./train.jsonl", "s3://data/train.jsonl")
        .replace("./out/", "s3://artifacts/tiny/")
    )
    manifest += f"  storage: {{endpoint: 'http://127.0.0.1:{port}'}}\n"
    code = _run(tmp_path, manifest)
    err = capsys.readouterr().err
    assert code == 1
    assert f"http://127.0.0.1:{port}" in err and "does not answer" in err
    assert "Traceback" not in err


def test_bad_seed_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = GOOD.replace("./model/", "s3://models/tiny/")
    code = _run(tmp_path, manifest, "--embedded-s3", "--seed", "models/tiny=./nothing")
    assert code == 2
    assert "--seed" in capsys.readouterr().err


def test_demo_refuses_tasks_it_has_no_data_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = GOOD.replace("causal-lm", "token-classification").replace(
        "format: text", "format: ner"
    )
    assert _run(tmp_path, manifest, "--demo") == 2
    assert "--demo generates data" in capsys.readouterr().err


def test_completed_run_is_not_trained_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from finetune_operator.local import load_job
    from finetune_trainer.config import spec_hash
    from finetune_trainer.storage import Store

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "job.yaml"
    path.write_text(GOOD)
    job = load_job(path)
    run_id = f"tiny-{spec_hash(job.spec)[:8]}"
    run = tmp_path / "out" / "runs" / run_id
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "metrics.json").write_text("{}")
    Store().push_run(staged, str(run) + "/")  # what the trainer publishes, _SUCCESS last
    assert Store().is_complete(str(run) + "/"), "fixture: a complete run"
    code = main(["run", str(path), "--workdir", "work", "--status-out", "status.json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "already completed" in out and "--fresh" in out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["runId"] == run_id


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            ("baseModel: {uri: ./model/}", "baseModel: {fromJob: other-job}"),
            "spec.baseModel.fromJob",
        ),
        (("  task: causal-lm", "  suspend: true\n  task: causal-lm"), "spec.suspend is true"),
    ],
)
def test_cluster_only_fields_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], words: str
) -> None:
    assert _run(tmp_path, GOOD.replace(*change)) == 2
    assert words in capsys.readouterr().err
