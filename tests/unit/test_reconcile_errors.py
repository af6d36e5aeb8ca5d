"""How API failures are sorted: retry later (conflicts, throttling, 5xx, network) or fail the job."""

from __future__ import annotations

import json

import pytest
import urllib3
from finetune_operator.kube import InvalidChildError, TransientApiError, _translate
from kubernetes.client.exceptions import ApiException


def api_error(status: int, message: str = "boom") -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_conflicts_throttling_and_server_errors_are_transient(status: int) -> None:
    out = _translate(api_error(status), "create Job ns/x")
    assert isinstance(out, TransientApiError) and "create Job ns/x" in str(out)
    assert out.delay == (1.0 if status == 409 else 5.0)


def test_network_errors_are_transient() -> None:
    out = _translate(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), "get")
    assert isinstance(out, TransientApiError)


def test_rejected_child_names_the_field_from_the_api_message() -> None:
    msg = 'Job.batch "x-train" is invalid: spec.template.spec.tolerations[0].operator: Unsupported'
    out = _translate(api_error(422, msg), "create Job ns/x")
    assert isinstance(out, InvalidChildError)
    assert "tolerations[0].operator" in str(out) and '"kind"' not in str(out)


def test_other_errors_pass_through_unchanged() -> None:
    exc = api_error(403)
    assert _translate(exc, "get") is exc
