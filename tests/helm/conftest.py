"""Fixtures for the helm tier: the real helm binary and a renderer for the chart.

helm comes from $TOOLS_DIR (built by hack/build-tools.sh; `make test-helm` sets it), else $HELM,
else PATH. Without one the tier is skipped with the command that builds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "finetune-operator"
# helm built with `go install` (no ldflags) assumes Kubernetes v1.20 for `template`; the chart needs
# >= 1.27, so offline rendering names the version the control plane runs.
KUBE_VERSION = "1.35.4"

Render = Callable[..., list[dict[str, Any]]]


def find_helm() -> str | None:
    candidates = [
        Path(os.environ["TOOLS_DIR"]) / "helm" if os.environ.get("TOOLS_DIR") else None,
        Path(os.environ["HELM"]) if os.environ.get("HELM") else None,
    ]
    for path in candidates:
        if path is not None and path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm_bin() -> str:
    path = find_helm()
    if path is None:
        pytest.skip(
            "helm not found: run `make test-helm` (builds it via hack/build-tools.sh) or set HELM"
        )
    return path


@pytest.fixture(scope="session")
def helm(helm_bin: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run helm with arguments; returns the completed process (never raises)."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [helm_bin, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    return run


@pytest.fixture(scope="session")
def render(helm: Callable[..., subprocess.CompletedProcess[str]]) -> Iterator[Render]:
    """`helm template` the chart with a values dict; returns the rendered objects."""
    tmp = Path(tempfile.mkdtemp(prefix="helm-values-"))

    def _render(
        values: dict[str, Any] | None = None,
        *,
        release: str = "ft",
        namespace: str = "finetune-system",
        show_only: str | None = None,
    ) -> list[dict[str, Any]]:
        args = [
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
        ]
        if values is not None:
            path = tmp / f"values-{len(list(tmp.iterdir()))}.json"
            path.write_text(json.dumps(values))
            args += ["-f", str(path)]
        if show_only:
            args += ["--show-only", show_only]
        proc = helm(*args)
        if proc.returncode != 0:
            raise RenderError(proc.stderr.strip())
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    yield _render
    shutil.rmtree(tmp, ignore_errors=True)


class RenderError(Exception):
    """helm template failed; the message is helm's stderr."""


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
