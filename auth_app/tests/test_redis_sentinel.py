"""The auth service on Redis Sentinel: every Redis need goes to the primary the sentinels name.

Each test starts its own deployment from the installed redis-server (a
primary, and sentinels run as ``redis-server <conf> --sentinel``) and points
the service at it with ``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER`` and the
two passwords, as an operator would. The failover itself, with traffic, is
``test_sentinel_failover.py``.
"""

from __future__ import annotations

import subprocess
import sys

import jwt
import pytest

from auth_app import create_app
from auth_app.config import load_settings
from auth_app.tests.conftest import PASSWORD, Accounts, bearer
from tests.support.servers import RedisSentinelGroup, free_port
from workers.auth_worker import revocation_store

LOGIN = "/api/v1/auth/login"


@pytest.fixture
def deployment(tmp_path):
    """One primary watched by one sentinel, both requiring a password."""
    group = RedisSentinelGroup(tmp_path, replicas=0, sentinels=1, quorum=1)
    group.start()
    yield group
    group.stop()


@pytest.fixture
def sentinel_env(deployment, monkeypatch):
    for name, value in deployment.environment().items():
        monkeypatch.setenv(name, value)
    return deployment.environment()


def keys_on(node, pattern: str) -> list[bytes]:
    return list(node.client().scan_iter(match=pattern, count=1000))


def test_revocations_and_failed_logins_are_kept_on_the_primary(make_app, deployment, sentinel_env):
    app = make_app(LOG_LEVEL="critical")
    client = app.test_client()
    prefix = app.extensions["settings"].redis_key_prefix
    user, tokens = Accounts(client).register_and_login()
    wrong = client.post(LOGIN, json={"email": user["email"], "password": "not-" + PASSWORD})
    assert wrong.status_code == 401
    assert (
        client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"])).status_code
        == 204
    )
    assert client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 401

    primary = deployment.primary()
    jti = jwt.decode(tokens["access_token"], options={"verify_signature": False})["jti"]
    assert primary.client().exists(f"{prefix}revoked:jti:{jti}") == 1
    assert keys_on(primary, f"{prefix}login_failures:*")
    assert client.get("/health/ready").json == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok"},
    }


def test_per_address_limits_are_counted_on_the_primary(make_app, deployment, sentinel_env):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="2/minute", LOG_LEVEL="critical")
    client = app.test_client()
    body = {"email": "nobody@example.com", "password": PASSWORD}
    assert [client.post(LOGIN, json=body).status_code for _ in range(3)] == [401, 401, 429]
    limiter_prefix = app.extensions["settings"].ratelimit_key_prefix
    assert keys_on(deployment.primary(), f"*{limiter_prefix}*")


def test_the_auth_worker_revokes_on_the_primary(deployment, sentinel_env):
    store = revocation_store(load_settings({"DATABASE_URL": "sqlite://"}))
    store.client.set(f"{store.prefix}probe", "1")
    assert deployment.primary().client().get(f"{store.prefix}probe") == b"1"


def test_a_sentinel_that_refuses_the_password_makes_redis_needs_answer_503(
    make_app, deployment, sentinel_env, monkeypatch
):
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "not-the-sentinels-password")
    client = make_app(LOG_LEVEL="critical").test_client()
    user = Accounts(client).register()
    response = client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    assert response.status_code == 503
    assert response.json["message"] == "Redis unavailable"
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json["checks"]["redis"] == "unavailable"


def test_with_every_sentinel_down_redis_needs_answer_503(make_app, monkeypatch):
    monkeypatch.setenv("REDIS_SENTINELS", f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "authsvc")
    client = make_app(LOG_LEVEL="critical").test_client()
    user = Accounts(client).register()
    response = client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    assert response.status_code == 503
    assert response.json["message"] == "Redis unavailable"


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"REDIS_SENTINELS": "sentinel-1", "REDIS_SENTINEL_MASTER": "authsvc"},
            "configuration error: REDIS_SENTINELS entry 'sentinel-1' is not host:port",
        ),
        (
            {"REDIS_SENTINELS": "sentinel-1:26379"},
            "configuration error: REDIS_SENTINEL_MASTER must name the primary",
        ),
    ],
)
def test_a_bad_sentinel_setting_stops_the_web_app_with_one_line(
    environ, line, monkeypatch, capsys, key_paths
):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        create_app({"DATABASE_URL": "sqlite://", "PRIVATE_KEY_PATH": key_paths[0]})
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith(line)
    assert err.count("\n") == 1


def test_a_bad_sentinel_setting_stops_the_auth_worker_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "workers.auth_worker"],
        env={
            "PATH": "/usr/bin:/bin",
            "APP_ENV": "development",
            "AUTH_DATABASE_URL": "sqlite://",
            "REDIS_SENTINELS": "sentinel-1:26379",
            "REDIS_SENTINEL_MASTER": "auth main",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "configuration error: REDIS_SENTINEL_MASTER must be 1-128 letters, digits, "
        "'.', '_' or '-', got 'auth main'"
    )
