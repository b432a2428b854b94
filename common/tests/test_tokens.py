"""TokenVerifier reads the header itself; any odd encoding is still judged as PyJWT reads it.

The header of a token of the usual shape is read without PyJWT's slower
segment-by-segment read. These tests pin that the shortcut changes no answer:
a token PyJWT cannot read is "malformed" whichever segment is at fault, and
one it can read goes on to the same checks as before.
"""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from common.tokens import InvalidToken, TokenVerifier

ISSUER = "https://auth.example"
AUDIENCE = "user-service"
KID = "test-kid"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides) -> dict:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(uuid.uuid4()),
        "exp": now + 900,
        "iat": now,
        "jti": str(uuid.uuid4()),
        **overrides,
    }


def sign(header_segment: str, payload_segment: str, key=KEY) -> str:
    """Sign exactly these segments, however they are encoded."""
    signing_input = f"{header_segment}.{payload_segment}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def segment(value) -> str:
    return b64(json.dumps(value).encode())


HEADER = {"alg": "RS256", "typ": "at+jwt", "kid": KID}


def verifier() -> TokenVerifier:
    return TokenVerifier({KID: KEY.public_key()}, issuer=ISSUER, audience=AUDIENCE)


def reason(token: str) -> str | None:
    try:
        verifier().verify(token)
    except InvalidToken as error:
        return str(error)
    return None


def pyjwt_reads(token: str) -> bool:
    try:
        jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False
    return True


def bump_last_char(part: str) -> str:
    """Set unused low bits in the last character: non-canonical base64 of the same bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return part[:-1] + alphabet[alphabet.index(part[-1]) + 1]


def test_a_genuine_token_is_read_and_verified():
    token = sign(segment(HEADER), segment(claims()))
    assert reason(token) is None


def test_padded_segments_are_read_as_pyjwt_reads_them():
    head, payload = segment(HEADER), segment(claims())
    head += "=" * (-len(head) % 4)
    payload += "=" * (-len(payload) % 4)
    token = sign(head, payload)
    assert pyjwt_reads(token)
    assert reason(token) is None


def uneven_payload() -> str:
    """A payload segment whose length leaves unused bits in its last character."""
    body = claims(note="")
    while len(segment(body)) % 4 == 0:
        body["note"] += "x"
    return segment(body)


@functools.cache
def tampered_tokens() -> dict[str, str]:
    head, payload, signature = sign(segment(HEADER), uneven_payload()).split(".")
    assert len(head) % 4 and len(signature) % 4  # both leave bits to bump
    return {
        "header-noncanonical": f"{bump_last_char(head)}.{payload}.{signature}",
        "payload-noncanonical": f"{head}.{bump_last_char(payload)}.{signature}",
        "signature-noncanonical": f"{head}.{payload}.{bump_last_char(signature)}",
        "payload-bad-char": f"{head}.{payload[:-1]}!.{signature}",
        "signature-bad-char": f"{head}.{payload}.{signature[:-1]}*",
        "payload-length": f"{head}.{payload}A{'A' * (-(len(payload) + 1) % 4)}B.{signature}",
        "signature-empty": f"{head}.{payload}.",
        "header-array": sign(segment([HEADER]), payload),
        "header-not-json": sign(b64(b"not json"), payload),
        "kid-number": sign(segment({**HEADER, "kid": 42}), payload),
        "too-much-padding": f"{head}===.{payload}.{signature}",
        "payload-array": sign(head, segment([claims()])),
        "other-key": sign(head, payload, rsa.generate_private_key(65537, 2048)),
    }


@pytest.mark.parametrize("name", list(tampered_tokens()))
def test_a_tampered_token_is_malformed_exactly_when_pyjwt_cannot_read_it(name):
    token = tampered_tokens()[name]
    refused = reason(token)
    assert refused is not None
    assert (refused == "malformed token") == (not pyjwt_reads(token)), refused


def test_an_unreadable_payload_is_malformed_even_behind_a_good_header():
    head, payload, signature = sign(segment(HEADER), uneven_payload()).split(".")
    assert reason(f"{head}.{bump_last_char(payload)}.{signature}") == "malformed token"
