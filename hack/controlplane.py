"""Start and stop a real Kubernetes control plane on loopback for tests and `make cluster`.

Why: the operator is only proven against a real API server. This module runs the binaries that
hack/build-tools.sh builds from their Go modules: etcd, kube-apiserver (RBAC on, client-certificate
authentication, service-account token signing), kube-controller-manager (each controller with its
own service account), kube-scheduler and kwok, which plays the kubelet for fake GPU nodes and moves
pods through the Stages in hack/kwok/stages.yaml. It is the one implementation behind both
`make cluster` (hack/cluster.py) and the session fixture in tests/support/controlplane.py.

Every port is picked free at start; state (etcd data, certificates, kubeconfigs) lives in a
temporary directory removed by `stop()`; component logs go to `logs_dir` and outlive the cluster.
Children get PR_SET_PDEATHSIG so they die with the Python process even when it is killed hard.

Pod lifecycle on the fake nodes (annotations on the pod, see hack/kwok/stages.yaml):
  finetune.dev/kwok-exit-code: "N"   the pod terminates: Succeeded for 0, Failed otherwise, each
                                     container with exit code N
  finetune.dev/kwok-message: "..."   termination message of those containers
  finetune.dev/kwok-ready: "false"   the pod stays Running but not Ready (set "true" to recover)
Without annotations a scheduled pod goes Running and Ready and stays so.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "KubectlError",
    "NodePool",
    "build_tools",
    "start",
]

HACK_DIR = Path(__file__).resolve().parent
REPO_ROOT = HACK_DIR.parent
STAGES_FILE = HACK_DIR / "kwok" / "stages.yaml"
TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def _load_sibling(name: str) -> Any:
    """hack/ is not a package: load hack/<name>.py by path, whoever imports this module."""
    spec = spec_from_file_location(f"finetune_hack_{name}", HACK_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_pki = _load_sibling("pki")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached; the message says which part."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call failed; str() includes its arguments and stderr."""

    def __str__(self) -> str:
        args = " ".join(str(a) for a in self.cmd[3:])
        return f"kubectl {args} exited {self.returncode}: {(self.stderr or '').strip()}"


@dataclass(frozen=True)
class NodePool:
    """Fake nodes kwok manages; each advertises `gpus` nvidia.com/gpu."""

    count: int = 4
    gpus: int = 8
    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    name_prefix: str = "gpu-node"

    def manifests(self) -> list[dict[str, Any]]:
        return [self._node(f"{self.name_prefix}-{i}") for i in range(self.count)]

    def _node(self, name: str) -> dict[str, Any]:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "nvidia.com/gpu": str(self.gpus),
            "ephemeral-storage": "1Ti",
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.count": str(self.gpus),
                    "nvidia.com/gpu.product": self.gpu_product,
                },
            },
            "status": {"capacity": resources, "allocatable": dict(resources)},
        }


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


