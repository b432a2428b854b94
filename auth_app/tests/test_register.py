"""Registration and the password policy."""

from __future__ import annotations

import bcrypt
from sqlalchemy import select

from auth_app.models import User
from auth_app.tests.conftest import PASSWORD

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


def register(client, password=PASSWORD, name="alice", email=None):
    return client.post(
        REGISTER,
        json={"email": email or f"{name}@example.com", "username": name, "password": password},
    )


def stored_user(app, email):
    session = app.extensions["database"].sessionmaker()
    try:
        return session.scalars(select(User).where(User.email == email)).one()
    finally:
        session.close()


def test_register_returns_the_user_with_a_lower_cased_email(client):
    response = register(client, email="Alice@Example.COM", name="Alice")
    assert response.status_code == 201
    body = response.json
    assert set(body) == {
        "id", "email", "username", "roles", "is_active", "email_verified", "mfa_enabled",
        "created_at",
    }  # fmt: skip
    assert body["email_verified"] is False
    assert body["mfa_enabled"] is False
    assert body["email"] == "alice@example.com"
    assert body["username"] == "Alice"
    assert body["roles"] == ["user"]
    assert body["is_active"] is True
    assert "password" not in response.get_data(as_text=True)


def test_email_taken_in_another_case_is_409(client):
    assert register(client, email="bob@example.com", name="bob").status_code == 201
    response = register(client, email="BOB@example.com", name="bobby")
    assert response.status_code == 409
    assert "email" in response.json["message"]


def test_username_taken_in_another_case_is_409(client):
    assert register(client, name="Carol").status_code == 201
    response = register(client, name="cAROL", email="other@example.com")
    assert response.status_code == 409
    assert "username" in response.json["message"]


def test_invalid_fields_are_422_with_field_errors(client):
    response = client.post(REGISTER, json={"email": "nope", "username": "a!", "password": 5})
    assert response.status_code == 422
    errors = response.json["errors"]["json"]
    assert {"email", "username", "password"} <= set(errors)


def test_unknown_fields_and_non_json_bodies_are_refused(client):
    body = {
        "email": "x@example.com",
        "username": "xavier",
        "password": PASSWORD,
        "roles": ["admin"],
    }
    assert client.post(REGISTER, json=body).status_code == 422
    response = client.post(REGISTER, data="not json", content_type="application/json")
    assert response.status_code in (400, 422)
    assert "message" in response.json


def test_seven_character_password_is_refused(client):
    response = register(client, password="xK9#qL2")
    assert response.status_code == 422
    assert "at least 8" in str(response.json["errors"]["json"]["password"])


def test_sixty_four_character_password_is_accepted_and_usable(client):
    password = "Zq7!" * 16
    assert register(client, password=password).status_code == 201
    login = client.post(LOGIN, json={"email": "alice@example.com", "password": password})
    assert login.status_code == 200


def test_every_character_counts_past_72_bytes(client):
    assert register(client, password="A" * 72 + "x").status_code == 201
    wrong = client.post(LOGIN, json={"email": "alice@example.com", "password": "A" * 72 + "y"})
    assert wrong.status_code == 401
    right = client.post(LOGIN, json={"email": "alice@example.com", "password": "A" * 72 + "x"})
    assert right.status_code == 200


def test_a_thousand_multibyte_characters_work(client):
    password = "пароль—密码🔑" * 100
    assert len(password) == 1000
    assert register(client, password=password).status_code == 201
    login = client.post(LOGIN, json={"email": "alice@example.com", "password": password})
    assert login.status_code == 200


def test_passwords_longer_than_1024_characters_are_refused(client):
    response = register(client, password="x" * 1025)
    assert response.status_code == 422


def test_lone_surrogate_password_is_refused_not_crashed(client):
    body = '{"email": "s@example.com", "username": "surr", "password": "abcdefgh\\ud800ij"}'
    response = client.post(REGISTER, data=body, content_type="application/json")
    assert response.status_code == 422


def test_common_passwords_are_refused(client):
    for password in ("password", "PASSWORD1", "qwertyuiop", "password2024!"):
        response = register(client, password=password)
        assert response.status_code == 422, password
        assert "common" in str(response.json["errors"]["json"]["password"])


def test_password_equal_to_email_local_part_or_username_is_refused(client):
    for password in ("dorothy.gale@example.com", "DOROTHY.GALE", "Dorothy.Gale"):
        response = register(client, name="dorothy.gale", password=password)
        assert response.status_code == 422, password
        assert "email address or username" in str(response.json["errors"]["json"]["password"])


def test_minimum_length_is_configurable(make_app):
    client = make_app(PASSWORD_MIN_LENGTH=12).test_client()
    assert register(client, password="xK9#qL2wZ!v").status_code == 422
    assert register(client, password="xK9#qL2wZ!vB").status_code == 201


def test_stored_hash_is_bcrypt_at_the_configured_cost(app, client):
    assert register(client).status_code == 201
    hashed = stored_user(app, "alice@example.com").password_hash
    assert hashed.startswith("$2b$04$")
    # The stored hash is of the peppered digest, not of the password itself.
    assert not bcrypt.checkpw(PASSWORD.encode(), hashed.encode())


def test_login_rehashes_when_the_cost_was_raised(make_app):
    weak = make_app(BCRYPT_ROUNDS=4)
    assert register(weak.test_client()).status_code == 201
    # The same database under a higher configured cost.
    strong = make_app(BCRYPT_ROUNDS=5)
    strong.extensions["database"] = weak.extensions["database"]
    client = strong.test_client()
    assert (
        client.post(LOGIN, json={"email": "alice@example.com", "password": PASSWORD}).status_code
        == 200
    )
    assert stored_user(strong, "alice@example.com").password_hash.startswith("$2b$05$")
    assert (
        client.post(LOGIN, json={"email": "alice@example.com", "password": PASSWORD}).status_code
        == 200
    )
