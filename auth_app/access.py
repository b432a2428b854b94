"""Whether a genuine access token still works at the auth service, and whose it is.

The signature, issuer and audience are checked by :class:`common.tokens.TokenVerifier`;
this is the auth service's own check after it, run on every authenticated request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
from flask import g

from auth_app.models import User
from auth_app.revocation import RevocationStore, issued_before_cutoff
from auth_app.security_events import bind_session
from common.auth import AccountDisabled, DependencyUnavailable
from common.flask_db import get_session
from common.tokens import InvalidToken


@dataclass(frozen=True)
class AccessCheck:
    """Revoked? User still there and active? Answers with the user's current roles."""

    revocation: RevocationStore

    def __call__(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The claims with the user's current roles, or InvalidToken / AccountDisabled.

        Redis unreachable means the token cannot be cleared, so it is refused
        (503), never let through.
        """
        try:
            revoked = self.revocation.is_revoked(claims)
        except redis.RedisError:
            raise DependencyUnavailable("Token revocation state unavailable (Redis)") from None
        if revoked:
            raise InvalidToken("token revoked", "revoked")
        user = get_session().get(User, claims["sub"])
        if user is None:
            raise InvalidToken("unknown user", "unknown_user")
        if issued_before_cutoff(claims, user):
            raise InvalidToken("token revoked", "revoked")
        if not user.is_active:
            raise AccountDisabled("Account disabled")
        g.current_user = user
        bind_session(claims.get("sid"))
        return {**claims, "roles": list(user.roles)}


def current_user() -> User:
    """The user of the verified access token of this request."""
    return cast(User, g.current_user)
