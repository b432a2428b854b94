"""Forged and malformed access tokens: each is refused with 401, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_app.tests.conftest import bearer
from common.keys import thumbprint

ME = "/api/v1/auth/me"
ISSUER = "http://127.0.0.1:5001"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value) -> str:
    return b64(json.dumps(value).encode())


@pytest.fixture
def victim(accounts):
    user, tokens = accounts.register_and_login()
    return user, tokens


@pytest.fixture
def forge(victim, private_key):
    """Sign claims like the service does, with changes: None drops a claim or header."""
    user, _ = victim
    kid = thumbprint(private_key.public_key())

    def make(claims=None, headers=None, key=private_key, algorithm="RS256"):
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": "user-service",
            "sub": user["id"],
            "client_id": "auth_app",
            "exp": now + 600,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "roles": ["user"],
            "email": user["email"],
            "username": user["username"],
        }
        header = {"typ": "at+jwt", "kid": kid}
        for target, changes in ((body, claims or {}), (header, headers or {})):
            for name, value in changes.items():
                if value is None:
                    target.pop(name, None)
                else:
                    target[name] = value
        return jwt.encode(body, key, algorithm=algorithm, headers=header)

    make.kid = kid
    return make


def assert_refused(client, token):
    response = client.get(ME, headers=bearer(token))
    assert response.status_code == 401, (response.status_code, response.json)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "message" in response.json


def test_a_correctly_forged_token_is_accepted(client, forge):
    # The control: every refusal below is due to its one change.
    assert client.get(ME, headers=bearer(forge())).status_code == 200


def test_missing_token_is_401_with_a_bearer_challenge(client):
    response = client.get(ME)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(ME, headers={"Authorization": "Basic abc"}).status_code == 401


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(client, forge, alg):
    header, payload, _ = forge().split(".")
    header = b64json({"alg": alg, "typ": "at+jwt", "kid": forge.kid})
    assert_refused(client, f"{header}.{payload}.")


def test_hs256_signed_with_our_public_key_is_refused(client, forge, private_key):
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, payload, _ = forge().split(".")
    header = b64json({"alg": "HS256", "typ": "at+jwt", "kid": forge.kid})
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert_refused(client, f"{header}.{payload}.{b64(signature)}")


def test_token_signed_by_another_key_with_our_kid_is_refused(client, forge):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_refused(client, forge(key=stranger))


def test_flipped_payload_byte_is_refused(client, forge):
    header, payload, signature = forge().split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[10] ^= 0x01
    assert_refused(client, f"{header}.{b64(bytes(raw))}.{signature}")


def test_stripped_signature_is_refused(client, forge):
    header, payload, _ = forge().split(".")
    assert_refused(client, f"{header}.{payload}.")


@pytest.mark.parametrize("algorithm", ["RS512", "PS256"])
def test_other_rsa_algorithms_are_refused(client, forge, algorithm):
    assert_refused(client, forge(algorithm=algorithm))


def test_expired_past_leeway_is_refused_and_inside_it_accepted(client, forge):
    now = int(time.time())
    assert_refused(client, forge({"exp": now - 30, "iat": now - 900}))
    inside = forge({"exp": now - 3, "iat": now - 900})
    assert client.get(ME, headers=bearer(inside)).status_code == 200


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_token_from_an_hour_ahead_is_refused(client, forge, claim):
    assert_refused(client, forge({claim: int(time.time()) + 3600}))


@pytest.mark.parametrize(
    "issuer",
    [None, "https://evil.example", ISSUER + "/", ISSUER + ".evil.example", "http://127.0.0.1:500"],
)
def test_missing_or_wrong_issuer_is_refused(client, forge, issuer):
    assert_refused(client, forge({"iss": issuer}))


@pytest.mark.parametrize("audience", [None, "someone-else", ["someone-else"]])
def test_missing_or_foreign_audience_is_refused(client, forge, audience):
    assert_refused(client, forge({"aud": audience}))


@pytest.mark.parametrize("claim", ["sub", "jti", "exp", "iat"])
def test_missing_required_claim_is_refused(client, forge, claim):
    assert_refused(client, forge({claim: None}))


@pytest.mark.parametrize("kid", ["unknown", "../../etc/passwd", "' OR '1'='1", "x" * 10_000, None])
def test_unknown_or_hostile_kid_is_refused(client, forge, kid):
    assert_refused(client, forge(headers={"kid": kid}))


@pytest.mark.parametrize(
    "header",
    [
        {"jku": "https://evil.example/jwks.json"},
        {"x5u": "https://evil.example/cert.pem"},
        {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
        {"crit": ["exp-unknown"], "exp-unknown": 1},
    ],
)
def test_key_location_and_critical_headers_are_refused(client, forge, header):
    assert_refused(client, forge(headers=header))


@pytest.mark.parametrize("typ", [None, "JWT", "refresh+jwt"])
def test_wrong_type_is_refused(client, forge, typ):
    assert_refused(client, forge(headers={"typ": typ}))


def test_refresh_token_is_not_an_access_token(client, victim):
    _, tokens = victim
    assert_refused(client, tokens["refresh_token"])


def test_access_token_is_not_a_refresh_token(client, victim):
    _, tokens = victim
    response = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["access_token"]})
    assert response.status_code == 401


def test_malformed_tokens_are_refused(client, forge):
    header, payload, signature = forge().split(".")
    array_payload = b64json(["not", "an", "object"])
    for token in (
        f"{header}.{payload}",
        f"{header}.{payload}.{signature}.extra",
        "%%%.@@@.###",
        f"{header}.!!!.{signature}",
        f"{header}.{array_payload}.{signature}",
        b64json({"alg": "RS256", "pad": "x" * 20_000}) + f".{payload}.{signature}",
        "a.b.c",
        "...",
    ):
        assert_refused(client, token)


def test_revoked_jti_is_refused(client, victim):
    _, tokens = victim
    headers = bearer(tokens["access_token"])
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert_refused(client, tokens["access_token"])


def test_token_of_a_deleted_user_is_refused(client, forge, accounts):
    token = forge({"sub": str(uuid.uuid4())})
    assert_refused(client, token)
