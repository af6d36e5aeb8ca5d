"""Fixture running the operator as a real process (``finetune operator``) against the control plane.

Why: the cluster tests prove the operator the way it runs in production: a separate process with
a kubeconfig, talking to a real API server, that can be SIGKILLed and restarted. Registered by
tests/conftest.py.

Fixture:
  operator_process (function) an ``OperatorProcess`` watching the test's namespace, with a 1 s
                   timer and a 1 s restart backoff; ``.metrics_url``, ``.healthz_url``,
                   ``.kill()`` (SIGKILL), ``.start()``, ``.log_text()``. Stopped after the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """``finetune operator`` in a subprocess, its output in a log file."""

    def __init__(
        self,
        env: dict[str, str],
        namespaces: list[str],
        log_path: Path,
        extra_args: list[str] | None = None,
    ) -> None:
        self.env = env
        self.namespaces = namespaces
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.metrics_port = _free_port()
        self.liveness_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def healthz_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness_port}/healthz"

    def start(self, timeout: float = 60) -> None:
        args = [
            sys.executable, "-m", "finetune_operator.cli", "operator",
            "--metrics-port", str(self.metrics_port),
            "--liveness-port", str(self.liveness_port),
            "--timer-interval", "1",
            "--restart-backoff", "1",
            "--restart-backoff-max", "4",
            "--trainer-report-interval", "1",
            *[f"--namespace={ns}" for ns in self.namespaces],
            *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"operator exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            try:
                with urllib.request.urlopen(self.healthz_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"operator not live after {timeout}s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizer handling, exactly like an OOM kill or node loss."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return str(r.read().decode())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def operator_process(
    control_plane: Any, crd_installed: str, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    env = dict(control_plane.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "operator"), str(REPO / "trainer_image"), env.get("PYTHONPATH", "")]
    )
    op = OperatorProcess(env, [namespace], tmp_path / "operator.log")
    op.start()
    yield op
    # Delete the test's FineTuneJobs while the operator still runs (it releases its finalizer), and
    # wait for their pods to go, so that the next test finds every fake GPU free.
    if op.proc is not None and op.proc.poll() is None:
        control_plane.kubectl(
            "delete", "finetunejobs", "--all", "-n", namespace, "--wait=false", check=False
        )
        deadline = time.monotonic() + 60
        left: list[str] = []
        while time.monotonic() < deadline:
            jobs = control_plane.kubectl(
                "get", "finetunejobs", "-n", namespace, "-o", "name", check=False
            ).stdout.split()
            active = control_plane.kubectl(
                "get", "pods", "-n", namespace, "-o", "name",
                "--field-selector=status.phase!=Succeeded,status.phase!=Failed", check=False,
            ).stdout.split()  # fmt: skip
            left = jobs + active
            if not left:
                break
            time.sleep(0.5)
        else:
            print(f"cleanup: still present after 60s: {left}")
    op.stop()
    # Shown by pytest only when the test failed.
    print(f"--- operator log tail ({op.log_path}) ---\n{op.log_text()[-6000:]}")
