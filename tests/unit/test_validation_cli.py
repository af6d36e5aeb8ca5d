"""`finetune validate`: file-level problems, multi-document files, all problems at once, --local,
and the functions the local runner and the operator call (load_job, problems_for)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from finetune_operator.validation import ManifestError, cli, load_job, problems_for

from tests.unit.invalid.corpus import apply_patch, base_manifest, dump_yaml

FILES = Path(__file__).parent / "invalid" / "files"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("not-yaml.yaml", "not valid YAML at line"),
        ("not-a-mapping.yaml", "the document is a list, not a mapping"),
        ("wrong-kind.yaml", "expected apiVersion: finetune.dev/v1alpha1 and kind: FineTuneJob"),
        ("wrong-api-version.yaml", "got apiVersion: 'finetune.dev/v1beta1'"),
        ("empty.yaml", "no YAML document in the file"),
    ],
)
def test_file_level_problem_is_one_line(
    name: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(capsys, str(FILES / name))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2, lines  # the problem + the summary line
    assert lines[0].startswith(f"{FILES / name}: ") and words in lines[0]
    assert "Traceback" not in err


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_cli(capsys, str(tmp_path / "nope.yaml"))
    assert code == 1 and f"{tmp_path / 'nope.yaml'}: no such file" in err


def test_all_problems_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = apply_patch(
        base_manifest(),
        {
            "spec.method.lora.r": 0,
            "spec.hyperparameters.learningRate": "fast",
            "spec.datasets[0].format": "markdown",
            "spec.output.uri": "/tmp/out",
            "spec.unknownThing": 1,
            "spec.distributed.deepspeed.offloadParams": True,
        },
    )
    path = tmp_path / "many.yaml"
    path.write_text(dump_yaml(doc))
    code, err = run_cli(capsys, str(path))
    assert code == 1
    for field in (
        "spec.method.lora.r",
        "spec.hyperparameters.learningRate",
        "spec.datasets[0].format",
        "spec.output.uri",
        "spec.unknownThing",
        "spec.distributed.deepspeed.offloadParams",
    ):
        assert f"{path}: {field}: " in err, field


def test_multi_document_file_names_the_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = base_manifest()
    bad = apply_patch(good, {"metadata.name": "second", "spec.task": "translation"})
    path = tmp_path / "two.yaml"
    path.write_text(dump_yaml(good, bad))
    code, err = run_cli(capsys, str(path))
    assert code == 1
    assert f"{path} (document 2): spec.task: 'translation' is not allowed" in err
    assert "document 1" not in err
    good2 = apply_patch(good, {"metadata.name": "second"})
    path.write_text(dump_yaml(good, good2))
    assert run_cli(capsys, str(path))[0] == 0


def test_exit_zero_and_summary_for_valid_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(dump_yaml(base_manifest()))
    assert cli([str(path)]) == 0
    assert f"{path}: valid (corpus-base)" in capsys.readouterr().out


def test_local_rules_allow_local_paths_only_with_local(tmp_path: Path) -> None:
    doc = apply_patch(
        base_manifest(),
        {
            "spec.baseModel.uri": "./models/tiny",
            "spec.datasets[0].uri": "/data/train.jsonl",
            "spec.output.uri": "out/",
        },
    )
    assert len(problems_for(doc)) == 3
    assert problems_for(doc, local=True) == []
    gcs = apply_patch(doc, {"spec.output.uri": "gs://bucket/out/"})
    assert [p.split(":")[0] for p in problems_for(gcs, local=True)] == ["spec.output.uri"]
    path = tmp_path / "local.yaml"
    path.write_text(dump_yaml(doc))
    assert cli(["--local", "-q", str(path)]) == 0
    assert load_job(path, local=True).spec.base_model.uri == "./models/tiny"


def test_load_job_raises_with_every_problem(tmp_path: Path) -> None:
    doc = apply_patch(base_manifest(), {"spec.method.lora.r": 0, "spec.task": "x"})
    path = tmp_path / "bad.yaml"
    path.write_text(dump_yaml(doc))
    with pytest.raises(ManifestError) as err:
        load_job(path)
    assert len(err.value.problems) == 2
    assert all(p.startswith(f"{path}: spec.") for p in err.value.problems)
    assert str(err.value) == "\n".join(err.value.problems)
    path.write_text(dump_yaml(base_manifest(), base_manifest()))
    with pytest.raises(ManifestError, match="holds 2 FineTuneJob documents"):
        load_job(path)


def test_finetune_command_dispatches(repo_root: Path) -> None:
    exe = Path(sys.executable).with_name("finetune")
    proc = subprocess.run(
        [str(exe), "validate", str(FILES / "wrong-kind.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "kind: FineTuneJob" in proc.stderr and "Traceback" not in proc.stderr


def test_unquoted_exponent_is_a_number_as_in_kubectl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PyYAML alone reads `2e-4` as a string; kubectl reads a number, which the CRD rejects."""
    text = yaml.safe_dump(base_manifest())
    assert "learningRate: 2e-4\n" in text  # PyYAML writes it unquoted
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    code, err = run_cli(capsys, str(path))
    assert code == 1
    assert "spec.hyperparameters.learningRate: must be a string, got a number" in err
    path.write_text(text.replace("learningRate: 2e-4", 'learningRate: "2e-4"'))
    assert run_cli(capsys, str(path))[0] == 0
