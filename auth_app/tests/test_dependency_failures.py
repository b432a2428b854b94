"""The auth service when Redis, PostgreSQL or RabbitMQ is gone: clear 503s, nothing lost.

Decision, Redis down: login answers 503 ``Redis unavailable``, as its
failed-login throttle lives there. Every Bearer check also answers 503 (a
token whose id and session cannot be cleared is never let through). A refresh
needs only the database (the revocation cut-off is on the user's row) and goes
on working; a replayed refresh token must end its session in Redis too, so it
answers 503 and nothing is half-written. When Redis returns, the same app
recovers with no restart.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from auth_app.models import OutboxEvent
from auth_app.tests.conftest import PASSWORD, bearer, introspect
from tests.support.servers import (
    RedisServer,
    allow_connections,
    free_port,
    fresh_postgres_database,
)

LOGIN = "/api/v1/auth/login"


@pytest.fixture
def redis_server(tmp_path):
    # It keeps its data in an append-only file, as a production Redis holding
    # revocations should: this test is about Redis unreachable, not emptied.
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


def login(client, email):
    return client.post(LOGIN, json={"email": email, "password": PASSWORD})


def test_with_redis_on_a_closed_port_every_redis_need_answers_503(make_app):
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", LOG_LEVEL="critical")
    client = app.test_client()
    body = {"email": "down@example.com", "username": "down_user", "password": PASSWORD}
    # Registration needs no Redis.
    assert client.post("/api/v1/auth/register", json=body).status_code == 201

    response = login(client, body["email"])
    assert response.status_code == 503
    assert response.json["message"] == "Redis unavailable"
    # An unknown refresh token is refused from the database alone.
    unknown = client.post("/api/v1/auth/refresh", json={"refresh_token": "x" * 40})
    assert unknown.status_code == 401
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json["checks"] == {"database": "ok", "redis": "unavailable"}
    assert client.get("/health").status_code == 200


def test_redis_stopping_and_returning(make_app, redis_server):
    app = make_app(REDIS_URL=redis_server.url, LOG_LEVEL="critical", REFRESH_REUSE_GRACE_SECONDS=0)
    client = app.test_client()
    body = {"email": "flaky@example.com", "username": "flaky_user", "password": PASSWORD}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    revoked = login(client, body["email"]).json
    live = login(client, body["email"]).json
    assert (
        client.post("/api/v1/auth/logout", headers=bearer(revoked["access_token"])).status_code
        == 204
    )

    redis_server.stop()
    for tokens in (revoked, live):
        response = client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
        assert response.status_code == 503
        assert response.json["message"] == "Token revocation state unavailable (Redis)"
    assert login(client, body["email"]).status_code == 503
    # A refresh needs only the database, and goes on working...
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": live["refresh_token"]})
    assert refreshed.status_code == 200
    # ...but a replay must end its session in Redis too: 503, and nothing is ended.
    replay = client.post("/api/v1/auth/refresh", json={"refresh_token": live["refresh_token"]})
    assert replay.status_code == 503
    introspected = introspect(client, revoked["access_token"])
    assert introspected.status_code == 503
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json["checks"]["redis"] == "unavailable"

    redis_server.start()
    assert client.get("/health/ready").status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(revoked["access_token"])).status_code == 401
    assert client.get("/api/v1/auth/me", headers=bearer(live["access_token"])).status_code == 200
    new = refreshed.json
    assert client.get("/api/v1/auth/me", headers=bearer(new["access_token"])).status_code == 200
    # The replay refused during the outage is a replay still: now it ends the session.
    again = client.post("/api/v1/auth/refresh", json={"refresh_token": live["refresh_token"]})
    assert again.status_code == 401
    assert client.get("/api/v1/auth/me", headers=bearer(new["access_token"])).status_code == 401
    assert login(client, body["email"]).status_code == 200


@pytest.fixture
def postgres_url():
    with fresh_postgres_database("auth_pgdown") as url:
        yield url


def test_postgres_gone_and_back(make_app, postgres_url):
    app = make_app(DATABASE_URL=postgres_url, LOG_LEVEL="critical")
    client = app.test_client()
    body = {"email": "pg@example.com", "username": "pg_user", "password": PASSWORD}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    tokens = login(client, body["email"]).json

    allow_connections(postgres_url, False)
    try:
        response = login(client, body["email"])
        assert response.status_code == 503
        assert response.json["message"] == "Database unavailable"
        me = client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 503
        other = {"email": "pg2@example.com", "username": "pg_user2", "password": PASSWORD}
        assert client.post("/api/v1/auth/register", json=other).status_code == 503
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json["checks"] == {"database": "unavailable", "redis": "ok"}
    finally:
        allow_connections(postgres_url, True)

    assert client.get("/health/ready").status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 200
    assert login(client, body["email"]).status_code == 200


def test_registration_needs_no_rabbitmq_the_outbox_holds_the_event(make_app, monkeypatch):
    # The web process never talks to RabbitMQ; the relay publishes the outbox later.
    monkeypatch.setenv("RABBITMQ_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    app = make_app(LOG_LEVEL="critical")
    body = {"email": "norabbit@example.com", "username": "no_rabbit", "password": PASSWORD}
    response = app.test_client().post("/api/v1/auth/register", json=body)
    assert response.status_code == 201
    session = app.extensions["database"].sessionmaker()
    try:
        rows = session.scalars(select(OutboxEvent)).all()
    finally:
        session.close()
    assert [(row.routing_key, row.published_at) for row in rows] == [("user.sync", None)]
    assert response.json["id"] in rows[0].body


ORIGIN = "https://app.example.com"


def test_token_answers_are_never_cached_and_never_sniffed(client, accounts):
    user = accounts.register()
    response = login(client, user["email"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    refreshed = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": response.json["refresh_token"]}
    )
    assert refreshed.headers["Cache-Control"] == "no-store"
    assert client.get("/api/v1/auth/me").headers["X-Content-Type-Options"] == "nosniff"


def test_cors_allows_only_the_configured_origins_with_credentials(make_app):
    client = make_app(CORS_ORIGINS=[ORIGIN]).test_client()
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    allowed = client.options(LOGIN, headers={"Origin": ORIGIN, **preflight})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    other = client.options(LOGIN, headers={"Origin": "https://evil.example", **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_cors_wildcard_never_allows_credentials(make_app):
    client = make_app(CORS_ORIGINS=["*"]).test_client()
    response = client.post(LOGIN, json={}, headers={"Origin": "https://anyone.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
