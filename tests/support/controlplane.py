"""Pytest fixtures for the real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).

Why: cluster-tier tests need a real API server, shared by the whole session because it takes
seconds to start. The control plane itself is hack/controlplane.py (also behind `make cluster`);
this plugin only builds the tools when needed, starts it once per session, and hands out fresh
namespaces. Registered by tests/conftest.py.

Fixtures:
  control_plane  (session)  .kubeconfig, .server, .tools_dir, .logs_dir, .env (os.environ plus
                            KUBECONFIG and the tools first on PATH), .kubectl(*args, check=True,
                            input=None, timeout=60), .api_client()
  crd_installed  (session)  applies crds/finetunejobs.finetune.dev.yaml and waits for Established;
                            returns the CRD name. Skips while the file does not exist.
  namespace      (function) a fresh namespace (with its default service account), deleted after.

Tools: $TOOLS_DIR when set (the Makefile sets it), else hack/build-tools.sh is run once before the
first test (a cold build takes tens of minutes; its progress goes to stderr).

Fake nodes: 4 nodes (gpu-node-0..3), each with 8 nvidia.com/gpu, 64 cpu, 512Gi memory, 110 pods.
Pods scheduled onto them are driven by kwok through annotations (helpers below set them):
  finetune.dev/kwok-exit-code: "N"   pod terminates: Succeeded when N is 0, else Failed; every
                                     container reports state.terminated.exitCode N
  finetune.dev/kwok-message: "..."   state.terminated.message of those containers
  finetune.dev/kwok-ready: "false"   pod stays Running but not Ready ("true" makes it Ready again)
Without annotations a pod goes Running and Ready and stays there (Deployments become Available;
Job pods run until a test ends them).

On a failed test that used the cluster, the tails of every component log are attached to the
report; the full logs stay in control_plane.logs_dir (under pytest's basetemp).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "finetunejobs.finetune.dev.yaml"
EXIT_CODE_ANNOTATION = "finetune.dev/kwok-exit-code"
MESSAGE_ANNOTATION = "finetune.dev/kwok-message"
READY_ANNOTATION = "finetune.dev/kwok-ready"

T = TypeVar("T")


def _load_controlplane() -> ModuleType:
    """hack/ is not a package: load hack/controlplane.py under a stable module name."""
    name = "finetune_hack_controlplane"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / "controlplane.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cp_module = _load_controlplane()
ControlPlane = cp_module.ControlPlane
ControlPlaneError = cp_module.ControlPlaneError
KubectlError = cp_module.KubectlError

_active: Any = None  # the session's ControlPlane once started, for the failure-report hook


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.25,
    message: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy and return that; else TimeoutError.

    Exceptions from the predicate count as "not yet"; the last one is named in the error.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except Exception as exc:  # not yet; named in the TimeoutError if it never succeeds
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {message} (last: {last!r})"
            )
        time.sleep(interval)


def set_pod_result(
    control_plane: Any, namespace: str, pod: str, exit_code: int, message: str = ""
) -> None:
    """Make kwok terminate `pod`: Succeeded for exit code 0, else Failed, with this message."""
    control_plane.kubectl(
        "annotate", "--overwrite", "-n", namespace, f"pod/{pod}",
        f"{EXIT_CODE_ANNOTATION}={int(exit_code)}", f"{MESSAGE_ANNOTATION}={message}",
    )  # fmt: skip


def set_pod_ready(control_plane: Any, namespace: str, pod: str, ready: bool) -> None:
    """Make kwok report `pod` Ready or Running-but-not-Ready."""
    control_plane.kubectl(
        "annotate", "--overwrite", "-n", namespace, f"pod/{pod}",
        f"{READY_ANNOTATION}={'true' if ready else 'false'}",
    )  # fmt: skip


def _tools_dir() -> Path:
    env = os.environ.get("TOOLS_DIR")
    if env:
        return Path(env)
    path = cp_module.build_tools(REPO)
    os.environ["TOOLS_DIR"] = str(path)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the tools before the first cluster test, outside any per-test timeout."""
    if config.option.collectonly or os.environ.get("TOOLS_DIR"):
        return
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in items):
        _tools_dir()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's control plane (see the module docstring)."""
    global _active
    logs = tmp_path_factory.mktemp("controlplane-logs")
    cp = cp_module.start(_tools_dir(), logs_dir=logs)
    _active = cp
    try:
        yield cp
    finally:
        _active = None
        cp.stop()


@pytest.fixture(scope="session")
def crd_installed(control_plane: Any) -> str:
    """Apply the FineTuneJob CRD and wait until it is Established; returns its name."""
    if not CRD_FILE.is_file():
        pytest.skip(f"{CRD_FILE.relative_to(REPO)} not generated yet (run `make crd`)")
    name = yaml.safe_load(CRD_FILE.read_text())["metadata"]["name"]
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", timeout=90
    )
    return str(name)


@pytest.fixture
def namespace(control_plane: Any, request: pytest.FixtureRequest) -> Generator[str, None, None]:
    """A fresh namespace named after the test, ready for pods; deleted (without waiting) after."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem or 't'}-{secrets.token_hex(3)}"
    control_plane.kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            control_plane.kubectl(
                "get", "serviceaccount", "default", "-n", name, check=False
            ).returncode
            == 0
        ),
        timeout=30,
        message=f"service account default in namespace {name}",
    )
    yield name
    control_plane.kubectl(
        "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Attach the component log tails to the report of a failed test that used the cluster."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and _active is not None
        and "control_plane" in getattr(item, "fixturenames", ())
    ):
        dead = _active.dead_components()
        header = f"logs in {_active.logs_dir}" + (f"; exited: {', '.join(dead)}" if dead else "")
        report.sections.append(("control plane logs (tails)", f"{header}\n{_active.log_tail(25)}"))
