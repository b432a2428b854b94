"""What a hostile client sends the auth service, on PostgreSQL: always a 4xx, never a 500.

Racing registrations, strings PostgreSQL cannot store, JSON Python cannot load,
usernames with a trailing newline and odd headers, each sent for real.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import delete, func, select

from auth_app import create_app
from auth_app.models import Mail, OutboxEvent, User
from auth_app.tests.conftest import (
    INTROSPECTION_CLIENT,
    PASSWORD,
    Accounts,
    app_settings,
    basic,
    bearer,
)
from common.fields import TEXT_ERROR
from tests.support.hostile_requests import (
    HUGE,
    NUL,
    ODD_AUTHORIZATION,
    ODD_REQUEST_IDS,
    SURROGATE,
    UNLOADABLE,
    json_operations,
    request_strings,
    send_json,
    strings_that_may_hold_nul,
)
from tests.support.servers import fresh_postgres_database

REGISTER = "/api/v1/auth/register"


@pytest.fixture(scope="module")
def pg_url():
    with fresh_postgres_database("auth_hostile") as url:
        yield url


@pytest.fixture(scope="module")
def app(key_paths, redis_prefix, pg_url):
    """One app for the module: nothing here may change what the next test sees."""
    app = create_app(
        app_settings(key_paths, redis_prefix, DATABASE_URL=pg_url, LOG_LEVEL="critical")
    )
    yield app
    app.extensions["database"].engine.dispose()


@pytest.fixture(scope="module")
def tokens(app) -> dict:
    """A token pair of a user every test may use, and none may change."""
    return Accounts(app.test_client()).register_and_login()[1]


def count(app, *where) -> int:
    session = app.extensions["database"].sessionmaker()
    try:
        return session.scalar(select(func.count()).select_from(User).where(*where)) or 0
    finally:
        session.close()


# Racing registrations ------------------------------------------------------------------


def race(app, bodies: list[dict]) -> list:
    """POST each body from its own thread at the same moment; the answers."""
    barrier = threading.Barrier(len(bodies))
    answers: list = [None] * len(bodies)

    def send(index: int, body: dict) -> None:
        client = app.test_client()
        barrier.wait()
        answers[index] = client.post(REGISTER, json=body)

    threads = [threading.Thread(target=send, args=item) for item in enumerate(bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def registrations(name: str, shared: str) -> list[dict]:
    """Eight registrations that share ``name`` as their email or as their username."""
    bodies = []
    for i in range(8):
        own = f"{name}{i}"
        if shared == "email":
            bodies.append({"email": f"{name}@example.com", "username": own})
        else:  # the same username in another case is the same username
            bodies.append(
                {"email": f"{own}@example.com", "username": name.upper() if i % 2 else name}
            )
    return [{**body, "password": PASSWORD} for body in bodies]


@pytest.mark.parametrize("shared", ["email", "username"])
def test_eight_parallel_registrations_of_one_name_are_one_201_and_seven_409s_20_times(app, shared):
    for _ in range(20):
        name = f"r{uuid.uuid4().hex[:10]}"
        answers = race(app, registrations(name, shared))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201] + [409] * 7, [answer.get_json() for answer in answers]
        for answer in answers:
            if answer.status_code == 409:
                assert answer.get_json()["message"] == f"That {shared} is already registered"
        # Nothing half-written: one account, one `created` event and one verification
        # mail for it; the registrations that rolled back left no mail behind.
        session = app.extensions["database"].sessionmaker()
        try:
            users = session.scalars(select(User).where(User.email.contains(name))).all()
            events = session.scalar(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.body.contains(name))
            )
            mails = session.scalars(select(Mail.recipient).where(Mail.recipient.contains(name)))
            mailed = list(mails)
        finally:
            session.close()
        assert len(users) == 1
        assert events == 1
        assert mailed == [users[0].email]


# Strings PostgreSQL cannot store -----------------------------------------------------

VALID = {
    "register": {"email": "nul@example.com", "username": "nulname", "password": PASSWORD},
    "login_email": {"email": "nul@example.com", "password": PASSWORD},
    "login_username": {"username": "nulname", "password": PASSWORD},
}

# (path, body, field, needs a token): a field of each body that gets the bad character.
UNAUTHENTICATED = [
    (REGISTER, VALID["register"], "email"),
    (REGISTER, VALID["register"], "username"),
    (REGISTER, VALID["register"], "password"),
    ("/api/v1/auth/login", VALID["login_email"], "email"),
    ("/api/v1/auth/login", VALID["login_email"], "password"),
    ("/api/v1/auth/login", VALID["login_username"], "username"),
    ("/api/v1/auth/refresh", {"refresh_token": "x" * 43}, "refresh_token"),
    ("/api/v1/auth/introspect", {"token": "a.b.c"}, "token"),
    ("/api/v1/auth/introspect", {"token": "a.b.c", "token_type_hint": "x"}, "token_type_hint"),
]
AUTHENTICATED = [
    ("post", "/api/v1/auth/logout", {"refresh_token": "x" * 43}, "refresh_token"),
    (
        "post",
        "/api/v1/auth/password",
        {"current_password": PASSWORD, "new_password": PASSWORD + "!"},
        "current_password",
    ),
    (
        "post",
        "/api/v1/auth/password",
        {"current_password": PASSWORD, "new_password": PASSWORD + "!"},
        "new_password",
    ),
    ("delete", "/api/v1/auth/me", {"password": PASSWORD}, "password"),
]


def caller(path: str) -> dict:
    """The credentials an operation wants before it reads a body (introspection's client)."""
    return basic(*INTROSPECTION_CLIENT) if path.endswith("/introspect") else {}


def with_bad_character(body: dict, field: str, character: str) -> dict:
    value = body[field]
    # In the middle of a value that is valid otherwise (the email's local part).
    at = value.index("@") if "@" in value else len(value) // 2
    return {**body, field: value[:at] + character + value[at:]}


def assert_refused_as_unstorable(response, field: str) -> None:
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["message"]
    assert TEXT_ERROR in body["errors"]["json"][field]


@pytest.mark.parametrize("character", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize(("path", "body", "field"), UNAUTHENTICATED)
def test_a_nul_or_lone_surrogate_in_any_public_field_is_422(client, path, body, field, character):
    response = send_json(
        client, "post", path, with_bad_character(body, field, character), headers=caller(path)
    )
    assert_refused_as_unstorable(response, field)


@pytest.mark.parametrize("character", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize(("method", "path", "body", "field"), AUTHENTICATED)
def test_a_nul_or_lone_surrogate_in_any_signed_in_field_is_422_and_changes_nothing(
    app, client, tokens, method, path, body, field, character
):
    headers = bearer(tokens["access_token"])
    bad = with_bad_character(body, field, character)
    response = send_json(client, method, path, bad, headers=headers)
    assert_refused_as_unstorable(response, field)
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200


def test_no_nul_or_surrogate_account_exists_after_the_attempts(app, client):
    for character in (NUL, SURROGATE):
        for field in ("email", "username", "password"):
            bad = with_bad_character(VALID["register"], field, character)
            assert send_json(client, "post", REGISTER, bad).status_code == 422
    assert count(app, User.username_key == "nulname") == 0


def test_every_string_a_client_sends_the_auth_service_refuses_nul(client):
    # One shared field (common.fields.Text) refuses what PostgreSQL cannot store, and
    # says so in the document: no schema may forget it.
    document = client.get("/openapi.json").get_json()
    assert len(list(request_strings(document))) >= 12
    assert strings_that_may_hold_nul(document) == []


# JSON that Python cannot load ----------------------------------------------------------


@pytest.mark.parametrize("body", list(UNLOADABLE.values()), ids=list(UNLOADABLE))
def test_json_python_cannot_load_is_400_at_every_json_endpoint(app, client, tokens, body):
    operations = json_operations(client.get("/openapi.json").get_json())
    assert len(operations) >= 7
    headers = bearer(tokens["access_token"])
    for method, path in operations:
        response = send_json(client, method, path, body, headers=caller(path) or headers)
        assert response.status_code == 400, (method, path, response.get_json())
        answer = response.get_json()
        assert answer["message"].startswith("Invalid JSON body: ")
        assert answer["errors"]["json"]
    # The signed-in user is still there: nothing ran.
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200


def test_plain_invalid_json_says_so(client):
    response = send_json(client, "post", REGISTER, "{not json")
    assert response.status_code == 400
    assert response.get_json()["message"] == "Invalid JSON body: Not valid JSON."


def test_a_float_of_5000_digits_is_an_ordinary_validation_error(client):
    response = send_json(client, "post", REGISTER, '{"email": ' + HUGE + ".5}")
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]["email"]


# Usernames match their rule whole --------------------------------------------------------


def test_a_32_character_username_and_a_newline_is_422(app, client):
    body = {"email": "long@example.com", "username": "a" * 32 + "\n", "password": PASSWORD}
    response = client.post(REGISTER, json=body)
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]["username"]
    assert count(app, User.email == "long@example.com") == 0


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t"])
def test_a_username_with_trailing_whitespace_is_not_a_second_account(app, client, suffix):
    name = f"ada{uuid.uuid4().hex[:8]}"
    Accounts(client).register(name)
    body = {"email": f"{name}.2@example.com", "username": name + suffix, "password": PASSWORD}
    response = client.post(REGISTER, json=body)
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]["username"] == ["3-32 of A-Z a-z 0-9 _ . -"]
    assert count(app, User.username_key.like(f"{name}%")) == 1


