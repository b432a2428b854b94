"""TokenVerifier remembers tokens it verified: never one that would now be refused.

Only the signature and claims checks are remembered; the revocation checks
run on every request (user_app/tests/test_me.py, auth_app's logout tests).
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from common.tests.test_tokens import AUDIENCE, HEADER, ISSUER, KEY, KID, claims, segment, sign
from common.tokens import InvalidToken, TokenVerifier

OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(**overrides) -> str:
    return sign(segment(HEADER), segment(claims(**overrides)))


def make_verifier(keys: dict | None = None, **options) -> TokenVerifier:
    return TokenVerifier(
        keys if keys is not None else {KID: KEY.public_key()},
        issuer=ISSUER,
        audience=AUDIENCE,
        **options,
    )


def refusal(verifier: TokenVerifier, value: str) -> str | None:
    try:
        verifier.verify(value)
    except InvalidToken as error:
        return error.reason
    return None


def test_a_token_verified_once_is_remembered_and_read_the_same():
    verifier = make_verifier()
    value = token(roles=["user"])
    first = verifier.verify(value)
    assert value in verifier._verified
    assert verifier.verify(value) == first


def test_claims_handed_out_are_copies_the_cache_does_not_share():
    verifier = make_verifier()
    value = token(roles=["user"])
    verifier.verify(value)["roles"].append("admin")
    served = verifier.verify(value)
    served["roles"].append("admin")
    served["sub"] = "someone else"
    again = verifier.verify(value)
    assert again["roles"] == ["user"] and again["sub"] != "someone else"


@pytest.mark.parametrize("position", [-2, 10, 200])
def test_a_remembered_token_with_a_changed_signature_is_refused(position):
    verifier = make_verifier()
    value = token()
    verifier.verify(value)
    head, payload, signature = value.split(".")
    index = position % len(signature)
    swapped = "A" if signature[index] != "A" else "B"
    tampered = f"{head}.{payload}.{signature[:index]}{swapped}{signature[index + 1 :]}"
    assert refusal(verifier, tampered) == "invalid_signature"
    assert tampered not in verifier._verified
    assert refusal(verifier, value) is None


def test_a_remembered_token_with_another_payload_under_its_signature_is_refused():
    verifier = make_verifier()
    value = token(roles=["user"])
    verifier.verify(value)
    head, _, signature = value.split(".")
    forged = f"{head}.{segment(claims(roles=['admin']))}.{signature}"
    assert refusal(verifier, forged) == "invalid_signature"


def test_a_remembered_token_is_refused_once_it_expires():
    # No leeway: the cache must stop serving the token at exp, and so must the full check.
    verifier = make_verifier(leeway=0)
    expires = int(time.time()) + 2
    value = token(exp=expires)
    assert refusal(verifier, value) is None
    assert value in verifier._verified
    while time.time() < expires:
        time.sleep(0.05)
    assert refusal(verifier, value) == "expired"
    assert value not in verifier._verified


def test_the_leeway_past_exp_is_the_full_checks_not_the_caches():
    verifier = make_verifier(leeway=30)
    value = token(exp=int(time.time()) - 5)
    assert refusal(verifier, value) is None  # within the leeway, as before
    assert value not in verifier._verified  # but checked in full every time


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_remembered_token_is_refused_once_its_key_is_no_longer_trusted(change):
    keys = {KID: KEY.public_key()}
    verifier = make_verifier(keys)
    value = token()
    verifier.verify(value)
    if change == "removed":
        del keys[KID]
        assert refusal(verifier, value) == "unknown_key"
    else:
        keys[KID] = OTHER_KEY.public_key()
        assert refusal(verifier, value) == "invalid_signature"
    assert value not in verifier._verified


def test_the_cache_is_bounded_and_forgets_the_least_recently_used():
    verifier = make_verifier(cache_size=3)
    values = [token() for _ in range(4)]
    for value in values[:3]:
        verifier.verify(value)
    verifier.verify(values[0])  # used again: now the most recent
    verifier.verify(values[3])
    assert list(verifier._verified) == [values[2], values[0], values[3]]
    for _ in range(20):
        verifier.verify(token())
    assert len(verifier._verified) == 3


def test_a_refused_token_is_never_remembered():
    verifier = make_verifier()
    for value in (token(aud="elsewhere"), token(iss="https://evil.example"), token(exp=1)):
        assert refusal(verifier, value) is not None
        assert refusal(verifier, value) is not None
    assert not verifier._verified


def test_cache_size_zero_verifies_every_time():
    verifier = make_verifier(cache_size=0)
    value = token()
    assert refusal(verifier, value) is None
    assert refusal(verifier, value) is None
    assert not verifier._verified
