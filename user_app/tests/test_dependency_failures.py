"""The user service when its PostgreSQL is gone, and what its answers tell a browser.

PostgreSQL refusing connections (the database closed to new ones and every
session killed): each endpoint answers 503 with a clear message, readiness
fails naming the database, and the same app recovers with no restart once
connections are allowed again. Then the headers: ``nosniff`` and
``no-store`` on API answers, and CORS only for the configured origins, never
with credentials for a wildcard.
"""

from __future__ import annotations

import pytest

from tests.support.servers import allow_connections, fresh_postgres_database
from user_app import create_app
from user_app.tests.conftest import app_config, bearer

UNAVAILABLE = "The user database is unavailable, try again shortly"
ORIGIN = "https://app.example.com"


@pytest.fixture
def postgres_url():
    with fresh_postgres_database("user_pgdown") as url:
        yield url


def test_postgres_gone_and_back(signer, postgres_url):
    app = create_app(app_config(signer, DATABASE_URL=postgres_url))
    client = app.test_client()
    headers = bearer(signer.token())
    admin = bearer(signer.token(roles=["user", "admin"]))
    assert client.get("/api/v1/users/me", headers=headers).status_code == 200

    allow_connections(postgres_url, False)
    try:
        for method, path, kwargs in (
            ("get", "/api/v1/users/me", {"headers": headers}),
            ("patch", "/api/v1/users/me", {"headers": headers, "json": {"bio": "hi"}}),
            ("get", "/api/v1/users", {"headers": admin}),
        ):
            response = getattr(client, method)(path, **kwargs)
            assert response.status_code == 503, (path, response.json)
            assert response.json["message"] == UNAVAILABLE
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json == {"status": "unavailable", "checks": {"database": "unavailable"}}
        assert client.get("/health").status_code == 200
    finally:
        allow_connections(postgres_url, True)

    assert client.get("/health/ready").status_code == 200
    response = client.patch("/api/v1/users/me", headers=headers, json={"bio": "back"})
    assert response.status_code == 200
    assert response.json["bio"] == "back"
    app.extensions["database"].engine.dispose()


def test_json_answers_carry_nosniff_and_no_store(client, signer):
    response = client.get("/api/v1/users/me", headers=bearer(signer.token()))
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    error = client.get("/api/v1/users/me")
    assert error.headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in response.headers


def test_cors_allows_only_the_configured_origins(signer):
    app = create_app(app_config(signer, CORS_ORIGINS=[ORIGIN]))
    client = app.test_client()
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = client.options("/api/v1/users/me", headers={"Origin": ORIGIN, **preflight})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    other = client.options(
        "/api/v1/users/me", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Credentials" not in other.headers


def test_cors_wildcard_never_allows_credentials(signer):
    app = create_app(app_config(signer, CORS_ORIGINS=["*"]))
    response = app.test_client().get(
        "/api/v1/users/me",
        headers={"Origin": "https://anyone.example", **bearer(signer.token())},
    )
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_no_cors_headers_without_configured_origins(client, signer):
    response = client.get("/api/v1/users/me", headers={"Origin": ORIGIN, **bearer(signer.token())})
    assert "Access-Control-Allow-Origin" not in response.headers
