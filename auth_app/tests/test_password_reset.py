"""Password reset by mail: forgot (a mail, or nothing), reset (a new password, all else dies).

The mails are read from the queue the mailer sends from; sending itself is
``workers/tests/test_mailer.py`` and the end-to-end run's.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from auth_app.models import AccountToken, User
from auth_app.tests.conftest import PASSWORD, bearer, mailbox, mailed_token, outbox_messages
from common.db import utcnow

FORGOT = "/api/v1/auth/password/forgot"
RESET = "/api/v1/auth/password/reset"
NEW_PASSWORD = "Difference-Engine-1822"


def forgot(client, email: str):
    return client.post(FORGOT, json={"email": email})


def reset(client, token: str, new_password: str = NEW_PASSWORD):
    return client.post(RESET, json={"token": token, "new_password": new_password})


def reset_token(app, email: str) -> str:
    (mail,) = mailbox(app, to=email, kind="reset_password")
    return mailed_token(mail)


def age_tokens(app, by: timedelta) -> None:
    """Move every account token's times back, as if ``by`` had passed."""
    session = app.extensions["database"].sessionmaker()
    for token in session.query(AccountToken):
        token.created_at -= by
        token.expires_at -= by
    session.commit()
    session.close()


def test_forgot_mails_a_reset_link_and_answers_202(app, client, accounts):
    user = accounts.register("ada")
    response = forgot(client, "ADA@example.com")
    assert response.status_code == 202
    assert response.json == {"message": "If that address has an account, a mail is on its way"}
    (mail,) = mailbox(app, to="ada@example.com", kind="reset_password")
    assert mail.subject == "Reset your password"
    assert mail.user_id == user["id"]
    assert "http://localhost:3000/reset-password?token=" in mail.text_body
    assert "/reset-password?token=" in mail.html_body
    assert "30 minutes" in mail.text_body


def test_the_mail_remembers_the_request_that_wrote_it(app, client, accounts):
    accounts.register("ada")
    client.post(FORGOT, json={"email": "ada@example.com"}, headers={"X-Request-ID": "req-42"})
    (mail,) = mailbox(app, kind="reset_password")
    assert mail.correlation_id == "req-42"


def test_an_unknown_address_gets_the_same_answer_and_no_mail(app, client, accounts):
    accounts.register("ada")
    known = forgot(client, "ada@example.com")
    unknown = forgot(client, "nobody@example.com")
    assert unknown.status_code == known.status_code == 202
    assert unknown.json == known.json
    assert mailbox(app, to="nobody@example.com") == []


def test_a_disabled_account_gets_no_reset_mail(app, client, accounts):
    accounts.register("ada")
    session = app.extensions["database"].sessionmaker()
    session.execute(update(User).values(is_active=False))
    session.commit()
    session.close()
    assert forgot(client, "ada@example.com").status_code == 202
    assert mailbox(app, kind="reset_password") == []


