"""The security event log: every type from the flow that causes it, seen by the user and admins."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pyotp
from sqlalchemy import func, select, update

from auth_app import security_events
from auth_app.models import RefreshToken, SecurityEvent, User
from auth_app.security_events import EventType
from auth_app.tests.conftest import PASSWORD, Accounts, bearer, mailbox, mailed_token
from common.db import utcnow

MY_EVENTS = "/api/v1/auth/me/events"
ALL_EVENTS = "/api/v1/auth/events"
AGENT = {"User-Agent": "EventsTest/1.0"}


def make_admin(app, email: str) -> None:
    session = app.extensions["database"].sessionmaker()
    session.execute(update(User).where(User.email == email).values(roles=["user", "admin"]))
    session.commit()
    session.close()


def types(answer) -> list[str]:
    return [event["type"] for event in answer.json]


def post(client, path, access=None, **body):
    headers = {**AGENT, **(bearer(access) if access else {})}
    return client.post(path, json=body or None, headers=headers)


def test_every_event_type_is_produced_by_its_flow_and_seen_by_user_and_admin(app, client):
    accounts = Accounts(client)
    admin = accounts.register("root")
    make_admin(app, admin["email"])
    admin_token = accounts.login(admin["email"])["access_token"]
    user = accounts.register("ada")
    email = user["email"]
    auth = "/api/v1/auth"

    post(client, f"{auth}/login", email="nobody@example.com", password=PASSWORD)  # login_failed
    post(client, f"{auth}/login", email=email, password="wrong-password-1")  # login_failed
    tokens = post(client, f"{auth}/login", email=email, password=PASSWORD).json  # succeeded
    post(client, f"{auth}/email/verify", token=mailed_token(mailbox(app, to=email)[0]))
    secret = post(client, f"{auth}/mfa/totp", tokens["access_token"], password=PASSWORD).json[
        "secret"
    ]
    codes = post(
        client, f"{auth}/mfa/totp/confirm", tokens["access_token"], code=pyotp.TOTP(secret).now()
    ).json["recovery_codes"]
    mfa_token = post(client, f"{auth}/login", email=email, password=PASSWORD).json["mfa_token"]
    post(client, f"{auth}/login/mfa", mfa_token=mfa_token, code="000000")  # mfa_failed
    post(client, f"{auth}/login/mfa", mfa_token=mfa_token, recovery_code=codes[0])
    client.delete(
        f"{auth}/mfa/totp",
        json={"password": PASSWORD, "code": codes[1]},
        headers={**AGENT, **bearer(tokens["access_token"])},
    )  # recovery_code_used, mfa_disabled (and ends `second`)
    third = post(client, f"{auth}/login", email=email, password=PASSWORD).json
    refreshed = post(client, f"{auth}/refresh", refresh_token=third["refresh_token"]).json
    time.sleep(0.01)
    sessions = client.get(f"{auth}/sessions", headers=bearer(refreshed["access_token"])).json
    other = post(client, f"{auth}/login", email=email, password=PASSWORD).json
    client.delete(f"{auth}/sessions/{sessions[0]['id']}", headers=bearer(other["access_token"]))
    post(client, f"{auth}/logout", other["access_token"])
    fourth = post(client, f"{auth}/login", email=email, password=PASSWORD).json
    post(client, f"{auth}/logout-all", fourth["access_token"])
    fifth = post(client, f"{auth}/login", email=email, password=PASSWORD).json
    changed = post(
        client,
        f"{auth}/password",
        fifth["access_token"],
        current_password=PASSWORD,
        new_password="Second-Horse-Battery-8",
    ).json
    post(
        client,
        f"{auth}/email",
        changed["access_token"],
        new_email="ada@new.example",
        password="Second-Horse-Battery-8",
    )
    post(
        client,
        f"{auth}/email/confirm",
        token=mailed_token(mailbox(app, kind="confirm_email_change")[0]),
    )
    post(client, f"{auth}/password/forgot", email="ada@new.example")
    reset = post(
        client,
        f"{auth}/password/reset",
        token=mailed_token(mailbox(app, kind="reset_password")[0]),
        new_password="Third-Horse-Battery-9",
    ).json
    # A replay of a rotated refresh token, after the grace.
    replay = post(
        client, f"{auth}/login", email="ada@new.example", password="Third-Horse-Battery-9"
    ).json
    post(client, f"{auth}/refresh", refresh_token=replay["refresh_token"])
    session = app.extensions["database"].sessionmaker()
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.rotated_at.is_not(None))
        .values(rotated_at=utcnow() - timedelta(minutes=5))
    )
    session.commit()
    session.close()
    post(client, f"{auth}/refresh", refresh_token=replay["refresh_token"])  # reuse detected
    # Throttled: enough wrong passwords from one address.
    for _ in range(6):
        post(client, f"{auth}/login", email="ada@new.example", password="wrong-password-1")

    mine = client.get(
        MY_EVENTS, headers=bearer(reset["access_token"]), query_string={"page_size": 100}
    )
    assert mine.status_code == 200
    seen = set(types(mine))
    expected = {t.value for t in EventType} - {"account_deleted"}
    assert expected - seen == set()

    # The last one: deletion. The admin still sees the account's history afterwards.
    last = post(client, f"{auth}/login", email="ada@new.example", password="Third-Horse-Battery-9")
    assert last.status_code == 429  # still throttled from this address
    deleted = client.delete(
        f"{auth}/me",
        json={"password": "Third-Horse-Battery-9"},
        headers=bearer(reset["access_token"]),
        environ_base={"REMOTE_ADDR": "192.0.2.1"},
    )
    assert deleted.status_code == 204
    history = client.get(
        ALL_EVENTS,
        query_string={"user_id": user["id"], "page_size": 100},
        headers=bearer(admin_token),
    )
    assert history.status_code == 200
    assert {t.value for t in EventType} - set(types(history)) == set()
    assert types(history)[0] == "account_deleted"
    assert all(event["user_id"] == user["id"] for event in history.json)
    unknown = client.get(
        ALL_EVENTS, query_string={"type": "login_failed"}, headers=bearer(admin_token)
    )
    assert None in [event["user_id"] for event in unknown.json]


def test_an_event_says_when_from_where_and_in_which_session(client, accounts):
    user = accounts.register("ada")
    tokens = client.post(
        "/api/v1/auth/login",
        json={"email": user["email"], "password": PASSWORD},
        headers={"User-Agent": "Firefox/140.0"},
        environ_base={"REMOTE_ADDR": "192.0.2.44"},
    ).json
    (event,) = client.get(MY_EVENTS, headers=bearer(tokens["access_token"])).json
    sid = client.get("/api/v1/auth/sessions", headers=bearer(tokens["access_token"])).json[0]["id"]
    assert event["type"] == "login_succeeded"
    assert (event["ip"], event["user_agent"], event["session_id"]) == (
        "192.0.2.44",
        "Firefox/140.0",
        sid,
    )
    assert event["at"].endswith("+00:00")
    assert set(event) == {"type", "at", "ip", "user_agent", "session_id"}


def test_events_are_newest_first_and_paginated(client, accounts):
    user, tokens = accounts.register_and_login("ada")
    for _ in range(4):
        accounts.login(user["email"])
    answer = client.get(
        MY_EVENTS, query_string={"page": 2, "page_size": 2}, headers=bearer(tokens["access_token"])
    )
    assert answer.status_code == 200
    assert json.loads(answer.headers["X-Pagination"]) == {
        "total": 5, "total_pages": 3, "first_page": 1, "last_page": 3, "page": 2,
        "previous_page": 1, "next_page": 3,
    }  # fmt: skip
    everything = client.get(MY_EVENTS, headers=bearer(tokens["access_token"])).json
    ats = [event["at"] for event in everything]
    assert ats == sorted(ats, reverse=True)


def test_a_user_sees_only_their_own_and_only_admins_see_all(app, client, accounts):
    ada, ada_tokens = accounts.register_and_login("ada")
    accounts.register_and_login("bob")
    mine = client.get(MY_EVENTS, headers=bearer(ada_tokens["access_token"])).json
    assert len(mine) == 1
    assert client.get(ALL_EVENTS, headers=bearer(ada_tokens["access_token"])).status_code == 403
    make_admin(app, ada["email"])
    admin = accounts.login(ada["email"])["access_token"]
    everyone = client.get(
        ALL_EVENTS, query_string={"type": "login_succeeded"}, headers=bearer(admin)
    )
    assert everyone.status_code == 200 and len(everyone.json) == 3
    assert (
        client.get(ALL_EVENTS, query_string={"type": "nonsense"}, headers=bearer(admin)).status_code
        == 422
    )
    assert (
        client.get(ALL_EVENTS, query_string={"user_id": "nope"}, headers=bearer(admin)).status_code
        == 422
    )
    upper = client.get(
        ALL_EVENTS, query_string={"user_id": ada["id"].upper()}, headers=bearer(admin)
    )
    assert {e["user_id"] for e in upper.json} == {ada["id"]}


def test_the_retention_purge_removes_only_what_is_old(app, client, accounts):
    accounts.register_and_login("ada")
    engine = app.extensions["database"].engine
    session = app.extensions["database"].sessionmaker()
    now = utcnow()
    for days in (91, 120, 400):
        for _ in range(3):
            session.add(SecurityEvent(type="login_failed", at=now - timedelta(days=days)))
    session.add(SecurityEvent(type="login_failed", at=now - timedelta(days=89)))
    session.commit()
    removed = security_events.purge(engine, now - timedelta(days=90), batch_size=2)
    assert removed == 9
    ages = [now - at for at in session.scalars(select(SecurityEvent.at))]
    session.close()
    assert len(ages) == 2 and all(age < timedelta(days=90) for age in ages)
    assert security_events.purge(engine, now - timedelta(days=90)) == 0


def test_a_failed_login_records_its_event_though_nothing_else_commits(app, client, accounts):
    user = accounts.register("ada")
    client.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong-password-1"})
    session = app.extensions["database"].sessionmaker()
    count = session.scalar(
        select(func.count()).select_from(SecurityEvent).where(SecurityEvent.type == "login_failed")
    )
    session.close()
    assert count == 1


def test_an_event_of_a_signed_in_request_carries_its_session(client, accounts):
    _, tokens = accounts.register_and_login("ada")
    headers = bearer(tokens["access_token"])
    sid = client.get("/api/v1/auth/sessions", headers=headers).json[0]["id"]
    client.post("/api/v1/auth/mfa/totp", json={"password": PASSWORD}, headers=headers)
    secret = client.post("/api/v1/auth/mfa/totp", json={"password": PASSWORD}, headers=headers)
    code = pyotp.TOTP(secret.json["secret"]).now()
    client.post("/api/v1/auth/mfa/totp/confirm", json={"code": code}, headers=headers)
    (enabled,) = [
        e for e in client.get(MY_EVENTS, headers=headers).json if e["type"] == "mfa_enabled"
    ]
    assert enabled["session_id"] == sid
