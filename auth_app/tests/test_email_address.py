"""Email verification (EMAIL_VERIFICATION off, optional, required) and email change by mail."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from auth_app.tests.conftest import (
    PASSWORD,
    Accounts,
    bearer,
    mailbox,
    mailed_token,
    outbox_messages,
)
from auth_app.tests.test_password_reset import age_tokens

VERIFY = "/api/v1/auth/email/verify"
VERIFY_REQUEST = "/api/v1/auth/email/verify/request"
CHANGE = "/api/v1/auth/email"
CONFIRM = "/api/v1/auth/email/confirm"


def verification_token(app, email: str, n: int = -1) -> str:
    return mailed_token(mailbox(app, to=email, kind="verify_email")[n])


def claims(tokens: dict) -> dict:
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})


def ask_change(client, tokens, new_email, password=PASSWORD):
    return client.post(
        CHANGE,
        json={"new_email": new_email, "password": password},
        headers=bearer(tokens["access_token"]),
    )


def confirm_token(app, new_email: str) -> str:
    (mail,) = mailbox(app, to=new_email, kind="confirm_email_change")
    return mailed_token(mail)


def synced_changes(app) -> list[dict]:
    return [m["data"]["changes"] for m in outbox_messages(app) if m["data"]["action"] == "updated"]


# -- verification ----------------------------------------------------------------


def test_registration_mails_a_verification_link(app, accounts):
    user = accounts.register("ada")
    assert user["email_verified"] is False
    (mail,) = mailbox(app, to="ada@example.com")
    assert mail.kind == "verify_email"
    assert mail.subject == "Verify your email address"
    assert "http://localhost:3000/verify-email?token=" in mail.text_body
    assert "24 hours" in mail.text_body


def test_with_verification_off_registration_mails_nothing(make_app):
    app = make_app(EMAIL_VERIFICATION="off")
    Accounts(app.test_client()).register("ada")
    assert mailbox(app) == []


def test_the_link_verifies_the_address_in_the_user_the_token_and_the_sync(app, client, accounts):
    user = accounts.register("ada")
    response = client.post(VERIFY, json={"token": verification_token(app, user["email"])})
    assert response.status_code == 200
    assert response.json["email_verified"] is True
    assert response.json["id"] == user["id"]
    tokens = accounts.login(user["email"])
    assert claims(tokens)["email_verified"] is True
    me = client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    assert me.json["email_verified"] is True
    assert synced_changes(app) == [{"email_verified": True}]


def test_a_verification_token_works_once_and_not_after_it_expires(app, client, accounts):
    accounts.register("ada")
    accounts.register("bob")
    used = verification_token(app, "ada@example.com")
    assert client.post(VERIFY, json={"token": used}).status_code == 200
    assert client.post(VERIFY, json={"token": used}).status_code == 400
    age_tokens(app, timedelta(hours=25))
    expired = client.post(VERIFY, json={"token": verification_token(app, "bob@example.com")})
    assert expired.status_code == 400
    assert expired.json["message"] == "Invalid, used or expired token"


def test_optional_mode_lets_an_unverified_account_log_in(accounts):
    user, tokens = accounts.register_and_login("ada")
    assert claims(tokens)["email_verified"] is False


def test_required_mode_refuses_login_until_the_address_is_verified(make_app):
    app = make_app(EMAIL_VERIFICATION="required")
    client = app.test_client()
    user = Accounts(client).register("ada")
    body = {"email": user["email"], "password": PASSWORD}
    refused = client.post("/api/v1/auth/login", json=body)
    assert refused.status_code == 403
    assert "not verified" in refused.json["message"]
    wrong = client.post("/api/v1/auth/login", json={**body, "password": "wrong-password-1"})
    assert wrong.status_code == 401  # only a right password learns about verification
    client.post(VERIFY, json={"token": verification_token(app, user["email"])})
    assert client.post("/api/v1/auth/login", json=body).status_code == 200


def test_asking_for_a_verification_mail_when_signed_in(app, client, accounts):
    _, tokens = accounts.register_and_login("ada")
    headers = bearer(tokens["access_token"])
    # The registration's mail does not count against the minute between asks.
    first = client.post(VERIFY_REQUEST, headers=headers)
    assert first.status_code == 202
    again = client.post(VERIFY_REQUEST, headers=headers)
    assert again.status_code == 429
    assert 0 < int(again.headers["Retry-After"]) <= 60
    registration_link, asked_link = mailbox(app, kind="verify_email")
    # Only the newest link works.
    assert client.post(VERIFY, json={"token": mailed_token(registration_link)}).status_code == 400
    assert client.post(VERIFY, json={"token": mailed_token(asked_link)}).status_code == 200
    done = client.post(VERIFY_REQUEST, headers=headers)
    assert done.status_code == 409
    assert done.json["message"] == "Email already verified"


def test_asking_by_address_answers_alike_and_mails_only_an_unverified_account(
    app, client, accounts
):
    accounts.register("ada")
    verified = accounts.register("bob")
    client.post(VERIFY, json={"token": verification_token(app, verified["email"])})
    answers = [
        client.post(VERIFY_REQUEST, json={"email": email})
        for email in ("ada@example.com", "bob@example.com", "nobody@example.com")
    ]
    assert {a.status_code for a in answers} == {202}
    assert len({str(a.json) for a in answers}) == 1
    assert len(mailbox(app, to="ada@example.com", kind="verify_email")) == 2
    assert len(mailbox(app, to="bob@example.com", kind="verify_email")) == 1
    assert mailbox(app, to="nobody@example.com") == []
    # Asked again within the minute: the same answer, no mail.
    assert client.post(VERIFY_REQUEST, json={"email": "ada@example.com"}).status_code == 202
    assert len(mailbox(app, to="ada@example.com", kind="verify_email")) == 2


def test_asking_without_a_token_or_an_address_is_422(client):
    assert client.post(VERIFY_REQUEST).status_code == 422
    assert client.post(VERIFY_REQUEST, json={}).json["errors"]["json"]["email"]


def test_asking_with_a_bad_token_is_401(client):
    response = client.post(VERIFY_REQUEST, headers=bearer("not-a-jwt"))
    assert response.status_code == 401
    assert "invalid_token" in response.headers["WWW-Authenticate"]


# -- change ----------------------------------------------------------------------


def test_an_email_change_mails_the_new_address_a_link_and_the_old_one_a_notice(
    app, client, accounts
):
    _, tokens = accounts.register_and_login("ada")
    response = ask_change(client, tokens, "Ada@Lovelace.example")
    assert response.status_code == 202
    (confirm,) = mailbox(app, to="ada@lovelace.example", kind="confirm_email_change")
    assert "/confirm-email?token=" in confirm.text_body
    (notice,) = mailbox(app, to="ada@example.com", kind="email_change_notice")
    assert "ada@lovelace.example" in notice.text_body
    assert "token=" not in notice.text_body
    me = client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).json
    assert me["email"] == "ada@example.com"  # nothing changes before the confirmation


def test_confirming_gives_the_new_verified_email_and_frees_the_old(app, client, accounts):
    user, tokens = accounts.register_and_login("ada")
    ask_change(client, tokens, "ada@lovelace.example")
    confirmed = client.post(CONFIRM, json={"token": confirm_token(app, "ada@lovelace.example")})
    assert confirmed.status_code == 200
    assert confirmed.json["email"] == "ada@lovelace.example"
    assert confirmed.json["email_verified"] is True
    assert synced_changes(app)[-1] == {"email": "ada@lovelace.example", "email_verified": True}
    fresh = accounts.login("ada@lovelace.example")
    assert claims(fresh)["email"] == "ada@lovelace.example"
    old_login = client.post(
        "/api/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert old_login.status_code == 401
    newcomer = client.post(
        "/api/v1/auth/register",
        json={"email": "ada@example.com", "username": "ada2", "password": PASSWORD},
    )
    assert newcomer.status_code == 201


def test_the_change_needs_the_password_and_a_free_address(app, client, accounts):
    _, tokens = accounts.register_and_login("ada")
    accounts.register("bob")
    wrong = ask_change(client, tokens, "new@example.com", password="wrong-password-1")
    assert wrong.status_code == 401
    taken = ask_change(client, tokens, "BOB@example.com")
    assert taken.status_code == 409
    own = ask_change(client, tokens, "ada@example.com")
    assert own.status_code == 409
    assert mailbox(app, kind="confirm_email_change") == []


def test_a_change_link_works_once(app, client, accounts):
    _, tokens = accounts.register_and_login("ada")
    ask_change(client, tokens, "ada@lovelace.example")
    token = confirm_token(app, "ada@lovelace.example")
    assert client.post(CONFIRM, json={"token": token}).status_code == 200
    assert client.post(CONFIRM, json={"token": token}).status_code == 400


def test_an_address_taken_meanwhile_is_409_at_confirmation(app, client, accounts):
    _, tokens = accounts.register_and_login("ada")
    ask_change(client, tokens, "contested@example.com")
    token = confirm_token(app, "contested@example.com")
    accounts.register("contested")
    response = client.post(CONFIRM, json={"token": token})
    assert response.status_code == 409
    assert response.json["message"] == "That email is already registered"


def test_the_change_kills_links_mailed_to_the_old_address(app, client, accounts):
    _, tokens = accounts.register_and_login("ada")
    client.post("/api/v1/auth/password/forgot", json={"email": "ada@example.com"})
    ask_change(client, tokens, "ada@lovelace.example")
    client.post(CONFIRM, json={"token": confirm_token(app, "ada@lovelace.example")})
    (reset_mail,) = mailbox(app, kind="reset_password")
    reset = client.post(
        "/api/v1/auth/password/reset",
        json={"token": mailed_token(reset_mail), "new_password": "Stolen-Mailbox-Horse-1"},
    )
    assert reset.status_code == 400
    old_verification = verification_token(app, "ada@example.com")
    assert client.post(VERIFY, json={"token": old_verification}).status_code == 400


def test_asking_for_changes_too_often_is_429(app, client, accounts):
    _, tokens = accounts.register_and_login("ada")
    assert ask_change(client, tokens, "one@example.com").status_code == 202
    again = ask_change(client, tokens, "two@example.com")
    assert again.status_code == 429
    assert "Retry-After" in again.headers


def test_wrong_passwords_at_the_change_count_as_failed_logins(make_app):
    app = make_app(LOGIN_MAX_FAILURES=2)
    accounts = Accounts(app.test_client())
    _, tokens = accounts.register_and_login("ada")
    client = app.test_client()
    answers = [
        ask_change(client, tokens, "x@example.com", "wrong-password-1").status_code
        for _ in range(3)
    ]
    assert answers == [401, 401, 429]


@pytest.mark.parametrize("path", [VERIFY, CONFIRM])
def test_token_endpoints_refuse_nonsense_with_400_and_bad_bodies_with_422(client, path):
    assert client.post(path, json={"token": "nope"}).status_code == 400
    assert client.post(path, json={"token": ""}).status_code == 422
    assert client.post(path, json={"token": "a\u0000b"}).status_code == 422
    assert client.post(path, json={}).status_code == 422
