"""The service around the endpoints: config, errors, request ids, health, JWKS."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from auth_app import create_app
from auth_app.tests.conftest import PASSWORD, bearer, introspect
from common.keys import thumbprint
from tests.support.docs_page import check_docs_page

CLOSED_REDIS = "redis://127.0.0.1:1/0"


def test_bad_bcrypt_rounds_stops_create_app_with_one_line(monkeypatch, capsys, key_paths):
    monkeypatch.setenv("BCRYPT_ROUNDS", "twelve")
    with pytest.raises(SystemExit) as exit_info:
        create_app({"DATABASE_URL": "sqlite://", "PRIVATE_KEY_PATH": key_paths[0]})
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert err == "configuration error: BCRYPT_ROUNDS must be an integer, got 'twelve'\n"


def test_too_few_bcrypt_rounds_are_refused(monkeypatch, capsys):
    monkeypatch.setenv("BCRYPT_ROUNDS", "3")
    with pytest.raises(SystemExit):
        create_app({"DATABASE_URL": "sqlite://"})
    assert "BCRYPT_ROUNDS must be at least 4" in capsys.readouterr().err


def test_missing_key_files_stop_a_web_process(make_app, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_app(PRIVATE_KEY_PATH=tmp_path / "none.pem", PUBLIC_KEY_PATH=tmp_path / "no.pem")
    err = capsys.readouterr().err.strip()
    assert err.startswith("configuration error: PRIVATE_KEY_PATH: no such file")
    assert "\n" not in err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALGORITHM", "HS256"),
        ("RATELIMIT_AUTH", "lots"),
        ("LOG_FORMAT", "xml"),
        ("TRUSTED_PROXY_COUNT", "-1"),
    ],
)
def test_other_bad_settings_name_their_variable(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        create_app({"DATABASE_URL": "sqlite://"})
    assert name in capsys.readouterr().err


def test_keys_from_pem_variables(make_app, key_paths):
    app = make_app(
        PRIVATE_KEY_PATH=None,
        PUBLIC_KEY_PATH=None,
        JWT_PRIVATE_KEY=key_paths[0].read_text(),
    )
    client = app.test_client()
    body = {"email": "pem@example.com", "username": "pem", "password": PASSWORD}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    login = client.post(
        "/api/v1/auth/login", json={"email": "pem@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200


def test_body_over_64_kib_is_413_with_a_message(client):
    response = client.post(
        "/api/v1/auth/register",
        data=b'{"email": "' + b"a" * (65 * 1024) + b'"}',
        content_type="application/json",
    )
    assert response.status_code == 413
    assert response.json["message"]


def test_404_and_405_bodies_have_a_message(client):
    missing = client.get("/api/v1/auth/nothing-here")
    assert missing.status_code == 404
    assert missing.json["message"]
    wrong_method = client.get("/api/v1/auth/login")
    assert wrong_method.status_code == 405
    assert wrong_method.json["message"]


def test_405_says_which_methods_the_path_allows(client):
    """RFC 9110: a 405 carries ``Allow``, in the usual error body."""
    for method, path, allowed in (
        ("GET", "/api/v1/auth/login", {"POST", "OPTIONS"}),
        ("PUT", "/api/v1/auth/me", {"GET", "HEAD", "DELETE", "OPTIONS"}),
        ("POST", "/.well-known/jwks.json", {"GET", "HEAD", "OPTIONS"}),
        ("DELETE", "/health", {"GET", "HEAD", "OPTIONS"}),
    ):
        response = client.open(path, method=method)
        assert response.status_code == 405, (method, path)
        assert set(response.headers["Allow"].split(", ")) == allowed, (method, path)
        assert response.json["code"] == 405
        assert response.json["message"]


def test_request_id_is_echoed_or_replaced(client):
    assert (
        client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    for bad in ("x" * 129, "bad\x01id"):
        echoed = client.get("/health", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert echoed != bad
        assert echoed
    assert client.get("/health").headers["X-Request-ID"]


def test_health_and_readiness(client):
    assert client.get("/health").json == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_openapi_document_and_offline_docs(client):
    spec = client.get("/openapi.json").json
    assert "/api/v1/auth/login" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_the_document_states_the_body_rules_the_service_applies(make_app):
    """Exactly one of email or username at login; the configured minimum for a new password."""
    client = make_app(PASSWORD_MIN_LENGTH=12).test_client()
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    assert schemas["Login"]["oneOf"] == [{"required": ["email"]}, {"required": ["username"]}]
    assert schemas["Register"]["properties"]["password"]["minLength"] == 12
    assert schemas["PasswordChange"]["properties"]["new_password"]["minLength"] == 12
    for name in ("Register", "Login", "Refresh", "Logout", "PasswordChange", "DeleteAccount"):
        assert schemas[name]["additionalProperties"] is False, name
    short = {"email": "short@example.com", "username": "short", "password": "x" * 11}
    assert client.post("/api/v1/auth/register", json=short).status_code == 422
    both = {"email": "a@example.com", "username": "a_user", "password": PASSWORD}
    assert client.post("/api/v1/auth/login", json=both).status_code == 422


def test_docs_load_only_their_own_assets_under_a_same_origin_policy(client):
    loaded = check_docs_page(client)
    assert "/docs/assets/swagger-ui-bundle.js" in loaded


def test_redis_down_is_503_never_500(make_app, private_key):
    app = make_app(REDIS_URL=CLOSED_REDIS, RATELIMIT_ENABLED=True)
    client = app.test_client()
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "http://127.0.0.1:5001",
            "aud": "user-service",
            "sub": str(uuid.uuid4()),
            "exp": now + 60,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "roles": ["user"],
        },
        private_key,
        algorithm="RS256",
        headers={"typ": "at+jwt", "kid": thumbprint(private_key.public_key())},
    )
    me = client.get("/api/v1/auth/me", headers=bearer(token))
    assert me.status_code == 503
    assert "unavailable" in me.json["message"]
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json["checks"]["redis"] == "unavailable"
    assert ready.json["checks"]["database"] == "ok"
    login = client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x"})
    assert login.status_code == 503
    introspected = introspect(client, token)
    assert introspected.status_code == 503


def test_database_down_is_503(make_app):
    app = make_app(
        DATABASE_URL="postgresql+psycopg2://nobody@127.0.0.1:1/none", CREATE_SCHEMA=False
    )
    response = app.test_client().post(
        "/api/v1/auth/login", json={"email": "a@example.com", "password": "whatever"}
    )
    assert response.status_code == 503
    assert response.json["message"] == "Database unavailable"
    assert app.test_client().get("/health/ready").json["checks"]["database"] == "unavailable"


def test_jwks_publishes_the_signing_key_and_is_cacheable(client, private_key):
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert "max-age=300" in response.headers["Cache-Control"]
    assert "public" in response.headers["Cache-Control"]
    (key,) = response.json["keys"]
    assert key["kid"] == thumbprint(private_key.public_key())
    assert key["alg"] == "RS256"
    assert key["use"] == "sig"
    assert key["kty"] == "RSA"
    assert "d" not in key


def test_issued_access_token_has_the_rfc_9068_shape(client, accounts, private_key):
    user, tokens = accounts.register_and_login()
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": thumbprint(private_key.public_key())}
    claims = jwt.decode(
        tokens["access_token"],
        private_key.public_key(),
        algorithms=["RS256"],
        audience="user-service",
    )
    assert set(claims) == {
        "iss", "aud", "sub", "client_id", "exp", "iat", "jti", "sid", "roles", "email", "username",
        "email_verified", "amr",
    }  # fmt: skip
    assert claims["email_verified"] is False
    assert claims["amr"] == ["pwd"]
    assert claims["sub"] == user["id"]
    assert claims["client_id"] == "auth_app"
    assert claims["exp"] - claims["iat"] == 900
