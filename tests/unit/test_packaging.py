"""Packaging promises: one distribution, two import packages, the operator alone pulls no torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "deepspeed", "accelerate", "datasets", "trl")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _names(reqs: list[str]) -> set[str]:
    out = set()
    for req in reqs:
        name = req.split(";")[0]
        for sep in "<>=![ ~":
            name = name.split(sep)[0]
        out.add(name.strip().lower())
    return out


def test_operator_dependencies_pull_no_torch() -> None:
    base = _names(_pyproject()["project"]["dependencies"])
    assert not base & set(HEAVY), f"base dependencies must not include {base & set(HEAVY)}"
    assert {"torch", "transformers", "peft", "deepspeed"} <= _names(
        _pyproject()["project"]["optional-dependencies"]["trainer"]
    )


def test_kubernetes_pinned_below_37_next_to_boto3() -> None:
    # kubernetes 37 needs python-dateutil>=3, botocore <3: pip backtracks for tens of minutes.
    for req in _pyproject()["project"]["dependencies"]:
        if req.startswith("kubernetes"):
            assert "<37" in req
            break
    else:
        pytest.fail("kubernetes is not a base dependency")


def test_both_import_packages_are_packaged() -> None:
    find = _pyproject()["tool"]["setuptools"]["packages"]["find"]
    assert set(find["where"]) == {"operator", "trainer_image"}
    for pkg in ("operator/finetune_operator", "trainer_image/finetune_trainer"):
        assert (REPO / pkg / "__init__.py").is_file()


@pytest.mark.parametrize(
    "module",
    [
        "finetune_operator.api",
        "finetune_operator.cli",
        "finetune_operator.validation",
        "finetune_operator.crdgen",
        "finetune_operator.resources",
        "finetune_operator.reconcile",
        "finetune_operator.handlers",
        "finetune_trainer.config",
    ],
)
def test_control_side_modules_do_not_import_torch(module: str) -> None:
    """The operator image has no torch: importing its modules must not need it."""
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"{module} imported {proc.stdout.strip()}"


def test_ci_entry_calls_make_test() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert "make test" in text
