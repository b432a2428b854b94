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
import time
from typing import Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"
ACCESS_TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub", "jti"]
MAX_TOKEN_LENGTH = 8192
MAX_KID_LENGTH = 128
_ALLOWED_HEADERS = {"alg", "typ", "kid"}
# Three non-empty, unpadded base64url segments: the only shape the fast header read takes.
_PLAIN_SEGMENTS = re.compile(r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class InvalidToken(Exception):
    """The token cannot be trusted; ``str(error)`` is a client-safe reason."""


class KeySet(Protocol):
    """Anything that returns the public key for a kid (a KeyRing, a JWKS cache)."""

    def get(self, kid: str) -> rsa.RSAPublicKey | None:  # pragma: no cover - protocol
        """The key for ``kid``, or None."""


class TokenVerifier:
    """Verify access tokens against a trusted key set, issuer and audience."""

    def __init__(self, keys: KeySet, *, issuer: str, audience: str, leeway: int = 10):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    def verify(self, token: str) -> dict:
        """Return the claims of a valid access token or raise InvalidToken."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        if token.count(".") != 2:
            raise InvalidToken("malformed token")
        try:
            header = _unverified_header(token)
        except (jwt.PyJWTError, RecursionError):
            # RecursionError: a header of JSON nested thousands deep, which
            # json.loads (here or in PyJWT) cannot read.
            raise InvalidToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("unsupported algorithm")
        if str(header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYPE, "application/at+jwt"):
            raise InvalidToken("not an access token")
        if set(header) - _ALLOWED_HEADERS:
            raise InvalidToken("unsupported token header")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise InvalidToken("unknown signing key")
        key = self.keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
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
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"missing claim {error.claim}") from None
        except jwt.DecodeError as error:
            # The fast header read leaves the other segments' encoding to PyJWT:
            # a token it cannot even read is malformed, as PyJWT's own read said.
            if isinstance(error, jwt.InvalidSignatureError) or _readable(token):
                raise InvalidToken("invalid token") from None
            raise InvalidToken("malformed token") from None
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise InvalidToken("invalid token") from None
        if not isinstance(claims, dict):
            raise InvalidToken("invalid token")
        return self._check_claims(claims)

    def _check_claims(self, claims: dict) -> dict:
        # Exact issuer match, whatever the library's comparison does.
        if claims.get("iss") != self.issuer:
            raise InvalidToken("wrong issuer")
        now = time.time()
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise InvalidToken("invalid token")
        if iat > now + self.leeway:
            raise InvalidToken("token not yet valid")
        for name in ("sub", "jti"):
            value = claims.get(name)
            if not isinstance(value, str) or not value or len(value) > 255:
                raise InvalidToken(f"invalid claim {name}")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("invalid claim roles")
        return claims


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
