"""RS256 access-token verification shared by both services (RFC 9068 profile).

The algorithm is pinned, never read from the token; the key is looked up by
``kid`` in a key set the service trusts, never taken from ``jku``/``x5u``/``jwk``
headers. Every failure is an :class:`InvalidToken` with a short reason that is
safe to show a client.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections import OrderedDict
from typing import Literal, NamedTuple, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"
ACCESS_TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub", "jti"]
MAX_TOKEN_LENGTH = 8192
MAX_KID_LENGTH = 128
_ALLOWED_HEADERS = {"alg", "typ", "kid"}
#: How many verified tokens a verifier remembers (per process): about 2 MB at most.
VERIFIED_CACHE_SIZE = 1024
# Three non-empty, unpadded base64url segments: the only shape the fast header read takes.
_PLAIN_SEGMENTS = re.compile(r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


#: Why a token was refused, in a word: the ``reason`` of an :class:`InvalidToken`
#: (metrics count refusals by it; common.metrics.TOKEN_REFUSALS lists them all).
Refusal = Literal[
    "malformed",
    "unsupported_algorithm",
    "not_access_token",
    "unsupported_header",
    "unknown_key",
    "invalid_signature",
    "invalid",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "invalid_claim",
    "revoked",
    "unknown_user",
    "account_deleted",
]


class InvalidToken(Exception):
    """The token cannot be trusted; ``str(error)`` is a client-safe reason, ``reason`` its kind."""

    def __init__(self, message: str, reason: Refusal = "invalid") -> None:
        super().__init__(message)
        self.reason: Refusal = reason


class KeySet(Protocol):
    """Anything that returns the public key for a kid (a KeyRing, a JWKS cache)."""

    def get(self, kid: str) -> rsa.RSAPublicKey | None:  # pragma: no cover - protocol
        """The key for ``kid``, or None."""


class _Verified(NamedTuple):
    """A token whose signature and claims were found good, and what they were checked with."""

    kid: str
    key: rsa.RSAPublicKey
    claims: dict
    expires: float


class TokenVerifier:
    """Verify access tokens against a trusted key set, issuer and audience.

    A client sends the same access token with every request for its
    lifetime, and an RS256 verification is most of what checking one costs.
    So the verifier remembers, per process, the last ``cache_size`` tokens it
    verified, by their whole text: the same string again is not verified
    again as long as it has not expired (its ``exp``, without leeway: the
    leeway is for clocks, not for the cache) and its kid still names the very
    key object that verified it (a key retired, rotated out or refetched ends
    that). A token differing in any character (a tampered signature, say) is
    another entry and is verified in full. Only the signature and claims
    checks are remembered: whether the token, its session or its user was
    revoked is the caller's check (``BearerAuth``), run on every request.
    ``cache_size=0`` verifies every time.
    """

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        leeway: int = 10,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.cache_size = cache_size
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> dict:
        """Return the claims of a valid access token or raise InvalidToken."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token", "malformed")
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        if token.count(".") != 2:
            raise InvalidToken("malformed token", "malformed")
        try:
            header = _unverified_header(token)
        except (jwt.PyJWTError, RecursionError):
            # RecursionError: a header of JSON nested thousands deep, which
            # json.loads (here or in PyJWT) cannot read.
            raise InvalidToken("malformed token", "malformed") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("unsupported algorithm", "unsupported_algorithm")
        if str(header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYPE, "application/at+jwt"):
            raise InvalidToken("not an access token", "not_access_token")
        if set(header) - _ALLOWED_HEADERS:
            raise InvalidToken("unsupported token header", "unsupported_header")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise InvalidToken("unknown signing key", "unknown_key")
        key = self.keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key", "unknown_key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS, "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired", "expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid", "not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience", "wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer", "wrong_issuer") from None
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"missing claim {error.claim}", "missing_claim") from None
        except jwt.DecodeError as error:
            # The fast header read leaves the other segments' encoding to PyJWT:
            # a token it cannot even read is malformed, as PyJWT's own read said.
            if isinstance(error, jwt.InvalidSignatureError):
                raise InvalidToken("invalid token", "invalid_signature") from None
            if _readable(token):
                raise InvalidToken("invalid token") from None
            raise InvalidToken("malformed token", "malformed") from None
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise InvalidToken("invalid token") from None
        if not isinstance(claims, dict):
            raise InvalidToken("invalid token")
        claims = self._check_claims(claims)
        self._remember(token, kid, key, claims)
        return _copy(claims)

    def _remembered(self, token: str) -> dict | None:
        """The claims of ``token`` if it was verified before and still may be taken as is."""
        if not self.cache_size:
            return None
        with self._lock:
            entry = self._verified.get(token)
            if entry is None:
                return None
            if time.time() >= entry.expires:
                del self._verified[token]
                return None
            self._verified.move_to_end(token)
        # Outside the lock: a JWKS lookup may fetch. Still the key that verified it?
        if self.keys.get(entry.kid) is not entry.key:
            with self._lock:
                self._verified.pop(token, None)
            return None
        return _copy(entry.claims)

    def _remember(self, token: str, kid: str, key: rsa.RSAPublicKey, claims: dict) -> None:
        expires = claims.get("exp")
        if not self.cache_size or not isinstance(expires, int | float) or expires <= time.time():
            return
        with self._lock:
            self._verified[token] = _Verified(kid, key, _copy(claims), float(expires))
            self._verified.move_to_end(token)
            while len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)

    def _check_claims(self, claims: dict) -> dict:
        # Exact issuer match, whatever the library's comparison does.
        if claims.get("iss") != self.issuer:
            raise InvalidToken("wrong issuer", "wrong_issuer")
        now = time.time()
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise InvalidToken("invalid token")
        if iat > now + self.leeway:
            raise InvalidToken("token not yet valid", "not_yet_valid")
        for name in ("sub", "jti"):
            value = claims.get(name)
            if not isinstance(value, str) or not value or len(value) > 255:
                raise InvalidToken(f"invalid claim {name}", "invalid_claim")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("invalid claim roles", "invalid_claim")
        return claims


def _copy(claims: dict) -> dict:
    """A copy of verified claims that the caller may change without changing the cache's."""
    return {
        name: list(value) if isinstance(value, list) else value for name, value in claims.items()
    }


def _unverified_header(token: str) -> dict:
    """The token's header, not yet trusted; a PyJWTError when PyJWT could not read the token.

    PyJWT's ``get_unverified_header`` reads and checks all three segments
    character by character, then ``jwt.decode`` does it all again: half the
    cost of a verification, twice. A token of the usual shape (unpadded
    segments, a canonically encoded JSON object header with a string ``kid``)
    has its header read here directly; ``jwt.decode`` still checks every
    segment. Anything else is read by PyJWT, which decides as before.
    """
    match = _PLAIN_SEGMENTS.fullmatch(token)
    if match is not None and all(len(part) % 4 != 1 for part in token.split(".")):
        segment = match.group(1)
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
            header = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError):
            header = None
        if (
            isinstance(header, dict)
            and isinstance(header.get("kid", ""), str)
            and base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment
        ):
            return header
    return jwt.get_unverified_header(token)


def _readable(token: str) -> bool:
    """Whether PyJWT can read the token's segments at all (its signature aside)."""
    try:
        jwt.get_unverified_header(token)
    except (jwt.PyJWTError, RecursionError):
        return False
    return True
