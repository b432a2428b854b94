"""The sessions a user can see (where and when each began, when last used) and end."""

from __future__ import annotations

import uuid

from auth_app.tests.conftest import PASSWORD, bearer, outbox_messages

SESSIONS = "/api/v1/auth/sessions"


def login_from(client, email: str, ip: str, agent: str) -> dict:
    answer = client.post(
        "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"User-Agent": agent},
        environ_base={"REMOTE_ADDR": ip},
    )
    assert answer.status_code == 200, answer.json
    return answer.json


def sessions(client, tokens) -> list[dict]:
    answer = client.get(SESSIONS, headers=bearer(tokens["access_token"]))
    assert answer.status_code == 200, answer.json
    return answer.json


def test_two_logins_are_listed_newest_first_with_address_and_agent(client, accounts):
    user = accounts.register("ada")
    laptop = login_from(client, user["email"], "192.0.2.10", "Firefox/140.0 (laptop)")
    phone = login_from(client, user["email"], "2001:db8::7", "MobileSafari/19 (phone)")
    listed = sessions(client, laptop)
    assert [s["user_agent"] for s in listed] == [
        "MobileSafari/19 (phone)",
        "Firefox/140.0 (laptop)",
    ]
    assert [s["ip"] for s in listed] == ["2001:db8::7", "192.0.2.10"]
    assert [s["current"] for s in listed] == [False, True]
    assert [s["current"] for s in sessions(client, phone)] == [True, False]
    first = listed[1]
    assert set(first) == {
        "id", "created_at", "last_used_at", "expires_at", "ip", "user_agent", "current",
    }  # fmt: skip
    assert first["last_used_at"] == first["created_at"]


def test_a_refresh_moves_last_used_and_keeps_the_session(client, accounts):
    user = accounts.register("ada")
    tokens = login_from(client, user["email"], "192.0.2.10", "agent")
    (before,) = sessions(client, tokens)
    refreshed = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    ).json
    (after,) = sessions(client, refreshed)
    assert after["id"] == before["id"] and after["current"] is True
    assert after["last_used_at"] > before["last_used_at"]


def test_a_long_or_odd_user_agent_is_cut_and_cleaned(client, accounts):
    user = accounts.register("ada")
    tokens = login_from(client, user["email"], "192.0.2.10", "A" * 300 + "\t\x7f")
    (listed,) = sessions(client, tokens)
    assert listed["user_agent"] == "A" * 255


def test_ending_a_session_is_a_logout_of_it(app, client, accounts):
    user = accounts.register("ada")
    keep = login_from(client, user["email"], "192.0.2.10", "laptop")
    lost = login_from(client, user["email"], "192.0.2.99", "stolen phone")
    target = next(s for s in sessions(client, keep) if not s["current"])
    ended = client.delete(f"{SESSIONS}/{target['id']}", headers=bearer(keep["access_token"]))
    assert ended.status_code == 204
    assert client.get("/api/v1/auth/me", headers=bearer(lost["access_token"])).status_code == 401
    refresh = client.post("/api/v1/auth/refresh", json={"refresh_token": lost["refresh_token"]})
    assert refresh.status_code == 401
    assert [s["id"] for s in sessions(client, keep)] != [target["id"]]
    assert len(sessions(client, keep)) == 1
    # ... and at the user service, through the same sync a logout sends:
    revoked = [m["data"] for m in outbox_messages(app) if m["data"]["action"] == "session_revoked"]
    assert [r["session_id"] for r in revoked] == [target["id"]]
    again = client.delete(f"{SESSIONS}/{target['id']}", headers=bearer(keep["access_token"]))
    assert again.status_code == 404


def test_ending_ones_own_session_logs_out(client, accounts):
    user = accounts.register("ada")
    tokens = login_from(client, user["email"], "192.0.2.10", "laptop")
    (own,) = sessions(client, tokens)
    assert (
        client.delete(f"{SESSIONS}/{own['id']}", headers=bearer(tokens["access_token"])).status_code
        == 204
    )
    assert client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 401


def test_another_users_session_is_404_and_left_alone(client, accounts):
    ada = accounts.register("ada")
    bob = accounts.register("bob")
    ada_tokens = login_from(client, ada["email"], "192.0.2.10", "a")
    bob_tokens = login_from(client, bob["email"], "192.0.2.11", "b")
    (bob_session,) = sessions(client, bob_tokens)
    answer = client.delete(
        f"{SESSIONS}/{bob_session['id']}", headers=bearer(ada_tokens["access_token"])
    )
    assert answer.status_code == 404
    assert answer.json["message"] == "No such session"
    assert (
        client.get("/api/v1/auth/me", headers=bearer(bob_tokens["access_token"])).status_code == 200
    )
    random = client.delete(f"{SESSIONS}/{uuid.uuid4()}", headers=bearer(ada_tokens["access_token"]))
    assert random.status_code == 404
    assert (
        client.delete(
            f"{SESSIONS}/not-a-uuid", headers=bearer(ada_tokens["access_token"])
        ).status_code
        == 404
    )


def test_logged_out_sessions_are_not_listed(client, accounts):
    user = accounts.register("ada")
    keep = login_from(client, user["email"], "192.0.2.10", "laptop")
    gone = login_from(client, user["email"], "192.0.2.10", "other")
    client.post("/api/v1/auth/logout", headers=bearer(gone["access_token"]))
    assert [s["user_agent"] for s in sessions(client, keep)] == ["laptop"]


def test_behind_a_trusted_proxy_the_session_has_the_clients_address(make_app):
    from auth_app.tests.conftest import Accounts

    app = make_app(TRUSTED_PROXY_COUNT=1)
    client = app.test_client()
    user = Accounts(client).register("ada")
    answer = client.post(
        "/api/v1/auth/login",
        json={"email": user["email"], "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.5, 198.51.100.7"},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )
    (listed,) = sessions(client, answer.json)
    assert listed["ip"] == "198.51.100.7"
