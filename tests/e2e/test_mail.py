"""Account recovery by mail, end to end: the Procfile's processes, the mailer, a real SMTP server.

The system runs with ``EMAIL_VERIFICATION=required``. Every token is read
from a mail the SMTP server received, as a user reads it from their inbox; what
crosses to the user service travels as ``user.sync`` events.
"""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from sqlalchemy import create_engine, text

from tests.e2e.client import poll
from tests.e2e.conftest import FRONTEND_URL
from tests.e2e.test_story import API_AUTH, API_USERS, Story

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system_env() -> dict[str, str]:
    return {"EMAIL_VERIFICATION": "required"}


@pytest.fixture(scope="module")
def story(system):
    return Story(system)


@pytest.fixture(scope="module")
def links(smtp_server):
    """Every link and token the mails of this module carried, for the log grep."""
    return set()


def inbox(smtp_server, links, address: str, count: int = 1):
    """Wait for ``count`` mails to ``address``; remember their links."""
    mails = smtp_server.wait_for(count, timeout=30, address=address)
    for mail in mails:
        if "token=" in mail.text:
            links.update((mail.link, mail.token))
    return mails


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def verified_person(story, smtp_server, links, label: str) -> dict:
    """Register and follow the verification link, as a new user in required mode must."""
    person = story.register(label)
    (mail,) = inbox(smtp_server, links, person["email"])
    answer = story.auth("POST", f"{API_AUTH}/email/verify", json={"token": mail.token})
    assert answer.status == 200, answer.json
    return person


def test_registration_mails_a_link_and_login_waits_for_it(story, smtp_server, links):
    person = story.register("vera")
    refused = story.try_login(person)
    assert refused.status == 403
    assert "not verified" in refused.json["message"]

    (mail,) = inbox(smtp_server, links, person["email"])
    assert mail.message["Subject"] == "Verify your email address"
    assert mail.link.startswith(f"{FRONTEND_URL}/verify-email?token=")
    assert mail.html is not None and mail.token in mail.html

    verified = story.auth("POST", f"{API_AUTH}/email/verify", json={"token": mail.token})
    assert verified.status == 200 and verified.json["email_verified"] is True
    again = story.auth("POST", f"{API_AUTH}/email/verify", json={"token": mail.token})
    assert again.status == 400

    pair = story.login(person)
    assert claims(pair["access_token"])["email_verified"] is True
    profile = poll(
        lambda: story.user("GET", f"{API_USERS}/me", token=pair["access_token"]),
        lambda a: a.status == 200 and a.json["email_verified"] is True,
    )
    assert profile.json["email_verified"] is True


def test_a_password_reset_ends_every_earlier_session_at_both_services(story, smtp_server, links):
    person = verified_person(story, smtp_server, links, "rosa")
    first, second = story.login(person), story.login(person)
    for pair in (first, second):
        assert story.user("GET", f"{API_USERS}/me", token=pair["access_token"]).status == 200

    asked = story.auth("POST", f"{API_AUTH}/password/forgot", json={"email": person["email"]})
    assert asked.status == 202
    (mail,) = [m for m in inbox(smtp_server, links, person["email"], 2) if "reset" in m.link]
    new_password = f"Reset-Horse-{uuid.uuid4().hex[:10]}"
    story.secrets.add(new_password)
    reset = story.auth(
        "POST",
        f"{API_AUTH}/password/reset",
        json={"token": mail.token, "new_password": new_password},
    )
    assert reset.status == 200, reset.json
    fresh = reset.json
    story.secrets.update((fresh["access_token"], fresh["refresh_token"]))
    used_again = story.auth(
        "POST",
        f"{API_AUTH}/password/reset",
        json={"token": mail.token, "new_password": new_password + "x"},
    )
    assert used_again.status == 400

    for pair in (first, second):
        assert story.auth("GET", f"{API_AUTH}/me", token=pair["access_token"]).status == 401
        assert story.refresh(pair["refresh_token"]).status == 401
        refused = poll(
            lambda pair=pair: story.user("GET", f"{API_USERS}/me", token=pair["access_token"]),
            lambda a: a.status == 401,
        )
        assert refused.status == 401
    assert story.user("GET", f"{API_USERS}/me", token=fresh["access_token"]).status == 200
    assert story.try_login(person).status == 401  # the old password
    assert story.try_login({**person, "password": new_password}).status == 200


