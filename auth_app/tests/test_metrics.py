"""The auth service's /metrics: requests by route, logins by outcome, tokens refused by reason.

The test apps run in one process without gunicorn, so their values are this
process's (prometheus_client's default registry): each test compares a
sample before and after what it does.
"""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from auth_app.tests.conftest import PASSWORD, Accounts, bearer, introspect
from common.keys import thumbprint
from common.metrics import LOGIN_OUTCOMES, TOKEN_REFUSALS
from tests.support.servers import RedisServer

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/auth/me"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """A sample's change since this was made."""

    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels
        self.start = value(name, **labels)

    @property
    def change(self) -> float:
        return value(self.name, **self.labels) - self.start


def login(client, email: str, password: str = PASSWORD):
    return client.post(LOGIN, json={"email": email, "password": password})


def scraped(client) -> dict[str, list]:
    """``GET /metrics`` parsed: sample name -> samples."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_a_request_is_counted_and_timed_by_its_route_method_and_status(client):
    counted = Delta("http_requests_total", endpoint="/api/v1/auth/me", method="GET", status="401")
    timed = Delta("http_request_duration_seconds_count", endpoint="/api/v1/auth/me", method="GET")
    unmatched = Delta("http_requests_total", endpoint="unmatched", method="GET", status="404")
    assert client.get(ME).status_code == 401
    assert client.get("/api/v1/auth/no-such-thing/123").status_code == 404
    assert (counted.change, timed.change, unmatched.change) == (1, 1, 1)


def test_metrics_answers_prometheus_text_with_every_declared_outcome(client):
    samples = scraped(client)
    logins = {s.labels["outcome"] for s in samples["auth_logins_total"]}
    assert logins >= set(LOGIN_OUTCOMES)
    assert "mfa_required" in logins
    reasons = {s.labels["reason"] for s in samples["auth_tokens_refused_total"]}
    assert reasons >= set(TOKEN_REFUSALS)
    assert "auth_refresh_reuse_detected_total" in samples
    assert "auth_revocation_redis_unavailable_total" in samples
    assert "http_request_duration_seconds_bucket" in samples


def test_metrics_is_documented_as_text(client):
    operation = client.get("/openapi.json").json["paths"]["/metrics"]["get"]
    assert list(operation["responses"]) == ["200"]
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]


def test_logins_are_counted_by_outcome(make_app, accounts, client):
    user = accounts.register()
    throttled_client = make_app(LOGIN_MAX_FAILURES=1).test_client()
    deltas = {outcome: Delta("auth_logins_total", outcome=outcome) for outcome in LOGIN_OUTCOMES}

    assert login(client, user["email"]).status_code == 200
    assert login(client, user["email"], "wrong-Password-1").status_code == 401
    assert login(client, "nobody@example.com").status_code == 401
    other = Accounts(throttled_client).register()
    assert login(throttled_client, other["email"], "wrong-Password-1").status_code == 401
    assert login(throttled_client, other["email"], "wrong-Password-1").status_code == 429

    assert {outcome: delta.change for outcome, delta in deltas.items()} == {
        "ok": 1,
        "wrong_credentials": 3,
        "throttled": 1,
        "disabled": 0,
        "email_not_verified": 0,
        "mfa_required": 0,
    }


def test_a_disabled_account_s_login_is_counted_as_disabled(app, accounts, client):
    from auth_app.models import User

    user = accounts.register()
    session = app.extensions["database"].sessionmaker()
    session.get(User, user["id"]).is_active = False
    session.commit()
    session.close()
    disabled = Delta("auth_logins_total", outcome="disabled")
    assert login(client, user["email"]).status_code == 403
    assert disabled.change == 1


@pytest.fixture
def signed(private_key):
    """An access token signed with the service's key; ``changes`` replace claims."""

    def make(user: dict, key=private_key, **changes) -> str:
        now = int(time.time())
        claims = {
            "iss": "http://127.0.0.1:5001",
            "aud": "user-service",
            "sub": user["id"],
            "exp": now + 600,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "roles": ["user"],
            **changes,
        }
        headers = {"typ": "at+jwt", "kid": thumbprint(private_key.public_key())}
        return jwt.encode(claims, key, algorithm="RS256", headers=headers)

    return make


def test_refused_tokens_are_counted_by_reason(client, accounts, signed):
    user, tokens = accounts.register_and_login()
    token = tokens["access_token"]
    # The service's kid, another key's signature.
    forged = signed(user, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    refusals = {
        "missing": {},
        "malformed": bearer("not-a-token"),
        "invalid_signature": bearer(forged),
        "expired": bearer(signed(user, exp=int(time.time()) - 600, iat=int(time.time()) - 900)),
        "wrong_audience": bearer(signed(user, aud="someone-else")),
    }
    deltas = {reason: Delta("auth_tokens_refused_total", reason=reason) for reason in refusals}
    for headers in refusals.values():
        assert client.get(ME, headers=headers).status_code == 401
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    revoked = Delta("auth_tokens_refused_total", reason="revoked")
    assert client.get(ME, headers=bearer(token)).status_code == 401
    assert {reason: delta.change for reason, delta in deltas.items()} == dict.fromkeys(refusals, 1)
    assert revoked.change == 1


def test_an_introspected_token_that_is_refused_is_counted(client, accounts):
    forged = Delta("auth_tokens_refused_total", reason="malformed")
    assert introspect(client, "x" * 40).json == {"active": False}
    assert forged.change == 1


def test_a_live_token_is_not_counted_as_refused(client, accounts):
    _, tokens = accounts.register_and_login()
    before = sum(value("auth_tokens_refused_total", reason=r) for r in TOKEN_REFUSALS)
    assert client.get(ME, headers=bearer(tokens["access_token"])).status_code == 200
    assert sum(value("auth_tokens_refused_total", reason=r) for r in TOKEN_REFUSALS) == before


def test_a_refresh_token_replayed_past_its_grace_is_counted(make_app):
    client = make_app(REFRESH_REUSE_GRACE_SECONDS=0).test_client()
    _, first = Accounts(client).register_and_login()
    detected = Delta("auth_refresh_reuse_detected_total")
    assert client.post(REFRESH, json={"refresh_token": first["refresh_token"]}).status_code == 200
    assert detected.change == 0
    assert client.post(REFRESH, json={"refresh_token": first["refresh_token"]}).status_code == 401
    assert detected.change == 1


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


def test_a_token_check_that_finds_redis_down_is_counted(make_app, redis_server):
    app = make_app(REDIS_URL=redis_server.url, LOG_LEVEL="critical")
    client = app.test_client()
    name = f"redis_{uuid.uuid4().hex[:8]}"
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    token = login(client, body["email"]).json["access_token"]
    unavailable = Delta("auth_revocation_redis_unavailable_total")
    redis_server.stop()
    assert client.get(ME, headers=bearer(token)).status_code == 503
    assert unavailable.change == 1


def test_with_metrics_off_nothing_is_recorded_and_metrics_is_not_found(make_app):
    app = make_app(METRICS_ENABLED=False)
    client = app.test_client()
    requests = Delta("http_requests_total", endpoint="/api/v1/auth/me", method="GET", status="401")
    missing = Delta("auth_tokens_refused_total", reason="missing")
    assert client.get(ME).status_code == 401
    assert (requests.change, missing.change) == (0, 0)
    answer = client.get("/metrics")
    assert answer.status_code == 404
    assert answer.json["message"]
    assert "/metrics" not in client.get("/openapi.json").json["paths"]
