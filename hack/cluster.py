"""`make cluster`: run the test control plane in the foreground for manual use.

Why: the same cluster the tests use (hack/controlplane.py), kept up until Ctrl-C or SIGTERM, so a
developer can point kubectl, helm or the operator at it. Prints `KUBECONFIG=<path>` on a line of
its own once every component is ready; stops everything and removes its state on exit. The
component logs stay in the printed logs directory.

Usage: TOOLS_DIR=$(bash hack/build-tools.sh | tail -n 1) .venv/bin/python hack/cluster.py [options]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import controlplane  # hack/ is not a package: imported from sys.path[0]


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4, help="fake GPU nodes (default 4)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="nvidia.com/gpu per node")
    parser.add_argument(
        "--logs-dir", type=Path, help="where component logs go (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    tools_dir = (
        Path(os.environ["TOOLS_DIR"]) if os.environ.get("TOOLS_DIR") else controlplane.build_tools()
    )
    logs_dir = args.logs_dir or Path(tempfile.mkdtemp(prefix="finetune-cluster-logs-"))
    started = time.monotonic()
    try:
        cp = controlplane.start(
            tools_dir,
            logs_dir=logs_dir,
            nodes=controlplane.NodePool(count=args.nodes, gpus=args.gpus_per_node),
        )
    except controlplane.ControlPlaneError as exc:
        print(f"cluster: failed to start: {exc}", file=sys.stderr)
        return 1
    except _Stop:
        return 130
    try:
        print(f"cluster: ready in {time.monotonic() - started:.1f}s: {cp.server}, nodes {', '.join(cp.nodes)}",
              file=sys.stderr)  # fmt: skip
        print(
            f"cluster: logs in {logs_dir}; tools in {tools_dir}; Ctrl-C stops it", file=sys.stderr
        )
        print(f"KUBECONFIG={cp.kubeconfig}", flush=True)
        while True:
            dead = cp.dead_components()
            if dead:
                print(
                    f"cluster: {', '.join(dead)} exited unexpectedly:\n{cp.log_tail(30)}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(1)
    except _Stop as stop:
        print(f"cluster: {stop}; stopping", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cp.stop()
        print("cluster: stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
