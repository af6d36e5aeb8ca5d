"""Every Grafana dashboard query and every chart alert returns series from the real components.

Why it exists: dashboards rot silently (a renamed metric shows "No data" and nobody notices). Here
Debian's prometheus scrapes, on loopback:
  - the operator (`finetune operator`) reconciling FineTuneJobs on the real control plane: one job
    pending, one failed by its pod's exit code 65 (bad data), one blocked by a ResourceQuota (real
    API errors, so reconcile errors are counted);
  - a real trainer run (`python -m finetune_trainer launch`, tiny Llama, LoRA on CPU) whose
    training processes are frozen with SIGSTOP for a while (a real stall: the launcher keeps
    serving /metrics while the step stops moving);
  - the built-in inference server serving that run, answering good and malformed requests.
Then each dashboard query is evaluated over the scraped window and must return series, and each
alert of the chart's PrometheusRule (rendered by helm, loaded into prometheus) must return series
in the situation it is about, including FineTuneOperatorDown after the operator is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.conftest import Prometheus, free_port
from tests.support.controlplane import set_pod_result, wait_for
from tests.support.operator import OperatorProcess
from tests.support.trainer_jobs import launch, make_config, write_completion_data

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "dashboards"))
from build import render, targets  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OPERATOR_JOB = "finetune-operator-metrics"  # the job label the chart's ServiceMonitor yields
STALLED_FOR = "6s"


def rendered_rules() -> list[dict[str, Any]]:
    """The chart's PrometheusRule groups, rendered by the real helm with short test windows."""
    from tests.helm.conftest import CHART, KUBE_VERSION, find_helm

    helm = find_helm()
    if helm is None:
        pytest.skip("helm not found (TOOLS_DIR/helm, $HELM or PATH)")
    proc = subprocess.run(
        [
            helm, "template", "finetune-operator", str(CHART), "--kube-version", KUBE_VERSION,
            "--show-only", "templates/prometheusrule.yaml",
            "--set", "monitoring.prometheusRule.enabled=true",
            "--set", f"monitoring.prometheusRule.stalledFor={STALLED_FOR}",
            "--set-json", "monitoring.prometheusRule.reconcileErrorRate=0.001",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    groups: list[dict[str, Any]] = yaml.safe_load(proc.stdout)["spec"]["groups"]
    return groups


def substitute(expr: str) -> str:
    """Grafana's variables as the dashboard's "All" selection and a rate window for 1 s scrapes."""
    return expr.replace("$namespace", ".*").replace("$job", ".*").replace("$__rate_interval", "10s")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def http(url: str, body: dict[str, Any] | bytes | None = None) -> int:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def ftj(name: str, **spec: Any) -> str:
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny-llama/"},
            "datasets": [
                {"name": "chat", "uri": "s3://datasets/chat/train.jsonl", "format": "chat"}
            ],
            "output": {"uri": f"s3://artifacts/team-a/{name}/"},
            "distributed": {"nodes": 1, "gpusPerNode": 1},
            "storage": {"endpoint": "http://s3.example:9000", "credentialsSecret": "s3-creds"},
            "runPolicy": {"backoffLimit": 0},
            **spec,
        },
    }
    return json.dumps(doc)


def phase(cp: Any, ns: str, name: str) -> str | None:
    proc = cp.kubectl("get", "ftj", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout).get("status", {}).get("phase") if proc.returncode == 0 else None


