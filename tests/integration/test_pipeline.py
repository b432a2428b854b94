"""The whole loop between the two services, over the real RabbitMQ, PostgreSQL and Redis.

Each test drives the services through their HTTP APIs (Flask test clients)
and waits for the relays and workers (threads here) to carry the events.
"""

from __future__ import annotations

from contextlib import ExitStack

import jwt
import pytest

from tests.integration.system import System, fresh_system, wait_until


@pytest.fixture(scope="module")
def system(tmp_path_factory, amqp_url):
    with (
        fresh_system("loop", tmp_path_factory.mktemp("keys"), amqp_url) as system,
        ExitStack() as stack,
    ):
        system.threads(stack)
        yield system


def bearer(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def make_admin(system: System) -> dict:
    admin = system.register()
    runner = system.auth_app.test_cli_runner()
    result = runner.invoke(args=["users", "grant-role", admin["email"], "admin"])
    assert result.exit_code == 0, result.output
    return system.login(admin["email"])


def test_registering_creates_the_profile_and_marks_the_account_provisioned(system):
    user = system.register()
    profile = wait_until(lambda: system.profile(user["id"]))
    assert profile.email == user["email"]
    assert profile.username == user["username"]
    assert wait_until(lambda: system.account(user["id"]).provisioned_at is not None)


def test_admin_deactivation_reaches_the_auth_service_and_login_answers_403(system):
    admin = make_admin(system)
    user = system.register()
    tokens = system.login(user["email"])
    wait_until(lambda: system.profile(user["id"]))
    response = system.user.patch(
        f"/api/v1/users/{user['id']}", json={"is_active": False}, headers=bearer(admin)
    )
    assert response.status_code == 200
    assert wait_until(lambda: not system.account(user["id"]).is_active)
    login = system.auth.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": "correct-Horse-battery-9"}
    )
    assert login.status_code == 403
    assert system.auth.get("/api/v1/auth/me", headers=bearer(tokens)).status_code in (401, 403)
    refresh = system.auth.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status_code == 401


def test_admin_role_change_reaches_the_auth_service(system):
    admin = make_admin(system)
    user = system.register()
    wait_until(lambda: system.profile(user["id"]))
    response = system.user.patch(
        f"/api/v1/users/{user['id']}", json={"roles": ["user", "editor"]}, headers=bearer(admin)
    )
    assert response.status_code == 200
    assert wait_until(lambda: "editor" in system.account(user["id"]).roles)
    token = system.login(user["email"])["access_token"]
    assert "editor" in jwt.decode(token, options={"verify_signature": False})["roles"]


def test_logout_all_reaches_the_user_service_and_the_old_token_is_refused(system):
    user = system.register()
    old = system.login(user["email"])
    assert system.user.get("/api/v1/users/me", headers=bearer(old)).status_code == 200
    assert system.auth.post("/api/v1/auth/logout-all", headers=bearer(old)).status_code == 204
    assert wait_until(
        lambda: system.user.get("/api/v1/users/me", headers=bearer(old)).status_code == 401
    )
    new = system.login(user["email"])
    assert system.user.get("/api/v1/users/me", headers=bearer(new)).status_code == 200


def test_deleting_the_account_at_the_auth_service_removes_the_profile(system):
    user = system.register()
    tokens = system.login(user["email"])
    wait_until(lambda: system.profile(user["id"]))
    response = system.auth.delete(
        "/api/v1/auth/me", json={"password": "correct-Horse-battery-9"}, headers=bearer(tokens)
    )
    assert response.status_code == 204
    assert wait_until(lambda: system.profile(user["id"]) is None)
    assert system.user.get("/api/v1/users/me", headers=bearer(tokens)).status_code == 401


def test_deleting_the_user_at_the_user_service_removes_the_account(system):
    admin = make_admin(system)
    user = system.register()
    wait_until(lambda: system.profile(user["id"]))
    response = system.user.delete(f"/api/v1/users/{user['id']}", headers=bearer(admin))
    assert response.status_code == 204
    assert wait_until(lambda: system.account(user["id"]) is None)
    login = system.auth.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": "correct-Horse-battery-9"}
    )
    assert login.status_code == 401
    # The email is free again, and the new account gets a fresh profile.
    again = system.register(user["username"])
    assert wait_until(lambda: system.profile(again["id"]))
