"""POST /api/v1/auth/introspect (RFC 7662): only clients of INTROSPECTION_CLIENTS may ask."""

from __future__ import annotations

import hmac

import pytest
from werkzeug.datastructures import Authorization

from auth_app.config import load_settings
from auth_app.introspection import IntrospectionClients
from auth_app.tests.conftest import INTROSPECTION_CLIENT, basic, bearer, introspect
from common.config import ConfigError

URL = "/api/v1/auth/introspect"
CLIENT_ID, SECRET = INTROSPECTION_CLIENT


def assert_client_refused(response) -> None:
    """401 with a Basic challenge and the usual error body, and no claim of any token."""
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="introspection", charset="UTF-8"'
    assert response.json["message"] == "Client authentication required (HTTP Basic)"
    assert "active" not in response.json


def test_without_credentials_nobody_learns_anything(client, accounts):
    _, tokens = accounts.register_and_login()
    assert_client_refused(client.post(URL, json={"token": tokens["access_token"]}))
    # Credentials are checked before the body: no validation error either.
    assert_client_refused(client.post(URL, json={}))


def test_a_users_own_bearer_token_is_no_client_credential(client, accounts):
    _, tokens = accounts.register_and_login()
    answer = client.post(
        URL, json={"token": tokens["access_token"]}, headers=bearer(tokens["access_token"])
    )
    assert_client_refused(answer)


@pytest.mark.parametrize(
    "credentials",
    [
        (CLIENT_ID, SECRET + "x"),
        (CLIENT_ID, SECRET[:-1]),
        (CLIENT_ID, ""),
        (CLIENT_ID.upper(), SECRET),
        ("someone-else", SECRET),
        ("", ""),
    ],
    ids=["longer", "shorter", "empty-secret", "id-case", "unknown-client", "empty"],
)
def test_a_wrong_secret_or_an_unknown_client_is_refused(client, accounts, credentials):
    _, tokens = accounts.register_and_login()
    assert_client_refused(introspect(client, tokens["access_token"], credentials))


@pytest.mark.parametrize(
    "header", ["Basic", "Basic !!!not-base64!!!", "Basic cmVzb3VyY2Utc2VydmVy", "Basic /w=="]
)
def test_malformed_basic_credentials_are_refused(client, header):
    assert_client_refused(client.post(URL, json={"token": "x"}, headers={"Authorization": header}))


def test_the_right_client_learns_a_live_tokens_claims_as_a_bearer_token(client, accounts):
    user, tokens = accounts.register_and_login()
    answer = introspect(client, tokens["access_token"])
    assert answer.status_code == 200
    body = answer.json
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert (body["sub"], body["username"]) == (user["id"], user["username"])
    assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 20000, "\u00e9\u00e9"])
def test_anything_else_is_inactive(client, token):
    answer = introspect(client, token)
    assert answer.status_code == 200
    assert answer.json == {"active": False}


def test_refresh_and_revoked_tokens_are_inactive(client, accounts):
    _, tokens = accounts.register_and_login()
    assert introspect(client, tokens["refresh_token"]).json == {"active": False}
    client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert introspect(client, tokens["access_token"]).json == {"active": False}


def test_every_configured_client_may_ask_and_a_secret_may_hold_colons(make_app):
    clients = load_settings(
        environ={"APP_ENV": "development", "INTROSPECTION_CLIENTS": "gateway:g-secret, b:s:e:c"}
    ).introspection_clients
    assert clients == (("gateway", "g-secret"), ("b", "s:e:c"))
    client = make_app(INTROSPECTION_CLIENTS=clients).test_client()
    for credentials in clients:
        answer = introspect(client, "garbage", credentials)
        assert answer.status_code == 200, credentials
    assert_client_refused(introspect(client, "garbage", ("gateway", "s:e:c")))


def test_with_no_client_configured_introspection_is_closed(make_app):
    client = make_app(INTROSPECTION_CLIENTS=()).test_client()
    assert_client_refused(introspect(client, "garbage"))
    assert_client_refused(introspect(client, "garbage", ("", "")))


def test_secrets_are_compared_in_constant_time_for_known_and_unknown_clients(monkeypatch):
    compared = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    clients = IntrospectionClients([(CLIENT_ID, SECRET)])
    for username, password in [
        (CLIENT_ID, SECRET),
        (CLIENT_ID, "wrong"),
        ("unknown", SECRET),
        (CLIENT_ID, "a much longer wrong secret " * 10),
    ]:
        header = basic(username, password)["Authorization"]
        clients.authenticate(Authorization.from_header(header))
    # One comparison each, always of two 32-byte digests: neither the id nor
    # the secret's length changes the work done.
    assert compared == [(32, 32)] * 4


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gateway", "INTROSPECTION_CLIENTS entry 1 is not id:secret (both non-empty)"),
        ("a:x,b:", "INTROSPECTION_CLIENTS entry 2 is not id:secret (both non-empty)"),
        (":hunter2", "INTROSPECTION_CLIENTS entry 1 is not id:secret (both non-empty)"),
        ("a:x,a:y", "INTROSPECTION_CLIENTS names client 'a' twice"),
    ],
)
def test_a_malformed_client_list_stops_the_process_without_showing_secrets(value, message):
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"INTROSPECTION_CLIENTS": value})
    assert str(error.value) == message


def test_the_document_says_introspection_needs_basic_client_credentials(client):
    spec = client.get("/openapi.json").json
    operation = spec["paths"]["/api/v1/auth/introspect"]["post"]
    assert operation["security"] == [{"introspectionClient": []}]
    assert "401" in operation["responses"]
    scheme = spec["components"]["securitySchemes"]["introspectionClient"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "basic")