def test_every_dashboard_query_and_alert_returns_series(
    control_plane: Any,
    crd_installed: str,
    namespace: str,
    prometheus: Prometheus,
    tiny_llama_dir: Path,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    rule_groups = rendered_rules()
    alerts = {r["alert"]: r["expr"] for g in rule_groups for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"FineTuneJobFailed", "FineTuneJobStalled", "FineTuneOperatorDown",
                           "FineTuneOperatorReconcileErrors"}  # fmt: skip

    # --- the operator, as a process, watching the test namespace.
    env = dict(cp.env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")])
    operator = OperatorProcess(env, [ns], tmp_path / "operator.log")
    trainer_port, server_port = free_port(), free_port()
    prometheus.start(
        {
            OPERATOR_JOB: f"127.0.0.1:{operator.metrics_port}",
            "trainer": f"127.0.0.1:{trainer_port}",
            "inference": f"127.0.0.1:{server_port}",
        },
        rule_groups,
    )
    start = time.time()
    timings: dict[str, float] = {}
    operator.start()
    server: subprocess.Popen[bytes] | None = None
    trainer: subprocess.Popen[bytes] | None = None
    try:
        cp.kubectl(
            "create", "secret", "generic", "s3-creds", "-n", ns,
            "--from-literal=AWS_ACCESS_KEY_ID=test", "--from-literal=AWS_SECRET_ACCESS_KEY=test",
        )  # fmt: skip
        for name in ("good", "bad"):
            cp.kubectl("apply", "-n", ns, "-f", "-", input=ftj(name))
        wait_for(lambda: phase(cp, ns, "good") and phase(cp, ns, "bad"), timeout=60,
                 message="both jobs picked up")  # fmt: skip

        def bad_pod() -> str | None:
            out = cp.kubectl("get", "pods", "-n", ns, "-l", "finetune.dev/job=bad", "-o",
                             "jsonpath={.items[0].metadata.name}", check=False).stdout  # fmt: skip
            return out.strip() or None

        set_pod_result(cp, ns, wait_for(bad_pod, timeout=60, message="pod of job bad"), 65,
                       "row 3: messages missing")  # fmt: skip
        wait_for(lambda: phase(cp, ns, "bad") == "Failed", timeout=60, message="bad Failed")

        # A quota that forbids one more ConfigMap: the next job's reconcile gets real API errors.
        used = len(
            json.loads(cp.kubectl("get", "configmaps", "-n", ns, "-o", "json").stdout)["items"]
        )
        cp.kubectl(
            "create", "quota", "no-more-configmaps", "-n", ns, f"--hard=count/configmaps={used}"
        )
        wait_for(
            lambda: "used" in json.loads(cp.kubectl("get", "quota", "no-more-configmaps", "-n", ns,
                                                    "-o", "json").stdout).get("status", {}),
            timeout=60, message="quota status computed",
        )  # fmt: skip
        cp.kubectl("apply", "-n", ns, "-f", "-", input=ftj("blocked"))

        # --- a real trainer run (tiny Llama, LoRA, CPU), long enough to be scraped and for the
        # freeze below to land mid-training on an idle machine (~50 steps/s there).
        train, val = write_completion_data(tmp_path / "data", train_rows=256, val_rows=16)
        config = make_config(
            tmp_path / "trainer", base_uri=str(tiny_llama_dir), train_uri=str(train),
            val_uri=str(val), output_uri=str(tmp_path / "out"), max_steps=1500, every_steps=100000,
            metrics_port=trainer_port,
        )  # fmt: skip
        timings["operator scenario"] = time.time() - start
        trainer = launch(config, tmp_path / "trainer.log")

        def step() -> float:
            res = prometheus.query("finetune_trainer_step")
            return float(res[0]["value"][1]) if res else 0.0

        wait_for(lambda: step() >= 3, timeout=240, interval=0.5,
                 message=f"trainer at step 3; log:\n{(tmp_path / 'trainer.log').read_text()[-3000:]}")  # fmt: skip
        # A real stall: freeze the training processes; the launcher keeps answering /metrics.
        frozen = descendants(trainer.pid)
        assert frozen, "launch started no training process"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            stalled = wait_for(lambda: prometheus.query(alerts["FineTuneJobStalled"]), timeout=30,
                               message="FineTuneJobStalled expression during the freeze")  # fmt: skip
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        assert (
            stalled[0]["metric"]["job"] == "tiny" and stalled[0]["metric"]["namespace"] == "team-a"
        )
        assert trainer.wait(600) == 0, (tmp_path / "trainer.log").read_text()[-4000:]
        timings["trainer run"] = time.time() - start - timings["operator scenario"]
        run_dir = tmp_path / "out" / "runs" / "run-1"
        assert (run_dir / "finetune.json").is_file()

        # --- the built-in server on that run: good requests and malformed ones.
        with (tmp_path / "server.log").open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "finetune_trainer", "serve", "--model", str(run_dir),
                 "--host", "127.0.0.1", "--port", str(server_port), "--device", "cpu"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
        base = f"http://127.0.0.1:{server_port}"
        wait_for(lambda: http(base + "/readyz") == 200, timeout=180, interval=0.5,
                 message=f"server ready; log:\n{(tmp_path / 'server.log').read_text()[-3000:]}")  # fmt: skip
        for _ in range(6):
            assert (
                http(base + "/v1/completions", {"prompt": "Repeat: the cat", "max_tokens": 4})
                == 200
            )
            assert http(base + "/v1/completions", b"{not json") == 400
            time.sleep(0.5)
        time.sleep(4)  # a few more scrapes of everything
        end = time.time()

        # --- every dashboard query has series in the scraped window.
        dashboard = json.loads(render())
        empty = []
        for title, expr in targets(dashboard):
            if not prometheus.query_range(substitute(expr), start, end):
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without series:\n" + "\n".join(empty)
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                metric = variable["definition"].split("(", 1)[1].rsplit(",", 1)[0]
                label = variable["definition"].rsplit(",", 1)[1].strip(" )")
                series = prometheus.query_range(substitute(metric), start, end)
                values = {s["metric"].get(label) for s in series}
                assert values - {None}, f"variable {variable['name']} would list nothing"

        # --- alerts: each returns series in the situation it is about.
        failed = prometheus.query(alerts["FineTuneJobFailed"])
        assert {s["metric"]["namespace"] for s in failed} == {ns}
        assert prometheus.query_range(alerts["FineTuneOperatorReconcileErrors"], start, end), (
            "no reconcile errors counted; operator log:\n" + operator.log_text()[-3000:]
        )
        assert not prometheus.query(alerts["FineTuneOperatorDown"]), "operator is up: must not fire"
        rules = prometheus.api("rules")["groups"]
        unhealthy = [
            (r["name"], r.get("lastError"))
            for g in rules
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert not unhealthy, unhealthy
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
        operator.stop()
        print(f"--- operator log ---\n{operator.log_text()[-4000:]}")

    timings["total"] = time.time() - start
    print("timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    wait_for(lambda: prometheus.query(alerts["FineTuneOperatorDown"]), timeout=20,
             message="FineTuneOperatorDown after the operator stopped")  # fmt: skip
