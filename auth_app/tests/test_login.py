"""Login: credentials, disabled accounts, the failed-login throttle and the per-IP limit."""

from __future__ import annotations

from sqlalchemy import update

from auth_app.models import User
from auth_app.tests.conftest import PASSWORD

LOGIN = "/api/v1/auth/login"


def login(client, password=PASSWORD, **identifier):
    identifier = identifier or {"email": "erin@example.com"}
    return client.post(LOGIN, json={**identifier, "password": password})


def deactivate(app, email):
    session = app.extensions["database"].sessionmaker()
    session.execute(update(User).where(User.email == email).values(is_active=False))
    session.commit()
    session.close()


def test_login_by_email_returns_a_token_pair_that_is_never_cached(client, accounts):
    accounts.register("erin")
    response = login(client, email="ERIN@example.com")
    assert response.status_code == 200
    body = response.json
    assert set(body) == {
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "refresh_expires_in",
    }
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["refresh_expires_in"] == 30 * 86400
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


def test_login_by_username_ignores_case(client, accounts):
    accounts.register("Erin")
    assert login(client, username="eRIN").status_code == 200


def test_login_needs_exactly_one_of_email_or_username(client, accounts):
    accounts.register("erin")
    both = client.post(
        LOGIN, json={"email": "erin@example.com", "username": "erin", "password": PASSWORD}
    )
    neither = client.post(LOGIN, json={"password": PASSWORD})
    assert both.status_code == 422
    assert neither.status_code == 422
    assert "exactly one" in str(neither.json["errors"])


def test_unknown_user_and_wrong_password_answer_alike(client, accounts):
    accounts.register("erin")
    unknown = login(client, email="nobody@example.com")
    wrong = login(client, password="not-the-password")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json["message"] == wrong.json["message"] == "Invalid credentials"


def test_disabled_account_is_403_only_after_the_right_password(app, client, accounts):
    accounts.register("erin")
    deactivate(app, "erin@example.com")
    assert login(client, password="not-the-password").status_code == 401
    response = login(client)
    assert response.status_code == 403
    assert response.json["message"] == "Account disabled"


def test_sixth_failed_login_is_throttled_with_retry_after(client, accounts):
    accounts.register("erin")
    for _ in range(5):
        assert login(client, password="wrong-password").status_code == 401
    response = login(client, password="wrong-password")
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 900
    assert "message" in response.json
    # The right password does not get through while the window lasts.
    assert login(client).status_code == 429


def test_unknown_accounts_are_throttled_the_same_way(client):
    for _ in range(5):
        assert login(client, email="ghost@example.com").status_code == 401
    assert login(client, email="ghost@example.com").status_code == 429


def test_successful_login_clears_the_failure_count(client, accounts):
    accounts.register("erin")
    for _ in range(4):
        assert login(client, password="wrong-password").status_code == 401
    assert login(client).status_code == 200
    for _ in range(5):
        assert login(client, password="wrong-password").status_code == 401
    assert login(client, password="wrong-password").status_code == 429


def test_throttle_can_be_turned_off(make_app):
    client = make_app(LOGIN_MAX_FAILURES=0).test_client()
    for _ in range(7):
        assert login(client, password="wrong-password").status_code == 401


def test_per_ip_limit_answers_429_in_the_error_shape_with_retry_after(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="3/minute")
    client = app.test_client()
    statuses = [login(client, email="ip@example.com").status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    response = login(client, email="ip@example.com")
    assert response.status_code == 429
    assert response.json["code"] == 429
    assert "Too many requests" in response.json["message"]
    assert 0 < int(response.headers["Retry-After"]) <= 60
    # Each of register, login and refresh has its own budget.
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": "x"}).status_code == 401
