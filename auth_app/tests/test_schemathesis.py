"""Schema-driven fuzzing of the auth service against its own ``/openapi.json``.

Every operation gets valid and invalid requests, each with a freshly issued
access token of a real account, and every schemathesis check runs on the
answers (see :mod:`tests.support.schema_fuzzing`). In-memory SQLite, the real Redis,
rate limiting off.
"""

from __future__ import annotations

import pytest

from auth_app.tests.conftest import PASSWORD
from tests.support.schema_fuzzing import fuzz_api

# Examples per operation and mode; bounded so the run stays near a minute.
MAX_EXAMPLES = 40
# Rules no JSON schema states, so schema-valid input may still be refused there: the password
# policy (breached, common, equal to the email or username: 422), login's "exactly one of email
# or username" (422), and logout's refresh token having to be one of the caller's (400).
SEMANTIC_RULES = {
    "/api/v1/auth/register": ["422"],
    "/api/v1/auth/password": ["422"],
    "/api/v1/auth/login": ["422"],
    "/api/v1/auth/logout": ["400"],
}
# Fewer requests than this and the run has not exercised the API in earnest.
MIN_REQUESTS = 500


@pytest.fixture
def fuzzed_app(make_app):
    """An auth app with rate limiting off and quiet logs."""
    return make_app(LOG_LEVEL="critical")


def test_every_operation_answers_as_documented(fuzzed_app, capsys):
    """Whatever arrives, the answer is one the document promises, and never a 500."""
    client = fuzzed_app.test_client()
    body = {"email": "fuzz@example.com", "username": "fuzz_user", "password": PASSWORD}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201

    def fresh_token() -> dict:
        login = client.post(
            "/api/v1/auth/login", json={"email": body["email"], "password": PASSWORD}
        )
        assert login.status_code == 200, login.json
        return {"Authorization": f"Bearer {login.json['access_token']}"}

    report = fuzz_api(
        fuzzed_app,
        headers=fresh_token,
        max_examples=MAX_EXAMPLES,
        semantic_rules=SEMANTIC_RULES,
    )
    with capsys.disabled():
        print("\n" + report.summary("auth service"))
    assert not report.failures, "\n\n".join(report.failures)
    assert report.requests >= MIN_REQUESTS
