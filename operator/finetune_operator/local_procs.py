"""The processes ``finetune run`` starts: one trainer ``launch`` per node, and the server.

Why it exists: on the cluster each training pod runs ``python -m finetune_trainer launch`` with
NNODES/NODE_RANK/NPROC_PER_NODE/MASTER_ADDR/MASTER_PORT set; locally the same command runs once
per node as a child process, with 127.0.0.1 as the rendezvous address. Children get their own
session so that a terminal Ctrl-C reaches only the runner, which forwards SIGTERM to each
``launch`` (the pod contract: checkpoint, then exit 75) and waits; a second Ctrl-C kills the
process groups. Output goes to one log file per node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Nodes", "ServerProcess", "node_env", "start_nodes", "start_server"]


def node_env(
    base: Mapping[str, str],
    *,
    config_path: Path,
    nnodes: int,
    node_rank: int,
    nproc: int,
    master_port: int,
    cpu_only: bool,
) -> dict[str, str]:
    """The environment of one node's ``launch`` (what the pod spec sets in the cluster)."""
    env = dict(base)
    env.update(
        {
            "FINETUNE_CONFIG": str(config_path),
            "NNODES": str(nnodes),
            "NODE_RANK": str(node_rank),
            "NPROC_PER_NODE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "PYTHONUNBUFFERED": "1",
            # Two CPU cores shared by the processes: one thread each avoids oversubscription.
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS")
            or str(max(1, (os.cpu_count() or 1) // max(1, nnodes * nproc))),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    if cpu_only:
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


@dataclass
class Nodes:
    """The running ``launch`` processes, node rank order."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    terminated_at: float | None = None
    _files: list[object] = field(default_factory=list)

    def returncodes(self) -> list[int | None]:
        return [p.poll() for p in self.procs]

    def running(self) -> bool:
        return any(rc is None for rc in self.returncodes())

    def terminate(self) -> None:
        """Ask every launch to stop (SIGTERM: save a checkpoint, exit 75)."""
        if self.terminated_at is None:
            self.terminated_at = time.monotonic()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill every node's whole process group (launch, torchrun, workers)."""
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)

    def close(self) -> None:
        for f in self._files:
            f.close()  # type: ignore[attr-defined]


def start_nodes(envs: Sequence[Mapping[str, str]], log_dir: Path, cwd: Path) -> Nodes:
    """Start one ``python -m finetune_trainer launch`` per environment in ``envs``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    files: list[object] = []
    for rank, env in enumerate(envs):
        log = log_dir / f"node-{rank}.log"
        fh = log.open("ab")
        fh.write(f"\n===== launch node {rank} at {time.strftime('%H:%M:%S')} =====\n".encode())
        fh.flush()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "finetune_trainer",
                    "launch",
                    "--config",
                    env["FINETUNE_CONFIG"],
                ],
                env=dict(env),
                cwd=cwd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        logs.append(log)
        files.append(fh)
    return Nodes(procs=procs, logs=logs, _files=files)


@dataclass
class ServerProcess:
    """The inference server started on a run's artifacts."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll /readyz; RuntimeError (with the log's last lines) if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the inference server exited with code {self.proc.returncode} before it was "
                    f"ready; its log ({self.log}) ends with:\n{tail(self.log)}"
                )
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"the inference server was not ready after {timeout:.0f}s: see {self.log}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_server(
    run_uri: str,
    port: int,
    env: Mapping[str, str],
    log: Path,
    cwd: Path,
    *,
    s3_endpoint: str | None = None,
) -> ServerProcess:
    """``python -m finetune_trainer serve --model RUN_URI --port PORT`` on 127.0.0.1."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = log.open("ab")
    cmd = [sys.executable, "-m", "finetune_trainer", "serve", "--model", run_uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--grace-seconds", "5"]
    if s3_endpoint:
        cmd += ["--s3-endpoint", s3_endpoint]
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        cwd=cwd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    fh.close()  # the child holds its own descriptor
    return ServerProcess(proc=proc, url=f"http://127.0.0.1:{port}", log=log)


def tail(path: Path, lines: int = 12) -> str:
    """The last ``lines`` non-empty lines of a log file ('' if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