def test_an_email_too_long_once_lower_cased_is_422(app, client):
    # "İ" lower-cases to two characters: 188 characters as sent, 368 as stored.
    email = "a@" + ".".join(["İ" * 60] * 3) + ".com"
    response = client.post(REGISTER, json={"email": email, "username": "ist", "password": PASSWORD})
    assert response.status_code == 422, response.get_json()
    assert "once lower-cased" in response.get_json()["errors"]["json"]["email"][0]
    assert count(app, User.username_key == "ist") == 0


# Odd headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", list(ODD_AUTHORIZATION.values()), ids=list(ODD_AUTHORIZATION))
def test_an_odd_authorization_header_is_401(client, value):
    response = client.get("/api/v1/auth/me", headers={"Authorization": value})
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("value", list(ODD_AUTHORIZATION.values()), ids=list(ODD_AUTHORIZATION))
def test_an_odd_token_at_introspection_is_inactive(client, value):
    token = value.removeprefix("Bearer").strip() or "x"
    response = client.post(
        "/api/v1/auth/introspect", json={"token": token}, headers=basic(*INTROSPECTION_CLIENT)
    )
    if "\x00" in token:
        assert response.status_code == 422
    else:
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"active": False}


@pytest.mark.parametrize("value", list(ODD_REQUEST_IDS.values()), ids=list(ODD_REQUEST_IDS))
def test_an_odd_request_id_is_replaced(client, value):
    # Straight into the WSGI environ: the test client refuses a newline in a header.
    response = client.get("/health", environ_overrides={"HTTP_X_REQUEST_ID": value})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] != value
    assert len(response.headers["X-Request-ID"]) == 32


def test_a_login_racing_the_deletion_of_its_account_is_401_never_500(app):
    user = Accounts(app.test_client()).register()
    engine = app.extensions["database"].engine
    answers: list = []
    with engine.connect() as deleting:
        transaction = deleting.begin()
        # The deletion holds the row, as DELETE /me or user.deleted does until its commit.
        deleting.execute(delete(User).where(User.id == user["id"]))
        login = threading.Thread(
            target=lambda: answers.append(
                app.test_client().post(
                    "/api/v1/auth/login", json={"email": user["email"], "password": PASSWORD}
                )
            )
        )
        login.start()
        login.join(timeout=1.0)  # the password checks out; the session waits for the row
        transaction.commit()
    login.join(timeout=10)
    (answer,) = answers
    assert answer.status_code == 401
    assert answer.get_json()["message"] == "Invalid credentials"
