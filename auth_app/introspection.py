"""Token introspection (RFC 7662): which clients may ask, and what they are told.

Only the resource servers named in ``INTROSPECTION_CLIENTS`` may introspect,
each authenticating with HTTP Basic (RFC 7617) as ``client_id:client_secret``.
Secrets are compared in constant time, over digests of equal length, and an
unknown client costs the same comparison as a known one, so the time of an
answer tells nothing of which ids exist or how much of a secret was right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from werkzeug.datastructures import Authorization

from common.auth import AccountDisabled, BearerAuth
from common.tokens import InvalidToken

#: The ``token_type`` of an active access token (RFC 7662 section 2.2, RFC 6750).
TOKEN_TYPE = "Bearer"
#: The challenge of a 401 (RFC 7617): credentials are UTF-8.
CHALLENGE = 'Basic realm="introspection", charset="UTF-8"'


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class IntrospectionClients:
    """The clients allowed to introspect, by id, each with the digest of its secret."""

    def __init__(self, clients: Iterable[tuple[str, str]]) -> None:
        self._digests = {client_id: _digest(secret) for client_id, secret in clients}
        # Compared against when the id is unknown; matches no secret of any client.
        self._nobody = hashlib.sha256(b"no client has this secret").digest()

    def authenticate(self, credentials: Authorization | None) -> str | None:
        """The id of the client these Basic credentials belong to, or None."""
        if credentials is None or credentials.type != "basic":
            return None
        client_id = credentials.username or ""
        presented = _digest(credentials.password or "")
        expected = self._digests.get(client_id)
        matches = hmac.compare_digest(presented, self._nobody if expected is None else expected)
        return client_id if matches and expected is not None else None


def introspect(bearer: BearerAuth, token: str) -> dict:
    """RFC 7662's answer for ``token``: its claims if it is a live access token, else inactive.

    A refresh token, a revoked, expired or forged token and a disabled user's
    token are all just inactive. Raises DependencyUnavailable when the
    revocation state cannot be read.
    """
    try:
        claims = bearer.claims_of(token)
    except (InvalidToken, AccountDisabled):
        return {"active": False}
    return {"active": True, **claims, "token_type": TOKEN_TYPE}
