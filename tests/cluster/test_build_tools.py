"""hack/build-tools.sh and hack/gowrapper.py: the pinned releases are what gets built and run.

Why: the wrapper go.mod must map every locally-replaced sibling module of a release to its
published version (a missed one breaks the build, a wrong one builds a different Kubernetes), and
the binaries in the tools directory must be the versions hack/tools.pins promises.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.controlplane import REPO

GOWRAPPER = REPO / "hack" / "gowrapper.py"


def pins() -> dict[str, str]:
    lines = (REPO / "hack" / "tools.pins").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def gowrapper(tmp_path: Path, upstream: str, *args: str) -> str:
    (tmp_path / "go.mod").write_text(upstream)
    proc = subprocess.run(
        ["python3", str(GOWRAPPER), str(tmp_path / "go.mod"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


UPSTREAM = """// generated
module k8s.io/kubernetes

go 1.25.0

godebug default=go1.25

require (
\tk8s.io/api v0.0.0
\tgithub.com/x/y v1.2.3
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
\tgithub.com/x/y => github.com/fork/y v1.2.4
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
replace k8s.io/kubectl => ./staging/src/k8s.io/kubectl
"""


def test_local_replaces_map_to_published_siblings(tmp_path: Path) -> None:
    out = gowrapper(
        tmp_path, UPSTREAM, "finetune.dev/tools/k", "k8s.io/kubernetes", "v1.35.4", "v0.35.4"
    )
    assert out.splitlines()[0] == "module finetune.dev/tools/k"
    assert "go 1.25.0" in out and "godebug default=go1.25" in out
    assert "require k8s.io/kubernetes v1.35.4" in out
    replaces = sorted(re.findall(r"^\t(\S+ => .+)$", out, re.M))
    assert replaces == [
        "github.com/x/y => github.com/fork/y v1.2.4",
        "k8s.io/api => k8s.io/api v0.35.4",
        "k8s.io/client-go => k8s.io/client-go v0.35.4",
        "k8s.io/kubectl => k8s.io/kubectl v0.35.4",
    ]
    assert "FORBIDDEN" not in out and "./" not in out


def test_real_kubernetes_go_mod_has_every_staging_module_mapped(tmp_path: Path) -> None:
    version = pins()["KUBERNETES_VERSION"]
    gomodcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True
    ).stdout.strip()
    cached = (
        Path(gomodcache or Path.home() / "go/pkg/mod")
        / f"cache/download/k8s.io/kubernetes/@v/{version}.mod"
    )
    if not cached.is_file():
        pytest.skip(f"{cached} absent: run `make tools` first")
    upstream = cached.read_text()
    staging = set(re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", upstream, re.M))
    assert len(staging) > 25  # api, apimachinery, apiserver, client-go, ... as of 1.35
    out = gowrapper(tmp_path, upstream, "w", "k8s.io/kubernetes", version, "v0" + version[2:])
    mapped = set(re.findall(r"^\t(k8s\.io/[\w.-]+) => \1 v0\.\d+\.\d+$", out, re.M))
    assert mapped == staging


@pytest.mark.cluster
def test_tools_dir_holds_the_pinned_versions() -> None:
    tools = Path(os.environ["TOOLS_DIR"]) if os.environ.get("TOOLS_DIR") else None
    if tools is None:
        from tests.support.controlplane import cp_module

        tools = cp_module.build_tools(REPO)
    p = pins()

    def version(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    k8s = p["KUBERNETES_VERSION"]
    for binary in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert version(str(tools / binary), "--version").strip() == f"Kubernetes {k8s}"
    assert f"Client Version: {k8s}" in version(str(tools / "kubectl"), "version", "--client")
    assert f"etcd Version: {p['ETCD_VERSION'].lstrip('v')}" in version(
        str(tools / "etcd"), "--version"
    )
    assert p["KWOK_VERSION"] in version(str(tools / "kwok"), "--version")
    assert f'Version:"{p["HELM_VERSION"]}"' in version(str(tools / "helm"), "version")
    assert tools.parent == Path(
        os.environ.get("TOOLS_CACHE", Path.home() / ".cache/finetune-operator/tools")
    )
    assert not tools.is_relative_to(REPO), "the tools cache must live outside the clone"
