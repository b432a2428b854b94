"""The per-app objects the views share: hasher, stores, token issuer and verifier."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app, g
from flask_limiter import Limiter

from auth_app.login_throttle import LoginThrottle
from auth_app.models import User
from auth_app.passwords import PasswordHasher
from auth_app.revocation import RevocationStore
from auth_app.tokens import AccessTokenIssuer
from common.auth import AccountDisabled, DependencyUnavailable
from common.db import get_session
from common.tokens import InvalidToken, TokenVerifier


@dataclass
class Components:
    """Everything a request of the auth service needs beyond the database session."""

    redis: redis.Redis
    hasher: PasswordHasher
    revocation: RevocationStore
    throttle: LoginThrottle
    issuer: AccessTokenIssuer
    verifier: TokenVerifier
    limiter: Limiter | None


def components() -> Components:
    """The current app's components."""
    return current_app.extensions["auth_app"]


def check_access_token(claims: dict) -> dict:
    """The auth service's check after signature verification: revoked? user still there?

    Redis unreachable means the token cannot be cleared, so it is refused (503),
    never let through. Returns the claims with the user's current roles.
    """
    try:
        revoked = components().revocation.is_revoked(claims)
    except redis.RedisError:
        raise DependencyUnavailable("Token revocation state unavailable (Redis)") from None
    if revoked:
        raise InvalidToken("token revoked")
    user = get_session().get(User, claims["sub"])
    if user is None:
        raise InvalidToken("unknown user")
    if not user.is_active:
        raise AccountDisabled("Account disabled")
    g.current_user = user
    return {**claims, "roles": list(user.roles)}


def current_user() -> User:
    """The user of the verified access token of this request."""
    return g.current_user
