"""Token pairs: signing access tokens (RS256 JWTs, RFC 9068 profile), refresh, logout.

:class:`TokenIssuer` mints the pair a login, a refresh or a password change
hands out. :func:`refresh` is the whole refresh (a refresh token in, a new
pair of the same login session out) and :func:`logout` the whole logout; both
take the database session and never commit: the view does.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy.orm import Session

from auth_app import login_sessions
from auth_app.config import AuthSettings
from auth_app.login_sessions import InvalidRefreshToken, RefreshTokenReused
from auth_app.models import LoginSession, User
from auth_app.revocation import RevocationStore
from common.db import utcnow
from common.keys import KeyRing
from common.tokens import ACCESS_TOKEN_TYPE, ALGORITHM

log = logging.getLogger("auth_app.tokens")


class NotYourRefreshToken(Exception):
    """A logout named a refresh token that is not one of the caller's."""


@dataclass(frozen=True)
class TokenIssuer:
    """Signs access tokens with the key ring's active key and hands out token pairs."""

    keys: KeyRing
    revocation: RevocationStore
    settings: AuthSettings

    def access_token(self, user: User, sid: str, issued_at: int) -> str:
        """A signed access token for ``user`` in login session ``sid``, issued at ``issued_at``."""
        kid, private_key = self.keys.signing_key()
        settings = self.settings
        claims = {
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "sub": user.id,
            "client_id": settings.jwt_client_id,
            "iat": issued_at,
            "exp": issued_at + settings.access_token_ttl,
            "jti": str(uuid.uuid4()),
            "sid": sid,
            "roles": list(user.roles),
            "email": user.email,
            "username": user.username,
        }
        return jwt.encode(
            claims, private_key, algorithm=ALGORITHM, headers={"typ": ACCESS_TOKEN_TYPE, "kid": kid}
        )

    def pair(
        self,
        session: Session,
        user: User,
        family: LoginSession | None = None,
        refresh_token: str | None = None,
    ) -> dict[str, Any]:
        """A token pair for ``user``: of ``family`` and its new ``refresh_token``, or a new login's.

        The access token's ``iat`` is never below the user's revocation
        cut-off, so a pair handed out right after a revocation survives it.
        """
        if family is None:
            sid, refresh_token = login_sessions.start(
                session, user.id, utcnow(), self.settings.refresh_token_ttl
            )
        else:
            sid = family.id
        issued_at = self.revocation.issued_at_for(user.id)
        return {
            "access_token": self.access_token(user, sid, issued_at),
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": self.settings.access_token_ttl,
            "refresh_expires_in": int(self.settings.refresh_token_ttl.total_seconds()),
        }


def refresh(session: Session, issuer: TokenIssuer, refresh_token: str) -> dict[str, Any]:
    """A new pair of the same login session for a live refresh token; the presented one dies.

    Raises InvalidRefreshToken (unknown, expired, revoked, or the account is
    gone or disabled), or RefreshTokenReused after revoking the whole family
    (the caller commits then, so the revocation sticks though the refresh fails).
    """
    try:
        family, new_token = login_sessions.rotate(
            session, refresh_token, utcnow(), issuer.settings.refresh_token_ttl
        )
    except RefreshTokenReused as error:
        issuer.revocation.revoke_session(error.sid)
        log.warning("refresh reuse detected user_id=%s sid=%s", error.user_id, error.sid)
        raise
    except InvalidRefreshToken as error:
        log.info("refresh refused reason=%s", str(error).replace(" ", "_"))
        raise
    user = session.get(User, family.user_id)
    if user is None or not user.is_active:
        log.info("refresh refused reason=account_disabled user_id=%s", family.user_id)
        raise InvalidRefreshToken("account disabled")
    pair = issuer.pair(session, user, family, new_token)
    log.info("refresh ok user_id=%s sid=%s", user.id, family.id)
    return pair


def logout(
    session: Session,
    revocation: RevocationStore,
    user: User,
    claims: dict[str, Any],
    refresh_token: str | None = None,
) -> None:
    """End the login session of the access token (and of ``refresh_token``, if given).

    That session's refresh tokens and access tokens, and the presented access
    token itself, die at once. Raises NotYourRefreshToken for a refresh token
    of anyone else.
    """
    families = []
    if refresh_token:
        found = login_sessions.find(session, refresh_token)
        if found is None or found[1].user_id != user.id:
            raise NotYourRefreshToken()
        families.append(found[1])
    sid = claims.get("sid")
    if sid:
        family = session.get(LoginSession, sid)
        if family is not None and family.user_id == user.id:
            families.append(family)
    now = utcnow()
    for family in families:
        login_sessions.revoke(session, family, now)
        revocation.revoke_session(family.id)
    revocation.revoke_token(claims["jti"], claims["exp"])
    log.info("logout user_id=%s sid=%s", user.id, sid or "-")
