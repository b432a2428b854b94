"""The access-token attack list, run against this service: each attempt is a 401, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from user_app.tests.conftest import AUDIENCE, ISSUER, bearer

ME = "/api/v1/users/me"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value) -> str:
    return b64(json.dumps(value).encode())


def raw_token(signer, claims, header: dict | None = None) -> str:
    """Sign anything with our key, bypassing every check a JWT library makes when encoding."""
    head = header if header is not None else {"alg": "RS256", "typ": "at+jwt", "kid": signer.kid}
    signing_input = f"{segment(head)}.{segment(claims)}".encode()
    signature = signer.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def assert_refused(client, token: str) -> None:
    response = client.get(ME, headers=bearer(token))
    assert response.status_code == 401, response.get_json()
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["message"].startswith("Invalid token")


def test_a_genuine_token_is_accepted(client, signer):
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200


def test_the_registered_media_type_form_of_typ_is_accepted(client, signer):
    token = signer.token(headers={"typ": "application/at+jwt"})
    assert client.get(ME, headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_case(client, signer, alg):
    header = segment({"alg": alg, "typ": "at+jwt", "kid": signer.kid})
    assert_refused(client, f"{header}.{segment(signer.claims())}.")


def test_hs256_signed_with_the_public_key_pem(client, signer):
    header = segment({"alg": "HS256", "typ": "at+jwt", "kid": signer.kid})
    signing_input = f"{header}.{segment(signer.claims())}"
    mac = hmac.new(signer.public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert_refused(client, f"{signing_input}.{b64(mac)}")


def test_another_rsa_key_claiming_our_kid(client, other_signer):
    assert_refused(client, other_signer.token())


def test_a_flipped_payload_byte(client, signer):
    header, payload, signature = signer.token().split(".")
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    assert_refused(client, f"{header}.{flipped}.{signature}")


def test_a_stripped_signature(client, signer):
    header, payload, _ = signer.token().split(".")
    assert_refused(client, f"{header}.{payload}.")


@pytest.mark.parametrize("algorithm", ["RS512", "PS256", "RS384"])
def test_other_rsa_algorithms_with_our_key(client, signer, algorithm):
    token = jwt.encode(
        signer.claims(),
        signer.key,
        algorithm=algorithm,
        headers={"typ": "at+jwt", "kid": signer.kid},
    )
    assert_refused(client, token)


def test_expired_beyond_the_leeway(client, signer):
    now = int(time.time())
    assert_refused(client, signer.token(iat=now - 900, exp=now - 11))


def test_expired_within_the_leeway_is_accepted(client, signer):
    now = int(time.time())
    token = signer.token(iat=now - 900, exp=now - 3)
    assert client.get(ME, headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_valid_until_an_hour_from_now(client, signer, claim):
    assert_refused(client, signer.token(**{claim: int(time.time()) + 3600}))


@pytest.mark.parametrize(
    "iss",
    [
        "http://127.0.0.1:5001/",
        "http://127.0.0.1:5001.evil.example",
        "http://127.0.0.1:500",
        "https://127.0.0.1:5001",
        ["http://127.0.0.1:5001"],
        "",
    ],
)
def test_wrong_issuer(client, signer, iss):
    assert_refused(client, raw_token(signer, {**signer.claims(), "iss": iss}))


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "sub", "jti"])
def test_a_required_claim_missing(client, signer, claim):
    claims = signer.claims()
    del claims[claim]
    assert_refused(client, raw_token(signer, claims))


@pytest.mark.parametrize("aud", ["auth-service", ["auth-service", "other"], "user-service-x"])
def test_a_foreign_audience(client, signer, aud):
    assert_refused(client, signer.token(aud=aud))


def test_an_audience_list_including_ours_is_accepted(client, signer):
    assert client.get(ME, headers=bearer(signer.token(aud=["other", AUDIENCE]))).status_code == 200


@pytest.mark.parametrize(
    "kid",
    ["unknown-kid", "../../../../etc/passwd", "' OR '1'='1' --", "k" * 10_000, "", 42, None],
    ids=["unknown", "path", "sql", "10kb", "empty", "number", "null"],
)
def test_bad_kids(client, signer, kid):
    header = {"alg": "RS256", "typ": "at+jwt", "kid": kid}
    assert_refused(client, raw_token(signer, signer.claims(), header))


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "http://evil.example/jwks.json"},
        {"x5u": "http://evil.example/cert.pem"},
        {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
        {"x5c": ["MIIB"]},
        {"crit": ["made-up"]},
    ],
    ids=["jku", "x5u", "jwk", "x5c", "crit"],
)
def test_headers_that_try_to_choose_the_key_or_demand_extensions(client, signer, extra):
    assert_refused(client, signer.token(headers=extra))


@pytest.mark.parametrize("typ", ["JWT", "refresh+jwt", "id+jwt", "", None])
def test_a_type_other_than_at_jwt(client, signer, typ):
    header = {"alg": "RS256", "kid": signer.kid}
    if typ is not None:
        header["typ"] = typ
    assert_refused(client, raw_token(signer, signer.claims(), header))


def test_a_refresh_token_looking_opaque_string(client):
    assert_refused(client, "rt_3q2+7w8e9r0tYuIoPaSdFgHjKlZxCvBnM")


@pytest.mark.parametrize(
    "token",
    [
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0",
        "!!!.@@@.###",
        "a.b.c.d",
        "....",
        "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9." + "A" * 9000 + ".sig",
    ],
    ids=["two-segments", "bad-base64", "four-segments", "dots", "huge"],
)
def test_malformed_tokens(client, token):
    assert_refused(client, token)


def test_a_signed_json_array_payload(client, signer):
    assert_refused(client, raw_token(signer, [signer.claims(), ISSUER]))


def test_a_huge_header(client, signer):
    token = signer.token(headers={"x-padding": "p" * 9000})
    assert_refused(client, token)


def test_a_header_that_is_not_json(client, signer):
    _, payload, signature = signer.token().split(".")
    assert_refused(client, f"{b64(b'not json')}.{payload}.{signature}")


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": 42},
        {"sub": "not-a-uuid"},
        {"sub": "0E0C4F4A-1B2C-4D5E-8F90-A1B2C3D4E5F6"},
        {"jti": ""},
        {"roles": "admin"},
        {"iat": "yesterday"},
        {"exp": "tomorrow"},
    ],
    ids=[
        "sub-number",
        "sub-not-uuid",
        "sub-upper",
        "empty-jti",
        "roles-string",
        "iat-str",
        "exp-str",
    ],
)
def test_claims_of_the_wrong_shape(client, signer, claims):
    assert_refused(client, raw_token(signer, {**signer.claims(), **claims}))


def test_a_non_bearer_scheme_is_401(client, signer):
    response = client.get(ME, headers={"Authorization": f"Basic {signer.token()}"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
