"""Real tokens from a running auth service, verified here through its JWKS endpoint.

The auth service runs on a real local HTTP server (its JWKS is fetched over the
wire), with the real Redis under a fresh key prefix. The ``user.sync`` events
it writes to its outbox are applied here with the functions the user worker
calls, as the worker would.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from auth_app import create_app as create_auth_app
from auth_app.models import OutboxEvent as AuthOutboxEvent
from tests.support.events import accepted
from tests.support.servers import check_redis, run_id, write_test_keys
from user_app import create_app, profiles
from user_app.sync import handle_user_sync
from user_app.tests.conftest import bearer

PASSWORD = "Tr0ub4dor&3-staple"
ME = "/api/v1/users/me"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """The auth service on 127.0.0.1 (a real HTTP server) and its app object."""
    redis_client = check_redis()
    prefix = f"test:user-auth:{run_id()}:"
    private, public = write_test_keys(tmp_path_factory.mktemp("keys"))
    app = create_auth_app(
        {
            "TESTING": True,
            "DATABASE_URL": "sqlite://",
            "CREATE_SCHEMA": True,
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "REDIS_KEY_PREFIX": prefix,
            "RATELIMIT_KEY_PREFIX": prefix + "limiter",
            "RATELIMIT_ENABLED": False,
            "PRIVATE_KEY_PATH": private,
            "PUBLIC_KEY_PATH": public,
            "JWT_PRIVATE_KEY": None,
            "JWT_PUBLIC_KEY": None,
            "BCRYPT_ROUNDS": 4,
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "WARNING",
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
    for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def user_client(auth_server):
    _, base_url = auth_server
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": "sqlite://",
            "CREATE_SCHEMA": True,
            "JWT_PUBLIC_KEY": None,
            "AUTH_JWKS_URL": f"{base_url}/.well-known/jwks.json",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
        }
    )
    return app.test_client(), app


def register_and_login(auth_app) -> tuple[dict, dict]:
    client = auth_app.test_client()
    name = f"u_{uuid.uuid4().hex[:10]}"
    user = client.post(
        "/api/v1/auth/register",
        json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
    )
    assert user.status_code == 201, user.get_json()
    return user.get_json(), login(auth_app, user.get_json()["email"])


def login(auth_app, email: str) -> dict:
    tokens = auth_app.test_client().post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert tokens.status_code == 200, tokens.get_json()
    return tokens.get_json()


def syncs_for(auth_app, user_id: str) -> list[dict]:
    with auth_app.extensions["database"].sessionmaker() as session:
        rows = session.scalars(select(AuthOutboxEvent).order_by(AuthOutboxEvent.seq)).all()
        bodies = [json.loads(row.body) for row in rows]
    return [b for b in bodies if b["type"] == "user.sync" and b["data"]["user_id"] == user_id]


def apply_syncs(app, envelopes: list[dict]) -> None:
    """What the user worker does with each user.sync, in order."""
    with app.extensions["database"].sessionmaker() as session:
        for envelope in envelopes:
            handle_user_sync([accepted(json.dumps(envelope))], session)
        session.commit()


def test_a_real_access_token_is_accepted_and_the_created_sync_merges(auth_server, user_client):
    auth_app, _ = auth_server
    client, app = user_client
    user, tokens = register_and_login(auth_app)
    response = client.get(ME, headers=bearer(tokens["access_token"]))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["id"], body["email"], body["username"]) == (
        user["id"],
        user["email"],
        user["username"],
    )
    apply_syncs(app, syncs_for(auth_app, user["id"]))
    assert client.get(ME, headers=bearer(tokens["access_token"])).get_json()["id"] == user["id"]


def test_a_real_refresh_token_is_not_an_access_token_here(auth_server, user_client):
    auth_app, _ = auth_server
    client, _ = user_client
    _, tokens = register_and_login(auth_app)
    response = client.get(ME, headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_logout_all_reaches_here_and_the_next_login_still_works(auth_server, user_client):
    auth_app, _ = auth_server
    client, app = user_client
    user, tokens = register_and_login(auth_app)
    old = bearer(tokens["access_token"])
    assert client.get(ME, headers=old).status_code == 200
    response = auth_app.test_client().post("/api/v1/auth/logout-all", headers=old)
    assert response.status_code == 204
    fresh = login(auth_app, user["email"])
    syncs = syncs_for(auth_app, user["id"])
    assert [s["data"]["action"] for s in syncs] == ["created", "sessions_revoked"]
    apply_syncs(app, syncs)
    assert client.get(ME, headers=old).status_code == 401
    # Issued in the same second as the logout-all, after it: alive here as at the auth service.
    assert client.get(ME, headers=bearer(fresh["access_token"])).status_code == 200


def test_an_account_deleted_at_the_auth_service_is_gone_here(auth_server, user_client):
    auth_app, _ = auth_server
    client, app = user_client
    user, tokens = register_and_login(auth_app)
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    response = auth_app.test_client().delete(
        "/api/v1/auth/me", json={"password": PASSWORD}, headers=headers
    )
    assert response.status_code == 204
    apply_syncs(app, syncs_for(auth_app, user["id"]))
    assert client.get(ME, headers=headers).status_code == 401
    with app.extensions["database"].sessionmaker() as session:
        assert profiles.get_profile(session, user["id"]) is None
