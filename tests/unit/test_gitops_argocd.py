"""The Argo CD health check for FineTuneJob, executed in a real Lua runtime (lupa), and the Argo CD
manifests around it.

Why it exists: Argo CD runs the Lua inside its controller; a typo there turns every job "Unknown"
in the UI. The statuses fed to it are built by the operator's own status code
(finetune_operator.status), so the script is checked against what the operator really writes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

lupa = pytest.importorskip("lupa")

from finetune_operator.status import desired_conditions, merge_conditions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "deploy" / "gitops" / "argocd"
LUA = (ARGO / "health-finetunejob.lua").read_text()
NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


def run_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the script the way Argo CD does: `obj` global, a table {status, message} returned."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua_obj = _to_lua(runtime, obj)
    runtime.globals().obj = lua_obj
    result = runtime.execute(LUA)
    return {"status": result["status"], "message": result["message"]}


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON → Lua tables as Argo CD's gopher-lua conversion does (arrays 1-based)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def job(
    phase: str | None,
    *,
    reason: str = "",
    message: str = "",
    generation: int = 1,
    observed: int = 1,
    stage: str | None = None,
    **status: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bot", "namespace": "team-a", "generation": generation},
        "spec": {},
    }
    if phase is None:
        return obj
    conds = merge_conditions(
        [],
        desired_conditions(phase=phase, reason=reason, message=message, stage=stage,
                           evaluation=status.get("evaluation"), serving_enabled=False),
        now=NOW,
        generation=observed,
    )  # fmt: skip
    obj["status"] = {"observedGeneration": observed, "phase": phase, "reason": reason,
                     "message": message, "conditions": conds, **status}  # fmt: skip
    return obj


def test_no_status_yet_is_progressing() -> None:
    assert run_health(job(None))["status"] == "Progressing"


@pytest.mark.parametrize(
    "phase", ["Pending", "Initializing", "Training", "Evaluating", "Uploading", "Deploying"]
)
def test_active_phases_are_progressing(phase: str) -> None:
    health = run_health(job(phase, reason=phase, message="working",
                            progress={"step": 1200, "totalSteps": 5000}))  # fmt: skip
    assert health["status"] == "Progressing"
    assert health["message"].startswith(phase + ": step 1200/5000")


def test_succeeded_is_healthy_with_eval_loss_and_endpoint() -> None:
    health = run_health(job("Succeeded", reason="Succeeded", metrics={"evalLoss": "1.05"},
                            serving={"endpoint": "http://support-bot.team-a.svc:8000"}))  # fmt: skip
    assert health == {
        "status": "Healthy",
        "message": "Succeeded (eval loss 1.05), serving at http://support-bot.team-a.svc:8000",
    }


def test_failed_is_degraded_with_reason() -> None:
    health = run_health(job("Failed", reason="InvalidData",
                            message="row 17 of tickets.jsonl: messages missing"))  # fmt: skip
    assert health == {
        "status": "Degraded",
        "message": "InvalidData: row 17 of tickets.jsonl: messages missing",
    }


def test_suspended() -> None:
    health = run_health(job("Suspended", reason="Suspended", message="spec.suspend is true"))
    assert health["status"] == "Suspended"


def test_stalled_condition_degrades_an_active_phase() -> None:
    obj = job("Training", reason="Training")
    for cond in obj["status"]["conditions"]:
        if cond["type"] == "Stalled":
            cond.update(status="True", reason="Stalled", message="no heartbeat for 1800s")
    assert run_health(obj) == {"status": "Degraded", "message": "Stalled: no heartbeat for 1800s"}


def test_unobserved_generation_is_progressing_even_if_old_status_succeeded() -> None:
    health = run_health(job("Succeeded", generation=3, observed=2))
    assert health == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 3",
    }


def test_every_phase_of_the_api_maps_to_an_argo_status() -> None:
    from typing import get_args

    from finetune_operator.api import Phase

    for phase in get_args(Phase):
        assert run_health(job(phase))["status"] in {
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
        }


def test_argocd_cm_embeds_the_script_verbatim() -> None:
    cm = yaml.safe_load((ARGO / "argocd-cm-health.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"]["resource.customizations.health.finetune.dev_FineTuneJob"] == LUA


def test_applications() -> None:
    operator = yaml.safe_load((ARGO / "application-operator.yaml").read_text())
    assert operator["kind"] == "Application"
    source = operator["spec"]["source"]
    assert (REPO / source["path"] / "Chart.yaml").is_file()
    values = source["helm"]["valuesObject"]
    # Every value the Application sets is a real chart value.
    defaults = yaml.safe_load((REPO / source["path"] / "values.yaml").read_text())
    for key, sub in values["monitoring"].items():
        assert set(sub) <= set(defaults["monitoring"][key]), key
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    jobs = yaml.safe_load((ARGO / "application-jobs.yaml").read_text())
    assert jobs["spec"]["destination"]["namespace"] == "team-a"
    text = (ARGO / "application-jobs.yaml").read_text()
    assert "NEW" in text and "serving.endpoint" in text  # the re-run semantics are documented
