"""Access tokens (RS256 JWTs, RFC 9068 profile) and the token pair handed to clients."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import jwt

from auth_app.models import User
from common.keys import KeyRing
from common.tokens import ACCESS_TOKEN_TYPE, ALGORITHM


@dataclass
class AccessTokenIssuer:
    """Signs access tokens with the key ring's active key."""

    keys: KeyRing
    issuer: str
    audience: str
    client_id: str
    ttl: int

    def issue(self, user: User, sid: str, issued_at: int) -> str:
        """A signed access token for ``user`` in session ``sid``, issued at ``issued_at``."""
        kid, private_key = self.keys.signing_key()
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user.id,
            "client_id": self.client_id,
            "iat": issued_at,
            "exp": issued_at + self.ttl,
            "jti": str(uuid.uuid4()),
            "sid": sid,
            "roles": list(user.roles),
            "email": user.email,
            "username": user.username,
        }
        return jwt.encode(
            claims, private_key, algorithm=ALGORITHM, headers={"typ": ACCESS_TOKEN_TYPE, "kid": kid}
        )


def token_pair(access_token: str, refresh_token: str, access_ttl: int, refresh_ttl: int) -> dict:
    """The token response body of the contract."""
    return {
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": access_ttl,
        "refresh_expires_in": refresh_ttl,
    }
