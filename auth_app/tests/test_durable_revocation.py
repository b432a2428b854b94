"""Revocations outlive Redis: flushed, restarted empty or failed over, it is refilled first.

Each test runs the auth service on a redis-server of its own (no persistence,
so a restart loses everything, as it would in production without AOF) and
revokes tokens in every way there is: logout (token id and session), a
replayed refresh token (session), logout-all (the per-user cut-off). Then it
takes Redis's memory away for real, and every one of those tokens must still
be refused, while new logins work.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import jwt
import pytest
import redis
from sqlalchemy import select

from auth_app.models import RevokedToken
from auth_app.tests.conftest import Accounts, bearer
from common.db import utcnow
from tests.support.servers import RedisServer, allow_connections, fresh_postgres_database

ME = "/api/v1/auth/me"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def auth(make_app, redis_server):
    app = make_app(REDIS_URL=redis_server.url, REFRESH_REUSE_GRACE_SECONDS=0)
    return app, app.test_client()


def status(client, tokens) -> int:
    return client.get(ME, headers=bearer(tokens["access_token"])).status_code


def revoke_every_way(client) -> tuple[dict, list[dict]]:
    """A user with one live session, and tokens revoked by each kind of revocation."""
    accounts = Accounts(client)
    user, logged_out = accounts.register_and_login()
    replayed = accounts.login(user["email"])
    assert (
        client.post("/api/v1/auth/logout", headers=bearer(logged_out["access_token"])).status_code
        == 204
    )
    rotated = client.post("/api/v1/auth/refresh", json={"refresh_token": replayed["refresh_token"]})
    assert rotated.status_code == 200
    replay = client.post("/api/v1/auth/refresh", json={"refresh_token": replayed["refresh_token"]})
    assert replay.status_code == 401
    other, before_all = accounts.register_and_login()
    assert (
        client.post(
            "/api/v1/auth/logout-all", headers=bearer(before_all["access_token"])
        ).status_code
        == 204
    )
    live = accounts.login(user["email"])
    dead = [logged_out, replayed, rotated.json, before_all]
    for tokens in dead:
        assert status(client, tokens) == 401
    assert status(client, live) == 200
    return live, dead


def assert_still_refused(client, live: dict, dead: list[dict], email_of_live: str) -> None:
    for tokens in dead:
        assert status(client, tokens) == 401
    assert status(client, live) == 200
    fresh = Accounts(client).login(email_of_live)
    assert status(client, fresh) == 200


def email_of(client, tokens) -> str:
    return client.get(ME, headers=bearer(tokens["access_token"])).json["email"]


def test_a_flushed_redis_is_refilled_before_any_token_is_accepted(auth, redis_server, caplog):
    _, client = auth
    live, dead = revoke_every_way(client)
    email = email_of(client, live)
    redis.Redis.from_url(redis_server.url).flushall()
    with caplog.at_level(logging.WARNING, logger="auth_app.revocation"):
        assert_still_refused(client, live, dead, email)
    # The logged-out session, the replayed one, and the one logout-all ended.
    assert "revocations refilled from the database: 1 tokens, 3 sessions" in caplog.text


def test_a_redis_restarted_empty_is_refilled(auth, redis_server):
    _, client = auth
    live, dead = revoke_every_way(client)
    email = email_of(client, live)
    redis_server.stop()
    redis_server.start()
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0
    assert_still_refused(client, live, dead, email)


def test_a_redis_failed_over_to_a_server_that_missed_the_last_writes_is_refilled(
    auth, redis_server, tmp_path
):
    """A replica takes over, at the same address, with the marker but without the latest keys."""
    app, client = auth
    live, dead = revoke_every_way(client)
    email = email_of(client, live)
    marker = f"{app.extensions['settings'].redis_key_prefix}revocations:filled"
    replicated = redis.Redis.from_url(redis_server.url).get(marker)
    redis_server.stop()
    promoted = RedisServer(tmp_path)
    promoted.port = redis_server.port
    promoted.start()
    try:
        # What replication had carried over: the marker, naming the failed server.
        redis.Redis.from_url(promoted.url).set(marker, replicated)
        # The pooled connection to the failed server is dead: one request notices.
        client.get("/health/ready")
        assert_still_refused(client, live, dead, email)
    finally:
        promoted.stop()


@pytest.fixture
def postgres_url():
    with fresh_postgres_database("auth_refill") as url:
        yield url


def test_no_token_is_accepted_while_redis_needs_a_refill_and_the_database_is_away(
    make_app, redis_server, postgres_url
):
    app = make_app(DATABASE_URL=postgres_url, REDIS_URL=redis_server.url, LOG_LEVEL="critical")
    client = app.test_client()
    _, tokens = Accounts(client).register_and_login()
    redis.Redis.from_url(redis_server.url).flushall()
    allow_connections(postgres_url, False)
    try:
        assert status(client, tokens) == 503
    finally:
        allow_connections(postgres_url, True)
    assert status(client, tokens) == 200


def test_a_logout_forgets_the_revoked_tokens_that_have_expired(make_app):
    app = make_app()
    client = app.test_client()
    sessionmaker = app.extensions["database"].sessionmaker
    with sessionmaker() as session:
        session.add(RevokedToken(jti="long-expired", expires_at=utcnow() - timedelta(hours=1)))
        session.commit()
    _, tokens = Accounts(client).register_and_login()
    assert (
        client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"])).status_code
        == 204
    )
    with sessionmaker() as session:
        kept = session.scalars(select(RevokedToken.jti)).all()
    assert kept == [jwt.decode(tokens["access_token"], options={"verify_signature": False})["jti"]]
    assert status(client, tokens) == 401


def test_checks_that_find_redis_emptied_at_once_refill_it_once(auth, redis_server, caplog):
    """A failover sends every thread to the refill at once: the first refills, the rest read."""
    app, client = auth
    _, dead = revoke_every_way(client)
    store = app.extensions["revocation"]
    claims = jwt.decode(dead[0]["access_token"], options={"verify_signature": False})
    redis.Redis.from_url(redis_server.url).flushall()
    caplog.clear()
    answers: list[bool] = []
    threads = [
        threading.Thread(target=lambda: answers.append(store.is_revoked(claims))) for _ in range(8)
    ]
    with caplog.at_level(logging.WARNING, logger="auth_app.revocation"):
        # Every thread finds the server unfilled and queues for the refill.
        with store._refilling:
            for thread in threads:
                thread.start()
            time.sleep(0.5)
        for thread in threads:
            thread.join()
    assert answers == [True] * 8
    assert caplog.text.count("revocations refilled from the database") == 1