def test_asking_again_within_a_minute_sends_no_second_mail(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    assert forgot(client, "ada@example.com").status_code == 202
    assert len(mailbox(app, kind="reset_password")) == 1


def test_reset_sets_the_password_and_answers_a_pair_of_a_new_session(app, client, accounts):
    user, old = accounts.register_and_login("ada")
    forgot(client, "ada@example.com")
    response = reset(client, reset_token(app, "ada@example.com"))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    pair = response.json
    assert pair["token_type"] == "Bearer"
    assert client.get("/api/v1/auth/me", headers=bearer(pair["access_token"])).status_code == 200
    assert accounts.login("ada@example.com", NEW_PASSWORD)
    wrong = client.post("/api/v1/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert wrong.status_code == 401


def test_reset_kills_every_earlier_session_and_token(app, client, accounts):
    _, first = accounts.register_and_login("ada")
    second = accounts.login("ada@example.com")
    forgot(client, "ada@example.com")
    assert reset(client, reset_token(app, "ada@example.com")).status_code == 200
    for pair in (first, second):
        me = client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        assert me.status_code == 401
        refreshed = client.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert refreshed.status_code == 401
    # ... and at the user service, once it consumes this:
    revoked = [m["data"] for m in outbox_messages(app) if m["data"]["action"] == "sessions_revoked"]
    assert len(revoked) == 1


def test_a_reset_token_works_once(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    token = reset_token(app, "ada@example.com")
    assert reset(client, token).status_code == 200
    again = reset(client, token, "Yet-Another-Horse-42")
    assert again.status_code == 400
    assert again.json["message"] == "Invalid, used or expired token"


def test_an_expired_reset_token_is_refused(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    age_tokens(app, timedelta(minutes=31))
    assert reset(client, reset_token(app, "ada@example.com")).status_code == 400


def test_a_newer_reset_mail_replaces_the_older_link(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    age_tokens(app, timedelta(seconds=61))  # past the resend interval
    forgot(client, "ada@example.com")
    older, newer = (mailed_token(m) for m in mailbox(app, kind="reset_password"))
    assert reset(client, older).status_code == 400
    assert reset(client, newer).status_code == 200


def test_a_refused_password_leaves_the_token_usable(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    token = reset_token(app, "ada@example.com")
    weak = reset(client, token, "password")
    assert weak.status_code == 422
    assert weak.json["message"] == "Password refused"
    assert "new_password" in weak.json["errors"]["json"]
    assert reset(client, token).status_code == 200


def test_nonsense_tokens_are_400_and_bad_bodies_422(client):
    assert reset(client, "not-a-token").status_code == 400
    assert (
        client.post(RESET, json={"token": "x" * 129, "new_password": NEW_PASSWORD}).status_code
        == 422
    )
    assert client.post(RESET, json={"new_password": NEW_PASSWORD}).status_code == 422
    assert client.post(FORGOT, json={"email": "not an address"}).status_code == 422
    assert client.post(FORGOT, json={}).status_code == 422


def test_a_reset_for_an_account_disabled_since_is_403(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    session = app.extensions["database"].sessionmaker()
    session.execute(update(User).values(is_active=False))
    session.commit()
    session.close()
    response = reset(client, reset_token(app, "ada@example.com"))
    assert response.status_code == 403


def test_following_the_reset_link_verifies_the_address(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    pair = reset(client, reset_token(app, "ada@example.com")).json
    me = client.get("/api/v1/auth/me", headers=bearer(pair["access_token"])).json
    assert me["email_verified"] is True
    updates = [m["data"] for m in outbox_messages(app) if m["data"]["action"] == "updated"]
    assert updates[-1]["changes"] == {"email_verified": True}


def test_a_password_change_kills_a_reset_link_mailed_before(app, client, accounts):
    _, tokens = accounts.register_and_login("ada")
    forgot(client, "ada@example.com")
    changed = client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "Brand-New-Horse-77"},
        headers=bearer(tokens["access_token"]),
    )
    assert changed.status_code == 200
    assert reset(client, reset_token(app, "ada@example.com")).status_code == 400


def test_forgot_and_reset_are_rate_limited_per_address(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="2/minute")
    client = app.test_client()
    answers = [forgot(client, "a@example.com").status_code for _ in range(3)]
    assert answers == [202, 202, 429]
    assert "Retry-After" in forgot(client, "b@example.com").headers
    assert [reset(client, "t").status_code for _ in range(3)] == [400, 400, 429]


def test_the_token_is_stored_only_as_a_hash(app, client, accounts):
    accounts.register("ada")
    forgot(client, "ada@example.com")
    token = reset_token(app, "ada@example.com")
    session = app.extensions["database"].sessionmaker()
    (stored,) = session.query(AccountToken).filter_by(purpose="reset_password").all()
    assert token not in (stored.token_hash, stored.email)
    assert len(stored.token_hash) == 64
    assert stored.expires_at - stored.created_at == timedelta(minutes=30)
    assert stored.expires_at > utcnow()
    session.close()
