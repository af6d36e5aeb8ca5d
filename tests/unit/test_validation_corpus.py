"""The invalid-manifest corpus (tests/unit/invalid/cases.yaml) and the examples.

Every invalid case must be rejected by `finetune validate` with a line naming its field path; the
base manifest the cases patch must itself be valid (else a case could fail for another reason);
every example in examples/ must validate. The same corpus meets the real kube-apiserver in
tests/cluster/test_crd_admission.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from finetune_operator.validation import cli, problems_for

from tests.unit.invalid.corpus import Case, base_manifest, dump_yaml, load_cases

CASES = load_cases()


def test_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_base_manifest_is_valid() -> None:
    assert problems_for(base_manifest()) == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_case_is_rejected_naming_its_path(case: Case) -> None:
    problems = problems_for(case.manifest)
    assert any(p.startswith(f"{case.path}: ") for p in problems), problems
    # the patch breaks one thing, so exactly one problem is expected: a second one would mean
    # the rules overlap or the base drifted
    assert len(problems) == 1, problems


@pytest.mark.parametrize("case", CASES[::7], ids=[c.id for c in CASES[::7]])
def test_cli_prints_file_and_path(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{case.id}.yaml"
    path.write_text(dump_yaml(case.manifest))
    assert cli([str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: {case.path}: " in err


def _examples(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "examples").glob("*.yaml"))


def test_every_example_validates(repo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`finetune validate examples/*.yaml` exits 0 (cluster rules: s3:// only)."""
    examples = _examples(repo_root)
    assert len(examples) >= 10
    assert cli([str(p) for p in examples]) == 0, capsys.readouterr().err
    # examples/local/ holds `finetune run` manifests with local paths: the local rules apply
    local = sorted((repo_root / "examples" / "local").glob("*.yaml"))
    assert local
    assert cli(["--local", *map(str, local)]) == 0, capsys.readouterr().err


def test_examples_cover_the_documented_scenarios(repo_root: Path) -> None:
    jobs = [yaml.safe_load(p.read_text()) for p in _examples(repo_root)]
    specs = [j["spec"] for j in jobs]
    assert any(s.get("method", {}).get("type") == "qlora" for s in specs)
    assert any(s.get("method", {}).get("type") == "full" for s in specs)
    assert any(
        s.get("distributed", {}).get("nodes") == 2
        and s["distributed"].get("gpusPerNode") == 8
        and s["distributed"].get("deepspeed", {}).get("zeroStage") == 3
        for s in specs
    )
    assert any(s.get("task") == "sequence-classification" for s in specs)
    assert any(s.get("task") == "token-classification" for s in specs)
    assert any("fromJob" in s["baseModel"] for s in specs)
    assert any(len(s["datasets"]) >= 2 for s in specs)
    assert any(d["format"] == "text" for s in specs for d in s["datasets"])
    assert any(s.get("runPolicy", {}).get("queueName") for s in specs)
