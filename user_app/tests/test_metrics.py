"""The user service's /metrics: requests by route (never the path with an id) and token checks.

The test apps share this process's default registry: each test compares
samples before and after what it does.
"""

from __future__ import annotations

import time
import uuid

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import TOKEN_REFUSALS
from user_app import create_app
from user_app.tests.conftest import app_config, bearer

ME = "/api/v1/users/me"
BY_ID = "/api/v1/users/<uuid:user_id>"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def checks() -> dict[str, float]:
    return {
        outcome: value("user_token_checks_total", outcome=outcome)
        for outcome in ("ok", *TOKEN_REFUSALS)
    }


def changed(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in checks().items() if v != before[k]}


def test_token_checks_are_counted_by_outcome(client, signer, other_signer, as_user):
    headers, user_id = as_user()
    now = int(time.time())
    before = checks()
    assert client.get(ME, headers=headers).status_code == 200
    assert client.get(ME).status_code == 401
    assert client.get(ME, headers=bearer(other_signer.token())).status_code == 401
    expired = signer.token(exp=now - 600, iat=now - 900)
    assert client.get(ME, headers=bearer(expired)).status_code == 401
    assert changed(before) == {"ok": 1, "missing": 1, "invalid_signature": 1, "expired": 1}


def test_a_disabled_account_s_check_is_counted(client, admin, as_user):
    headers, user_id = as_user()
    assert client.get(ME, headers=headers).status_code == 200
    patched = client.patch(f"/api/v1/users/{user_id}", json={"is_active": False}, headers=admin[0])
    assert patched.status_code == 200
    before = checks()
    assert client.get(ME, headers=headers).status_code == 403
    assert changed(before) == {"account_disabled": 1}


def test_a_path_with_an_id_is_counted_under_its_route_rule(client, admin):
    labels = {"endpoint": BY_ID, "method": "GET", "status": "404"}
    before = value("http_requests_total", **labels)
    for _ in range(3):
        answer = client.get(f"/api/v1/users/{uuid.uuid4()}", headers=admin[0])
        assert answer.status_code == 404
    assert value("http_requests_total", **labels) == before + 3
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"http_requests", "http_request_duration_seconds", "user_token_checks"} <= families


def test_with_metrics_off_nothing_is_counted_and_metrics_is_not_found(signer, as_user):
    app = create_app(app_config(signer, METRICS_ENABLED=False))
    client = app.test_client()
    headers, _ = as_user()
    before = checks()
    assert client.get(ME, headers=headers).status_code == 200
    assert changed(before) == {}
    assert client.get("/metrics").status_code == 404
    app.extensions["database"].engine.dispose()
