"""The whole loop between the two services, over the real RabbitMQ, PostgreSQL and Redis.

Each test drives the services through their HTTP APIs (Flask test clients)
and waits for the relays and workers (threads here) to carry the events.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime

import jwt
import pika
import pytest

from common.events import AUTH_QUEUE, USER_EVENTS, USER_QUEUE, USER_SYNC
from tests.integration.system import System, fresh_system, wait_until
from tests.support.broker import queue_depth
from tests.support.events import raw_envelope
from workers.broker import dead_letter_queue


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


def me_at_user_service(system: System, tokens: dict) -> int:
    return system.user.get("/api/v1/users/me", headers=bearer(tokens)).status_code


def test_logout_reaches_the_user_service_and_another_session_lives_on(system):
    user = system.register()
    wait_until(lambda: system.profile(user["id"]))
    ended, other = system.login(user["email"]), system.login(user["email"])
    assert me_at_user_service(system, ended) == 200
    assert system.auth.post("/api/v1/auth/logout", headers=bearer(ended)).status_code == 204
    assert system.auth.get("/api/v1/auth/me", headers=bearer(ended)).status_code == 401
    assert wait_until(lambda: me_at_user_service(system, ended) == 401, timeout=10)
    assert me_at_user_service(system, other) == 200


# -- one truth for roles -----------------------------------------------------------


def roles_everywhere(system: System, user_id: str) -> tuple[list[str], list[str]]:
    """The user's roles at the auth service and at the user service."""
    return sorted(system.account(user_id).roles), sorted(system.profile(user_id).roles)


def grant_at_user_service(system: System, admin: dict, user_id: str, roles: list[str]):
    response = system.user.patch(
        f"/api/v1/users/{user_id}", json={"roles": roles}, headers=bearer(admin)
    )
    assert response.status_code == 200, response.json


def cli(system: System, *args: str) -> None:
    result = system.auth_app.test_cli_runner().invoke(args=["users", *args])
    assert result.exit_code == 0, result.output


def settled(system: System, user_id: str, expected: list[str]) -> bool:
    return wait_until(lambda: roles_everywhere(system, user_id) == (expected, expected))


def test_a_role_granted_at_the_user_service_and_revoked_by_the_cli_is_gone_everywhere(system):
    admin = make_admin(system)
    user = system.register()
    wait_until(lambda: system.profile(user["id"]))
    grant_at_user_service(system, admin, user["id"], ["user", "admin"])
    assert settled(system, user["id"], ["admin", "user"])
    cli(system, "revoke-role", user["email"], "admin")
    assert settled(system, user["id"], ["user"])
    tokens = system.login(user["email"])
    assert jwt.decode(tokens["access_token"], options={"verify_signature": False})["roles"] == [
        "user"
    ]
    assert system.user.get("/api/v1/users", headers=bearer(tokens)).status_code == 403


def test_a_role_granted_by_the_cli_and_revoked_at_the_user_service_is_gone_everywhere(system):
    admin = make_admin(system)
    user = system.register()
    wait_until(lambda: system.profile(user["id"]))
    cli(system, "grant-role", user["email"], "editor")
    assert settled(system, user["id"], ["editor", "user"])
    before = system.login(user["email"])
    assert (
        "editor" in jwt.decode(before["access_token"], options={"verify_signature": False})["roles"]
    )
    grant_at_user_service(system, admin, user["id"], ["user"])
    assert settled(system, user["id"], ["user"])
    # Taking a role away ends the sessions whose tokens carried it, at both services.
    assert wait_until(lambda: me_at_user_service(system, before) == 401)
    assert system.auth.get("/api/v1/auth/me", headers=bearer(before)).status_code == 401
    after = system.login(user["email"])
    assert jwt.decode(after["access_token"], options={"verify_signature": False})["roles"] == [
        "user"
    ]


def quiet(system: System) -> bool:
    """No event waiting anywhere: both outboxes published, both queues empty."""
    return (
        system.pending_outbox_rows() == 0
        and queue_depth(system.amqp_url, USER_QUEUE) == 0
        and queue_depth(system.amqp_url, AUTH_QUEUE) == 0
    )


def test_concurrent_changes_at_both_services_end_the_same_at_both(system):
    admin = make_admin(system)
    outcomes = []
    for _ in range(5):
        user = system.register()
        wait_until(lambda: system.profile(user["id"]))  # noqa: B023 - waited on at once
        grant_at_user_service(system, admin, user["id"], ["user", "editor"])
        cli(system, "grant-role", user["email"], "admin")
        time.sleep(0.5)
        assert wait_until(lambda: quiet(system), timeout=15)
        auth, here = roles_everywhere(system, user["id"])
        assert auth == here
        outcomes.append(tuple(auth))
    # Whichever change was made last won, the same at both services.
    assert set(outcomes) <= {("admin", "user"), ("editor", "user")}


def publish_sync(system: System, data: dict, occurred_at=None) -> None:
    """A user.sync as anyone with the broker's credentials could send it."""
    envelope = raw_envelope(USER_SYNC, "auth_app", data, occurred_at=occurred_at)
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            USER_EVENTS,
            USER_SYNC.routing_key,
            json.dumps(envelope.to_dict()).encode(),
            pika.BasicProperties(message_id=envelope.id, delivery_mode=2),
            mandatory=True,
        )
    finally:
        connection.close()


@pytest.mark.parametrize(
    "forged",
    [
        {"action": "sessions_revoked", "revoked_before": 253402300799},
        {"action": "session_revoked", "session_id": str(uuid.uuid4()), "expires_at": 253402300799},
        {"action": "updated", "changes": {"is_active": False}, "occurred_at": "9999-12-31"},
    ],
    ids=["revoked_before", "expires_at", "occurred_at"],
)
def test_times_from_the_future_are_dead_lettered_and_change_nothing(system, forged):
    user = system.register()
    tokens = system.login(user["email"])
    assert wait_until(lambda: me_at_user_service(system, tokens) == 200)
    dead = dead_letter_queue(USER_QUEUE)
    before = queue_depth(system.amqp_url, dead)
    data = {"user_id": user["id"], **{k: v for k, v in forged.items() if k != "occurred_at"}}
    occurred = datetime(9999, 12, 31, tzinfo=UTC) if "occurred_at" in forged else None
    publish_sync(system, data, occurred)
    assert wait_until(lambda: queue_depth(system.amqp_url, dead) == before + 1)
    profile = system.profile(user["id"])
    assert (profile.is_active, profile.tokens_valid_after) == (True, None)
    assert me_at_user_service(system, tokens) == 200