def test_an_unknown_address_gets_the_same_answer_and_no_mail(story, smtp_server, links):
    person = verified_person(story, smtp_server, links, "uma")
    stranger = f"nobody_{uuid.uuid4().hex[:8]}@example.com"
    known = story.auth("POST", f"{API_AUTH}/password/forgot", json={"email": person["email"]})
    unknown = story.auth("POST", f"{API_AUTH}/password/forgot", json={"email": stranger})
    assert (
        (known.status, known.json)
        == (unknown.status, unknown.json)
        == (
            202,
            {"message": "If that address has an account, a mail is on its way"},
        )
    )
    inbox(smtp_server, links, person["email"], 2)  # the reset mail came...
    time.sleep(1.0)
    assert smtp_server.to(stranger) == []  # ...and nothing went to the stranger


def test_an_email_change_is_confirmed_from_the_new_address_and_reaches_the_user_service(
    story, smtp_server, links
):
    person = verified_person(story, smtp_server, links, "ezra")
    pair = story.login(person)
    new_email = f"ezra_{uuid.uuid4().hex[:8]}@new.example"
    asked = story.auth(
        "POST",
        f"{API_AUTH}/email",
        json={"new_email": new_email, "password": person["password"]},
        token=pair["access_token"],
    )
    assert asked.status == 202
    (confirmation,) = inbox(smtp_server, links, new_email)
    assert confirmation.link.startswith(f"{FRONTEND_URL}/confirm-email?token=")
    notice = inbox(smtp_server, links, person["email"], 2)[-1]
    assert notice.message["Subject"] == "Your email address is being changed"
    assert new_email in notice.text and "token=" not in notice.text

    confirmed = story.auth("POST", f"{API_AUTH}/email/confirm", json={"token": confirmation.token})
    assert confirmed.status == 200
    assert (confirmed.json["email"], confirmed.json["email_verified"]) == (new_email, True)
    profile = poll(
        lambda: story.user("GET", f"{API_USERS}/me", token=pair["access_token"]),
        lambda a: a.status == 200 and a.json["email"] == new_email,
    )
    assert profile.json["email"] == new_email and profile.json["email_verified"] is True
    assert story.try_login(person).status == 401  # the old address no longer signs in
    assert story.try_login({**person, "email": new_email}).status == 200
    # The old address is free for someone else.
    taken_back = story.auth(
        "POST",
        f"{API_AUTH}/register",
        json={
            "email": person["email"],
            "username": f"x{uuid.uuid4().hex[:8]}",
            "password": "x" * 8 + "-Horse-1",
        },
    )
    assert taken_back.status == 201


def test_sent_mails_keep_no_link_and_no_log_line_holds_one(
    story, system, smtp_server, links, process_log
):
    # Some mail of the run was sent...
    assert len(links) >= 8
    engine = create_engine(system.env["AUTH_DATABASE_URL"], hide_parameters=True)
    try:
        with engine.connect() as connection:
            sent, with_body = connection.execute(
                text("SELECT count(*), count(text_body) FROM mails WHERE sent_at IS NOT NULL")
            ).one()
    finally:
        engine.dispose()
    assert sent >= 8 and with_body == 0
    # ... and neither its link nor its token appears in any process's output.
    lines = process_log.read_text().splitlines()
    leaks = [line for line in lines for secret in links if secret in line]
    assert leaks == [], leaks[:3]
    sent_lines = [line for line in lines if "mail sent" in line]
    assert len(sent_lines) >= sent
    print(f"\nmail log grep: {len(lines)} lines, {len(links)} links and tokens, none found")
