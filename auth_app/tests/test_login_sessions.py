"""Refresh rotation, reuse detection, logout, logout-all, password change and deletion."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import select, update

from auth_app.login_sessions import hash_token
from auth_app.models import LoginSession, RefreshToken, User
from auth_app.tests.conftest import PASSWORD, Accounts, bearer, outbox_messages
from common.db import utcnow
from tests.support.servers import fresh_postgres_database

REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/auth/me"
NEW_PASSWORD = "Correct-Horse-Battery-9"


def refresh(client, token):
    return client.post(REFRESH, json={"refresh_token": token})


def me(client, tokens):
    return client.get(ME, headers=bearer(tokens["access_token"])).status_code


def db(app):
    return app.extensions["database"].sessionmaker()


def test_refresh_returns_a_new_pair_and_the_old_refresh_token_dies(client, accounts):
    _, tokens = accounts.register_and_login()
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    fresh = response.json
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert me(client, fresh) == 200
    old_sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    new_sid = jwt.decode(fresh["access_token"], options={"verify_signature": False})["sid"]
    assert old_sid == new_sid


def test_only_a_hash_of_the_refresh_token_is_stored(app, accounts):
    _, tokens = accounts.register_and_login()
    session = db(app)
    stored = session.scalars(select(RefreshToken.token_hash)).all()
    session.close()
    assert tokens["refresh_token"] not in stored
    assert hash_token(tokens["refresh_token"]) in stored


def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(make_app):
    # No grace: the first replay is one.
    client = make_app(REFRESH_REUSE_GRACE_SECONDS=0).test_client()
    accounts = Accounts(client)
    _, first = accounts.register_and_login()
    second = refresh(client, first["refresh_token"]).json
    other_session = accounts.login(accounts_email(client, second))
    reuse = refresh(client, first["refresh_token"])
    assert reuse.status_code == 401
    assert reuse.json["message"] == "Invalid refresh token"
    # The newer refresh token and that session's access token are dead ...
    assert refresh(client, second["refresh_token"]).status_code == 401
    assert me(client, second) == 401
    # ... while another session of the same user lives on.
    assert me(client, other_session) == 200
    assert refresh(client, other_session["refresh_token"]).status_code == 200


def accounts_email(client, tokens):
    return client.get(ME, headers=bearer(tokens["access_token"])).json["email"]


def test_unknown_empty_and_expired_refresh_tokens_are_401(app, client, accounts):
    _, tokens = accounts.register_and_login()
    assert refresh(client, "nonsense").status_code == 401
    assert refresh(client, "").status_code == 401
    assert refresh(client, "x" * 5000).status_code == 401
    assert client.post(REFRESH, json={}).status_code == 422
    session = db(app)
    session.execute(update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    session.close()
    assert refresh(client, tokens["refresh_token"]).status_code == 401


def test_refresh_fails_for_a_disabled_or_deleted_user(app, client, accounts):
    user, tokens = accounts.register_and_login()
    session = db(app)
    session.execute(update(User).where(User.id == user["id"]).values(is_active=False))
    session.commit()
    assert refresh(client, tokens["refresh_token"]).status_code == 401
    session.execute(update(User).where(User.id == user["id"]).values(is_active=True))
    session.commit()
    assert me(client, tokens) == 200
    session.close()
    assert (
        client.delete(ME, headers=bearer(tokens["access_token"]), json={"password": PASSWORD})
    ).status_code == 204
    assert refresh(client, tokens["refresh_token"]).status_code == 401


def test_logout_kills_the_access_token_and_its_session_at_once(client, accounts):
    user, tokens = accounts.register_and_login()
    other = accounts.login(user["email"])
    response = client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 204
    assert me(client, tokens) == 401
    assert refresh(client, tokens["refresh_token"]).status_code == 401
    assert me(client, other) == 200


def test_logout_with_a_refresh_token_of_this_user_revokes_that_session_too(client, accounts):
    user, tokens = accounts.register_and_login()
    other = accounts.login(user["email"])
    response = client.post(
        "/api/v1/auth/logout",
        headers=bearer(tokens["access_token"]),
        json={"refresh_token": other["refresh_token"]},
    )
    assert response.status_code == 204
    assert refresh(client, other["refresh_token"]).status_code == 401


def test_logout_with_someone_elses_refresh_token_is_refused(client, accounts):
    _, mine = accounts.register_and_login()
    _, theirs = accounts.register_and_login()
    response = client.post(
        "/api/v1/auth/logout",
        headers=bearer(mine["access_token"]),
        json={"refresh_token": theirs["refresh_token"]},
    )
    assert response.status_code == 400
    assert refresh(client, theirs["refresh_token"]).status_code == 200
    assert me(client, mine) == 200


def test_logout_all_kills_every_session_including_same_second_tokens(client, accounts):
    user, first = accounts.register_and_login()
    second = accounts.login(user["email"])
    response = client.post("/api/v1/auth/logout-all", headers=bearer(first["access_token"]))
    assert response.status_code == 204
    for tokens in (first, second):
        assert me(client, tokens) == 401
        assert refresh(client, tokens["refresh_token"]).status_code == 401
    # A login right after, within the same second, works.
    again = accounts.login(user["email"])
    assert me(client, again) == 200
    assert refresh(client, again["refresh_token"]).status_code == 200


def test_tokens_work_after_a_burst_of_logout_alls(client, accounts):
    # More logout-alls in a row than the clock leeway has seconds: the cut-off
    # must not run ahead of the clock, or the newest tokens would be refused
    # as "not yet valid".
    user, tokens = accounts.register_and_login()
    for _ in range(12):
        response = client.post("/api/v1/auth/logout-all", headers=bearer(tokens["access_token"]))
        assert response.status_code == 204
        assert me(client, tokens) == 401
        tokens = accounts.login(user["email"])
        assert me(client, tokens) == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_password_change_returns_a_working_pair_and_kills_the_rest(client, accounts):
    user, old = accounts.register_and_login()
    other = accounts.login(user["email"])
    response = client.post(
        "/api/v1/auth/password",
        headers=bearer(old["access_token"]),
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 200
    new = response.json
    assert response.headers["Pragma"] == "no-cache"
    assert me(client, new) == 200
    for tokens in (old, other):
        assert me(client, tokens) == 401
        assert refresh(client, tokens["refresh_token"]).status_code == 401
    assert refresh(client, new["refresh_token"]).status_code == 200
    assert accounts.login(user["email"], NEW_PASSWORD)
    wrong = client.post("/api/v1/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert wrong.status_code == 401


def test_password_change_refuses_a_wrong_current_or_weak_new_password(client, accounts):
    _, tokens = accounts.register_and_login()
    headers = bearer(tokens["access_token"])
    wrong = client.post(
        "/api/v1/auth/password",
        headers=headers,
        json={"current_password": "not-it-at-all", "new_password": NEW_PASSWORD},
    )
    assert wrong.status_code == 401
    weak = client.post(
        "/api/v1/auth/password",
        headers=headers,
        json={"current_password": PASSWORD, "new_password": "password1"},
    )
    assert weak.status_code == 422
    assert "new_password" in weak.json["errors"]["json"]
    assert me(client, tokens) == 200


def test_delete_me_frees_the_names_and_kills_every_token(app, client, accounts):
    user, tokens = accounts.register_and_login("zoe")
    wrong = client.delete(
        ME, headers=bearer(tokens["access_token"]), json={"password": "nope-nope"}
    )
    assert wrong.status_code == 401
    response = client.delete(
        ME, headers=bearer(tokens["access_token"]), json={"password": PASSWORD}
    )
    assert response.status_code == 204
    assert me(client, tokens) == 401
    assert refresh(client, tokens["refresh_token"]).status_code == 401
    session = db(app)
    assert session.get(User, user["id"]) is None
    assert session.scalars(select(LoginSession)).all() == []
    session.close()
    again = accounts.register("zoe")
    assert again["id"] != user["id"]


def test_get_me_returns_the_user(client, accounts):
    user, tokens = accounts.register_and_login()
    response = client.get(ME, headers=bearer(tokens["access_token"]))
    assert response.json == user


def test_two_concurrent_refreshes_with_one_token_exactly_one_wins(make_app):
    with fresh_postgres_database("auth") as url:
        # Strict reuse detection: the loser is a replay.
        app = make_app(DATABASE_URL=url, REFRESH_REUSE_GRACE_SECONDS=0)
        try:
            _, tokens = Accounts(app.test_client()).register_and_login()
            barrier = threading.Barrier(2)
            statuses = []

            def attempt():
                client = app.test_client()
                barrier.wait()
                statuses.append(refresh(client, tokens["refresh_token"]).status_code)

            threads = [threading.Thread(target=attempt) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(statuses) == [200, 401]
        finally:
            app.extensions["database"].engine.dispose()


@pytest.fixture(scope="module")
def pg_url():
    with fresh_postgres_database("auth_refresh") as url:
        yield url


def test_eight_parallel_refreshes_with_one_token_in_the_grace_all_answer_and_the_session_lives(
    make_app, pg_url
):
    app = make_app(DATABASE_URL=pg_url, REFRESH_REUSE_GRACE_SECONDS=10)
    try:
        _, tokens = Accounts(app.test_client()).register_and_login()
        barrier = threading.Barrier(8)
        answers = []

        def attempt():
            client = app.test_client()
            barrier.wait()
            answers.append(refresh(client, tokens["refresh_token"]))

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [answer.status_code for answer in answers] == [200] * 8
        client = app.test_client()
        sids = {
            jwt.decode(a.json["access_token"], options={"verify_signature": False})["sid"]
            for a in answers
        }
        assert len(sids) == 1
        # Every pair handed out so stays valid, and the session lives on.
        for answer in answers:
            assert me(client, answer.json) == 200
        for answer in answers:
            assert refresh(client, answer.json["refresh_token"]).status_code == 200
    finally:
        app.extensions["database"].engine.dispose()


def test_a_rotated_token_replayed_after_the_grace_ends_its_whole_family(make_app, pg_url):
    app = make_app(DATABASE_URL=pg_url, REFRESH_REUSE_GRACE_SECONDS=1)
    try:
        client = app.test_client()
        _, first = Accounts(client).register_and_login()
        second = refresh(client, first["refresh_token"]).json
        twin = refresh(client, first["refresh_token"]).json  # inside the grace
        time.sleep(1.2)
        assert refresh(client, first["refresh_token"]).status_code == 401
        for tokens in (second, twin):
            assert me(client, tokens) == 401
            assert refresh(client, tokens["refresh_token"]).status_code == 401
    finally:
        app.extensions["database"].engine.dispose()


def test_a_session_ends_at_its_max_age_however_often_refreshed(app, client, accounts):
    _, tokens = accounts.register_and_login()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    session = db(app)
    family = session.get(LoginSession, claims["sid"])
    # No token of a login outlives it.
    assert claims["exp"] <= family.expires_at.timestamp()
    session.execute(
        update(LoginSession)
        .where(LoginSession.id == claims["sid"])
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    session.commit()
    session.close()
    assert refresh(client, tokens["refresh_token"]).status_code == 401
    assert me(client, tokens) == 401
    announced = [
        body["data"]
        for body in outbox_messages(app)
        if body["data"].get("action") == "session_revoked"
    ]
    assert [data["session_id"] for data in announced] == [claims["sid"]]


def race(app, requests: dict, delays: dict | None = None) -> dict:
    """Send each request from its own thread at the same moment, or that many
    seconds after it as `delays` says; their answers by name."""
    barrier = threading.Barrier(len(requests))
    answers = {}

    def send(name, request):
        barrier.wait()
        time.sleep((delays or {}).get(name, 0))
        answers[name] = request(app.test_client())

    threads = [threading.Thread(target=send, args=item) for item in requests.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.slow
def test_no_token_survives_a_refresh_racing_a_password_change_run_300_times(make_app, pg_url):
    app = make_app(DATABASE_URL=pg_url, REFRESH_REUSE_GRACE_SECONDS=0, LOG_LEVEL="critical")
    try:
        client = app.test_client()
        survivors, refreshed = [], 0
        # A password change spends most of its time in bcrypt before it touches a row,
        # so a refresh sent at the same moment nearly always wins. Each refresh starts
        # at a random point across the change's own duration instead: the runs land
        # before, during and after its commit.
        password_seconds = 0.0
        rng = random.Random(12)

        def change_password(c, access_token, took):
            started = time.perf_counter()
            answer = c.post(
                "/api/v1/auth/password",
                headers=bearer(access_token),
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            )
            took.append(time.perf_counter() - started)
            return answer

        for _ in range(300):
            # A user of its own each time: every race starts from a settled account.
            _, tokens = Accounts(client).register_and_login()
            took: list[float] = []
            answers = race(
                app,
                {
                    "refresh": lambda c, t=tokens: refresh(c, t["refresh_token"]),
                    "password": lambda c, t=tokens, took=took: change_password(
                        c, t["access_token"], took
                    ),
                },
                delays={"refresh": rng.uniform(0, password_seconds)},
            )
            password_seconds = took[0]
            assert answers["password"].status_code == 200
            if answers["refresh"].status_code == 200:
                refreshed += 1
                pair = answers["refresh"].json
                if (
                    me(client, pair) != 401
                    or refresh(client, pair["refresh_token"]).status_code != 401
                ):
                    survivors.append(pair)
            else:
                assert answers["refresh"].status_code == 401, answers["refresh"].json
            assert me(client, answers["password"].json) == 200
        print(f"\nrefresh/password race: 300 runs, the refresh answered 200 in {refreshed}")
        assert survivors == []
        # Both orders happened: the race really raced.
        assert 0 < refreshed < 300, refreshed
    finally:
        app.extensions["database"].engine.dispose()


@pytest.mark.parametrize("how", ["password change", "account deletion"])
def test_eight_parallel_uses_of_one_current_password_succeed_once(make_app, pg_url, how):
    app = make_app(DATABASE_URL=pg_url, LOG_LEVEL="critical")
    try:
        client = app.test_client()
        user, tokens = Accounts(client).register_and_login()
        headers = bearer(tokens["access_token"])
        if how == "password change":
            # Each with a password of its own: only the first may replace the current one.
            requests = {
                n: lambda c, n=n: c.post(
                    "/api/v1/auth/password",
                    headers=headers,
                    json={"current_password": PASSWORD, "new_password": f"{NEW_PASSWORD}-{n}"},
                )
                for n in range(8)
            }
        else:
            requests = {
                n: lambda c: c.delete(
                    "/api/v1/auth/me", headers=headers, json={"password": PASSWORD}
                )
                for n in range(8)
            }
        answers = race(app, requests)
        statuses = sorted(answer.status_code for answer in answers.values())
        # The losers' password is wrong by then (or the account gone): 401, and once
        # past LOGIN_MAX_FAILURES wrong ones, the throttle's 429.
        assert statuses[0] == (200 if how == "password change" else 204), statuses
        assert set(statuses[1:]) <= {401, 429}, statuses
        deleted = [
            body
            for body in outbox_messages(app)
            if body["data"].get("action") == "deleted" and body["data"]["user_id"] == user["id"]
        ]
        assert len(deleted) == (how == "account deletion")
        if how == "password change":
            (winner,) = (a for a in answers.values() if a.status_code == 200)
            assert me(client, winner.json) == 200
    finally:
        app.extensions["database"].engine.dispose()