@dataclass
class ControlPlane:
    """A running control plane. Use `stop()` (or a `with` block) to end it."""

    tools_dir: Path
    state_dir: Path
    logs_dir: Path
    server: str
    kubeconfig: str
    nodes: list[str]
    components: list[_Component] = field(default_factory=list)
    _stopped: bool = False
    _state_lock: IO[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The current environment with KUBECONFIG set and the tools first on PATH."""
        return {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "PATH": f"{self.tools_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raise KubectlError on failure if check."""
        cmd = [str(self.tools_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient authenticated as the cluster admin."""
        from kubernetes import config  # imported lazily: build/start need only the stdlib

        return config.new_client_from_config(config_file=self.kubeconfig)

    def dead_components(self) -> list[str]:
        return [c.name for c in self.components if c.process.poll() is not None]

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of every component log, for failure reports."""
        parts = []
        for comp in self.components:
            status = (
                "running" if comp.process.poll() is None else f"exited {comp.process.returncode}"
            )
            parts.append(f"----- {comp.name} ({status}) {comp.log_path}")
            parts.append(_tail(comp.log_path, lines))
        return "\n".join(parts)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every component (SIGTERM, then SIGKILL) and remove the state directory."""
        if self._stopped:
            return
        self._stopped = True
        # One at a time, clients before the API server before etcd: each shuts down gracefully
        # only while what it talks to is still up.
        for comp in reversed(self.components):
            _signal_group(comp.process, signal.SIGTERM)
            try:
                comp.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(comp.process, signal.SIGKILL)
                comp.process.wait(timeout=10)
            comp.log_file.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if self._state_lock:
            self._state_lock.close()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_tools(repo_root: Path = REPO_ROOT) -> Path:
    """Run hack/build-tools.sh (a no-op when cached) and return the tools directory it prints."""
    proc = subprocess.run(
        ["bash", str(repo_root / "hack" / "build-tools.sh")], stdout=subprocess.PIPE, text=True
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ControlPlaneError(
            f"hack/build-tools.sh failed (exit {proc.returncode}); its stderr above says which tool"
        )
    return Path(lines[-1])


def start(
    tools_dir: Path | str,
    logs_dir: Path | str | None = None,
    nodes: NodePool = NodePool(),
    timeout: float = 120.0,
) -> ControlPlane:
    """Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok; wait for nodes.

    Returns once the API is ready, every fake node is Ready and the `default` service account
    exists (pods can be created). On any failure everything started so far is stopped and a
    ControlPlaneError carrying the component log tails is raised.
    """
    tools = Path(tools_dir)
    missing = [t for t in TOOLS if not os.access(tools / t, os.X_OK)]
    if missing:
        raise ControlPlaneError(
            f"{tools} lacks {', '.join(missing)}: run `make tools` (hack/build-tools.sh) "
            "and pass the directory it prints as TOOLS_DIR"
        )
    deadline = time.monotonic() + timeout
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            return _start_once(tools, logs_dir, nodes, deadline)
        except ControlPlaneError as exc:
            # Ports are picked free but only bound by the component a moment later; another
            # cluster starting on this machine may take one first. Retry with fresh ports.
            if attempt == _START_ATTEMPTS or "address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


_START_ATTEMPTS = 3


def _start_once(
    tools: Path, logs_dir: Path | str | None, nodes: NodePool, deadline: float
) -> ControlPlane:
    _reap_stale_state()
    state = Path(tempfile.mkdtemp(prefix=_STATE_PREFIX))
    state_lock = open(state / ".lock", "wb")  # noqa: SIM115 - held until ControlPlane.stop
    fcntl.flock(state_lock, fcntl.LOCK_EX)
    logs = Path(logs_dir) if logs_dir else state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pki = _pki.write_pki(state / "pki", str(next(ipaddress.ip_network(SERVICE_CIDR).hosts())))
    api_port = _free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfigs = {
        user: _pki.write_kubeconfig(state / f"{user}.kubeconfig", server, pki, user)
        for user in ("admin", "kube-controller-manager", "kube-scheduler", "kwok")
    }
    cp = ControlPlane(
        tools_dir=tools,
        state_dir=state,
        logs_dir=logs,
        server=server,
        kubeconfig=str(kubeconfigs["admin"]),
        nodes=[n["metadata"]["name"] for n in nodes.manifests()],
        _state_lock=state_lock,
    )
    try:
        _start_all(cp, pki, kubeconfigs, api_port, nodes, deadline)
    except BaseException as exc:
        tail = cp.log_tail(30)
        cp.stop(grace=3)
        if isinstance(exc, ControlPlaneError):
            raise ControlPlaneError(f"{exc}\n{tail}") from exc
        raise
    return cp


def _start_all(
    cp: ControlPlane,
    pki: dict[str, Path],
    kubeconfigs: dict[str, Path],
    api_port: int,
    nodes: NodePool,
    deadline: float,
) -> None:
    etcd_port, etcd_peer = _free_port(), _free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    _launch(cp, "etcd", [
        f"--data-dir={cp.state_dir / 'etcd'}",
        f"--listen-client-urls={etcd_url}",
        f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
        "--unsafe-no-fsync",  # test data: durability is not worth the fsync latency
        "--log-level=warn",
    ])  # fmt: skip
    _wait_http(
        cp, "etcd", f"{etcd_url}/health", deadline, ok=lambda body: '"health":"true"' in body
    )

    _launch(cp, "kube-apiserver", [
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        f"--cert-dir={cp.state_dir / 'apiserver'}",
        f"--tls-cert-file={pki['apiserver.crt']}",
        f"--tls-private-key-file={pki['apiserver.key']}",
        f"--client-ca-file={pki['ca.crt']}",
        f"--requestheader-client-ca-file={pki['front-proxy-ca.crt']}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki['front-proxy-client.crt']}",
        f"--proxy-client-key-file={pki['front-proxy-client.key']}",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki['sa.pub']}",
        f"--service-account-signing-key-file={pki['sa.key']}",
        f"--api-audiences={SA_ISSUER}",
        # No kubelets: the `kubernetes` Service cannot point at a loopback address anyway.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ])  # fmt: skip
    admin_ctx = _pki.client_context(pki, "admin")
    _wait_http(cp, "kube-apiserver", f"{cp.server}/readyz", deadline, context=admin_ctx)

    def delegated(user: str) -> list[str]:
        """The three kubeconfig flags every delegating component (kcm, scheduler) needs."""
        return [f"--{kind}={kubeconfigs[user]}" for kind in
                ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")]  # fmt: skip

    kcm_port, sched_port, kwok_port = _free_port(), _free_port(), _free_port()
    _launch(cp, "kube-controller-manager", [
        *delegated("kube-controller-manager"),
        "--bind-address=127.0.0.1",
        f"--secure-port={kcm_port}",
        f"--cert-dir={cp.state_dir / 'kcm'}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki['sa.key']}",
        f"--root-ca-file={pki['ca.crt']}",
        f"--cluster-signing-cert-file={pki['ca.crt']}",
        f"--cluster-signing-key-file={pki['ca.key']}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
    ])  # fmt: skip
    _launch(cp, "kube-scheduler", [
        *delegated("kube-scheduler"),
        "--bind-address=127.0.0.1",
        f"--secure-port={sched_port}",
        f"--cert-dir={cp.state_dir / 'scheduler'}",
        "--leader-elect=false",
        "--profiling=false",
    ])  # fmt: skip
    _launch(cp, "kwok", [
        f"--kubeconfig={kubeconfigs['kwok']}",
        f"--config={STAGES_FILE}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--server-address=127.0.0.1:{kwok_port}",
        f"--cidr={POD_CIDR}",
        "--node-ip=10.240.0.1",
        "--node-lease-duration-seconds=40",
    ])  # fmt: skip
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # self-signed serving certs of kcm/scheduler on loopback
    _wait_http(cp, "kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz", deadline,
               context=insecure)  # fmt: skip
    _wait_http(cp, "kube-scheduler", f"https://127.0.0.1:{sched_port}/healthz", deadline,
               context=insecure)  # fmt: skip
    _wait_http(cp, "kwok", f"http://127.0.0.1:{kwok_port}/healthz", deadline)

    for node in nodes.manifests():
        _api(cp, admin_ctx, "POST", "/api/v1/nodes", node)
    _wait(cp, deadline, "every fake node Ready", lambda: _nodes_ready(cp, admin_ctx, len(cp.nodes)))
    _wait(cp, deadline, "the default service account (serviceaccount controller)",
          lambda: _exists(cp, admin_ctx, "/api/v1/namespaces/default/serviceaccounts/default"))  # fmt: skip


_STATE_PREFIX = "finetune-controlplane-"


def _reap_stale_state() -> None:
    """Remove state dirs of clusters whose Python process died without stop() (e.g. kill -9).

    The owner holds an flock on <state>/.lock for the cluster's life, so a lock we can take
    belongs to nobody; its components died with their parent (PR_SET_PDEATHSIG).
    """
    for stale in Path(tempfile.gettempdir()).glob(f"{_STATE_PREFIX}*"):
        try:
            if time.time() - stale.stat().st_mtime < 60:  # may be starting: lock not taken yet
                continue
            with open(stale / ".lock", "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # held by a live cluster, no lock yet (just created), or already gone
            continue


# --- processes -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the Python process dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _launch(cp: ControlPlane, name: str, args: Sequence[str]) -> None:
    log_path = cp.logs_dir / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed by ControlPlane.stop
    process = subprocess.Popen(
        [str(cp.tools_dir / name), *args],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    cp.components.append(_Component(name, process, log_path, log_file))


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- readiness -------------------------------------------------------------------------------


def _wait(cp: ControlPlane, deadline: float, what: str, check: Callable[[], bool]) -> None:
    while True:
        dead = cp.dead_components()
        if dead:
            raise ControlPlaneError(f"{', '.join(dead)} exited while waiting for {what}")
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _wait_http(
    cp: ControlPlane,
    name: str,
    url: str,
    deadline: float,
    context: ssl.SSLContext | None = None,
    ok: Callable[[str], bool] = lambda body: True,
) -> None:
    def check() -> bool:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200 and ok(resp.read().decode())

    _wait(cp, deadline, f"{name} to answer {url}", check)


def _api(
    cp: ControlPlane, ctx: ssl.SSLContext, method: str, path: str, body: Any = None
) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{cp.server}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _exists(cp: ControlPlane, ctx: ssl.SSLContext, path: str) -> bool:
    try:
        _api(cp, ctx, "GET", path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise
    return True


def _nodes_ready(cp: ControlPlane, ctx: ssl.SSLContext, want: int) -> bool:
    items = _api(cp, ctx, "GET", "/api/v1/nodes")["items"]
    ready = [
        n
        for n in items
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    ]
    return len(ready) >= want
