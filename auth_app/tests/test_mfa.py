"""TOTP as a second factor: enrolment, the two-step login, recovery codes, turning it off."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pyotp
import pytest
from sqlalchemy import select, update

from auth_app import mfa
from auth_app.models import MfaChallenge, RecoveryCode, TotpCredential, User
from auth_app.tests.conftest import PASSWORD, Accounts, bearer
from common.db import utcnow

TOTP = "/api/v1/auth/mfa/totp"
CONFIRM = "/api/v1/auth/mfa/totp/confirm"
LOGIN = "/api/v1/auth/login"
LOGIN_MFA = "/api/v1/auth/login/mfa"


def code_at(secret: str, offset_steps: int = 0) -> str:
    """The code of the step ``offset_steps`` away from now."""
    return pyotp.TOTP(secret).at(time.time() + 30 * offset_steps)


def enrol(client, tokens, confirm_offset: int = 0) -> tuple[str, list[str]]:
    """Turn MFA on for the user of ``tokens``; (secret, recovery codes)."""
    started = client.post(TOTP, json={"password": PASSWORD}, headers=bearer(tokens["access_token"]))
    assert started.status_code == 200, started.json
    secret = started.json["secret"]
    confirmed = client.post(
        CONFIRM,
        json={"code": code_at(secret, confirm_offset)},
        headers=bearer(tokens["access_token"]),
    )
    assert confirmed.status_code == 200, confirmed.json
    return secret, confirmed.json["recovery_codes"]


def first_step(client, email: str, password: str = PASSWORD) -> str:
    answer = client.post(LOGIN, json={"email": email, "password": password})
    assert answer.status_code == 200, answer.json
    assert set(answer.json) == {"mfa_required", "mfa_token", "expires_in"}
    assert answer.json["mfa_required"] is True and answer.json["expires_in"] == 300
    return answer.json["mfa_token"]


def second_step(client, mfa_token: str, **code):
    return client.post(LOGIN_MFA, json={"mfa_token": mfa_token, **code})


def db(app):
    return app.extensions["database"].sessionmaker()


@pytest.fixture
def person(accounts):
    user, tokens = accounts.register_and_login("ada")
    return user, tokens


def test_enrolment_gives_a_secret_and_a_uri_authenticator_apps_label(client, person):
    user, tokens = person
    answer = client.post(TOTP, json={"password": PASSWORD}, headers=bearer(tokens["access_token"]))
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    parsed = pyotp.parse_uri(answer.json["otpauth_uri"])
    assert parsed.secret == answer.json["secret"]
    assert parsed.issuer == "authsvc" and parsed.name == user["email"]
    assert (parsed.digits, parsed.interval) == (6, 30)
    assert answer.json["otpauth_uri"].startswith("otpauth://totp/authsvc:ada%40example.com?")


def test_mfa_stays_off_until_a_right_code_confirms_it(client, accounts, person):
    user, tokens = person
    headers = bearer(tokens["access_token"])
    secret = client.post(TOTP, json={"password": PASSWORD}, headers=headers).json["secret"]
    assert client.get("/api/v1/auth/me", headers=headers).json["mfa_enabled"] is False
    assert "access_token" in accounts.login(user["email"])  # still one step
    wrong = client.post(CONFIRM, json={"code": code_at(secret, 5)}, headers=headers)
    assert wrong.status_code == 400 and wrong.json["message"] == "Wrong code"
    right = client.post(CONFIRM, json={"code": code_at(secret)}, headers=headers)
    assert right.status_code == 200
    codes = right.json["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    assert client.get("/api/v1/auth/me", headers=headers).json["mfa_enabled"] is True
    again = client.post(CONFIRM, json={"code": code_at(secret, 1)}, headers=headers)
    assert again.status_code == 400 and again.json["message"] == "No TOTP enrolment is pending"


def test_confirming_with_nothing_pending_is_400(client, person):
    _, tokens = person
    answer = client.post(CONFIRM, json={"code": "123456"}, headers=bearer(tokens["access_token"]))
    assert answer.status_code == 400


def test_enrolling_needs_the_password_and_mfa_off(client, person):
    _, tokens = person
    headers = bearer(tokens["access_token"])
    wrong = client.post(TOTP, json={"password": "not-the-password"}, headers=headers)
    assert wrong.status_code == 401
    enrol(client, tokens)
    assert client.post(TOTP, json={"password": PASSWORD}, headers=headers).status_code == 409


def test_login_takes_two_steps_and_the_token_says_otp(client, person):
    user, tokens = person
    secret, _ = enrol(client, tokens)
    mfa_token = first_step(client, user["email"])
    answer = second_step(client, mfa_token, code=code_at(secret, 1))
    assert answer.status_code == 200
    claims = jwt.decode(answer.json["access_token"], options={"verify_signature": False})
    assert claims["amr"] == ["pwd", "otp"]
    # A refresh keeps what the login proved.
    refreshed = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": answer.json["refresh_token"]}
    )
    amr = jwt.decode(refreshed.json["access_token"], options={"verify_signature": False})["amr"]
    assert amr == ["pwd", "otp"]


def test_a_used_code_is_refused_again_for_its_whole_window(client, person):
    user, tokens = person
    secret, _ = enrol(client, tokens)  # spends the current step's code
    replay = second_step(client, first_step(client, user["email"]), code=code_at(secret))
    assert replay.status_code == 401 and replay.json["message"] == "Wrong code"
    mfa_token = first_step(client, user["email"])
    assert second_step(client, mfa_token, code=code_at(secret, 1)).status_code == 200
    again = second_step(client, first_step(client, user["email"]), code=code_at(secret, 1))
    assert again.status_code == 401


def test_a_code_one_step_off_is_accepted(client, person):
    user, tokens = person
    secret, _ = enrol(client, tokens, confirm_offset=-1)  # a clock 30 s behind
    answer = second_step(client, first_step(client, user["email"]), code=code_at(secret, 1))
    assert answer.status_code == 200  # and one 30 s ahead


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-3, False), (-2, False), (-1, True), (0, True), (1, True), (2, False), (3, False)],
)
def test_only_codes_within_one_step_of_now_are_accepted(offset, accepted):
    secret = pyotp.random_base32()
    now = utcnow()
    code = pyotp.TOTP(secret).at(now + timedelta(seconds=30 * offset))
    assert (mfa._accepted_step(secret, code, None, now) is not None) is accepted


@pytest.mark.parametrize("offset", [-3, 3])
def test_a_code_three_steps_off_is_refused(client, person, offset):
    user, tokens = person
    secret, _ = enrol(client, tokens, confirm_offset=-1)
    answer = second_step(client, first_step(client, user["email"]), code=code_at(secret, offset))
    assert answer.status_code == 401


def test_a_recovery_code_works_once(client, person):
    user, tokens = person
    _, codes = enrol(client, tokens)
    first = second_step(client, first_step(client, user["email"]), recovery_code=codes[0])
    assert first.status_code == 200
    amr = jwt.decode(first.json["access_token"], options={"verify_signature": False})["amr"]
    assert amr == ["pwd", "otp"]
    again = second_step(client, first_step(client, user["email"]), recovery_code=codes[0])
    assert again.status_code == 401
    # Spaces, dashes and case do not matter.
    loose = codes[1].upper().replace("-", " ")
    assert (
        second_step(client, first_step(client, user["email"]), recovery_code=loose).status_code
        == 200
    )


def test_five_wrong_codes_kill_the_mfa_token(client, person):
    user, tokens = person
    secret, _ = enrol(client, tokens)
    mfa_token = first_step(client, user["email"])
    for _ in range(5):
        assert second_step(client, mfa_token, code="000000").status_code == 401
    dead = second_step(client, mfa_token, code=code_at(secret, 1))
    assert dead.status_code == 401
    assert dead.json["message"] == "Invalid or expired mfa_token"


def test_an_mfa_token_works_once_and_not_after_five_minutes(app, client, person):
    user, tokens = person
    secret, codes = enrol(client, tokens)
    mfa_token = first_step(client, user["email"])
    assert second_step(client, mfa_token, code=code_at(secret, 1)).status_code == 200
    assert second_step(client, mfa_token, recovery_code=codes[0]).status_code == 401
    stale = first_step(client, user["email"])
    session = db(app)
    for challenge in session.scalars(select(MfaChallenge)):
        challenge.expires_at -= timedelta(minutes=5)
    session.commit()
    session.close()
    assert second_step(client, stale, recovery_code=codes[0]).status_code == 401


def test_an_mfa_token_dies_when_the_password_changes(app, client, person):
    user, tokens = person
    _, codes = enrol(client, tokens)
    mfa_token = first_step(client, user["email"])
    session = db(app)
    session.execute(update(User).values(password_hash="$2b$04$" + "x" * 53))
    session.commit()
    session.close()
    assert second_step(client, mfa_token, recovery_code=codes[0]).status_code == 401


def test_wrong_codes_count_as_failed_logins_and_a_new_login_does_not_undo_them(make_app):
    app = make_app(LOGIN_MAX_FAILURES=3)
    client = app.test_client()
    user, tokens = Accounts(client).register_and_login("ada")
    enrol(client, tokens)
    mfa_token = first_step(client, user["email"])
    assert [second_step(client, mfa_token, code="000000").status_code for _ in range(2)] == [
        401,
        401,
    ]
    # The right password again: its own attempt is taken back, the wrong codes stay.
    fresh = first_step(client, user["email"])
    assert second_step(client, fresh, code="000000").status_code == 401
    throttled = client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    assert throttled.status_code == 429 and "Retry-After" in throttled.headers


def test_a_malformed_second_step_is_422(client):
    both = {"mfa_token": "t", "code": "123456", "recovery_code": "abcde-fghjk"}
    assert client.post(LOGIN_MFA, json=both).status_code == 422
    assert client.post(LOGIN_MFA, json={"mfa_token": "t"}).status_code == 422
    assert client.post(LOGIN_MFA, json={"mfa_token": "t", "code": "12345a"}).status_code == 422
    assert client.post(LOGIN_MFA, json={"mfa_token": "nope", "code": "123456"}).status_code == 401


def test_turning_mfa_off_needs_the_password_and_a_code_and_ends_other_sessions(
    client, accounts, person
):
    user, tokens = person
    secret, codes = enrol(client, tokens)
    other = second_step(client, first_step(client, user["email"]), code=code_at(secret, 1)).json
    headers = bearer(tokens["access_token"])
    wrong_password = client.delete(
        TOTP, json={"password": "nope-nope", "code": codes[0]}, headers=headers
    )
    assert wrong_password.status_code == 401
    wrong_code = client.delete(TOTP, json={"password": PASSWORD, "code": "000000"}, headers=headers)
    assert wrong_code.status_code == 401 and wrong_code.json["message"] == "Wrong code"
    off = client.delete(TOTP, json={"password": PASSWORD, "code": codes[0]}, headers=headers)
    assert off.status_code == 204
    assert client.get("/api/v1/auth/me", headers=headers).json["mfa_enabled"] is False
    assert client.get("/api/v1/auth/me", headers=bearer(other["access_token"])).status_code == 401
    assert (
        client.post(
            "/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}
        ).status_code
        == 401
    )
    assert "access_token" in accounts.login(user["email"])  # one step again
    again = client.delete(TOTP, json={"password": PASSWORD, "code": codes[1]}, headers=headers)
    assert again.status_code == 409


def test_secrets_and_codes_are_not_kept_readable(app, client, person):
    _, tokens = person
    secret, codes = enrol(client, tokens)
    session = db(app)
    (credential,) = session.scalars(select(TotpCredential))
    stored_codes = list(session.scalars(select(RecoveryCode.code_hash)))
    session.close()
    assert secret not in credential.secret
    assert len(stored_codes) == 10
    assert not set(codes) & set(stored_codes)
    assert not any(code.replace("-", "") in h for code in codes for h in stored_codes)


def test_a_secret_sealed_for_one_user_does_not_open_for_another(app, client, accounts):
    _, ada = accounts.register_and_login("ada")
    bob_user, bob = accounts.register_and_login("bob")
    enrol(client, ada)
    client.post(TOTP, json={"password": PASSWORD}, headers=bearer(bob["access_token"]))
    session = db(app)
    ada_cred, bob_cred = session.scalars(select(TotpCredential).order_by(TotpCredential.created_at))
    bob_cred.secret = ada_cred.secret  # someone with the database swaps them
    session.commit()
    session.close()
    keys = app.extensions["mfa_keys"]
    with pytest.raises(ValueError, match="another user"):
        keys.open(bob_user["id"], ada_cred.secret)


def test_password_change_and_deletion_keep_working_with_mfa_on(client, person):
    user, tokens = person
    secret, _ = enrol(client, tokens)
    changed = client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "Second-Horse-Battery-8"},
        headers=bearer(tokens["access_token"]),
    )
    assert changed.status_code == 200
    mfa_token = first_step(client, user["email"], "Second-Horse-Battery-8")
    pair = second_step(client, mfa_token, code=code_at(secret, 1)).json
    deleted = client.delete(
        "/api/v1/auth/me",
        json={"password": "Second-Horse-Battery-8"},
        headers=bearer(pair["access_token"]),
    )
    assert deleted.status_code == 204


def test_a_password_reset_of_an_mfa_account_asks_for_the_second_factor(app, client, person):
    from auth_app.tests.conftest import mailbox, mailed_token

    user, tokens = person
    secret, _ = enrol(client, tokens)
    client.post("/api/v1/auth/password/forgot", json={"email": user["email"]})
    (mail,) = mailbox(app, kind="reset_password")
    answer = client.post(
        "/api/v1/auth/password/reset",
        json={"token": mailed_token(mail), "new_password": "Reset-Horse-Battery-3"},
    )
    assert answer.status_code == 200
    assert answer.json["mfa_required"] is True and "access_token" not in answer.json
    pair = second_step(client, answer.json["mfa_token"], code=code_at(secret, 1))
    assert pair.status_code == 200
