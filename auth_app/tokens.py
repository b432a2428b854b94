"""Token pairs: signing access tokens (RS256 JWTs, RFC 9068 profile), refresh, logout.

:class:`TokenIssuer` mints the pair a login, a refresh or a password change
hands out. :func:`refresh` is the whole refresh (a refresh token in, a new
pair of the same login session out) and :func:`logout` the whole logout; both
take the database session and never commit: the view does.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from sqlalchemy.orm import Session

from auth_app import announce, login_sessions
from auth_app.config import AuthSettings
from auth_app.login_sessions import EndedFamily, InvalidRefreshToken, RefreshTokenReused
from auth_app.models import LoginSession, User
from auth_app.revocation import RevocationStore, issued_at
from auth_app.security_events import EventType, record
from common.db import utcnow
from common.keys import SigningKeys
from common.tokens import ACCESS_TOKEN_TYPE, ALGORITHM

log = logging.getLogger("auth_app.tokens")


class AccountGone(Exception):
    """The account was deleted while the login that would open a session ran."""


class NotYourRefreshToken(Exception):
    """A logout named a refresh token that is not one of the caller's."""


@dataclass(frozen=True)
class TokenIssuer:
    """Signs access tokens with the active signing key and hands out token pairs."""

    keys: SigningKeys
    revocation: RevocationStore
    settings: AuthSettings

    def access_token(self, user: User, family: LoginSession, issued_at: int) -> str:
        """A signed access token for ``user`` in login session ``family``, issued at ``issued_at``.

        It expires ``ACCESS_TOKEN_EXPIRE_MINUTES`` later, or when its login ends if sooner.
        """
        kid, private_key = self.keys.signing_key()
        settings = self.settings
        claims = {
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "sub": user.id,
            "client_id": settings.jwt_client_id,
            "iat": issued_at,
            "exp": min(issued_at + settings.access_token_ttl, _epoch(family.expires_at)),
            "jti": str(uuid.uuid4()),
            "sid": family.id,
            "roles": list(user.roles),
            "email": user.email,
            "username": user.username,
            "email_verified": user.email_verified,
            "amr": list(family.amr or ("pwd",)),
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
        if family is None or refresh_token is None:
            return self.new_session(session, user)[0]
        settings = self.settings
        return {
            "access_token": self.access_token(user, family, issued_at(user)),
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": settings.access_token_ttl,
            "refresh_expires_in": int(settings.refresh_token_ttl.total_seconds()),
        }

    def new_session(
        self, session: Session, user: User, amr: Sequence[str] = ("pwd",)
    ) -> tuple[dict[str, Any], LoginSession]:
        """A new login session of ``user`` and its first token pair.

        The session records ``amr`` (how the user proved who they are), which
        every access token of it carries, and the current client. The user's
        row is held (``FOR KEY SHARE``) until the commit, so an account being
        deleted meanwhile either waits for this login, whose session then goes
        with it, or is gone already: AccountGone, never a session of nobody.
        """
        if (
            session.get(User, user.id, with_for_update={"key_share": True}, populate_existing=True)
            is None
        ):
            raise AccountGone()
        settings = self.settings
        family, refresh_token = login_sessions.start(
            session,
            user.id,
            utcnow(),
            settings.refresh_token_ttl,
            settings.session_max_age,
            amr=amr,
        )
        return self.pair(session, user, family, refresh_token), family

    def log_in(self, session: Session, user: User, amr: Sequence[str] = ("pwd",)) -> dict[str, Any]:
        """A new login session's pair, with its ``login_succeeded`` event."""
        pair, family = self.new_session(session, user, amr)
        record(session, EventType.LOGIN_SUCCEEDED, user.id, session_id=family.id)
        return pair

    def end_session(self, session: Session, family: LoginSession) -> None:
        """End one login session here at once, and at the user service once it hears of it."""
        now = utcnow()
        self.revocation.revoke_session(family, now)
        # Its tokens could live until they expire: the latest was issued just now.
        until = min(time.time() + self.settings.access_token_ttl, _epoch(family.expires_at))
        announce.session_revoked(session, family, until)


def _epoch(moment: datetime) -> int:
    return math.floor(moment.timestamp())


def refresh(session: Session, issuer: TokenIssuer, refresh_token: str) -> dict[str, Any]:
    """A new pair of the same login session for a live refresh token; the presented one dies.

    Raises InvalidRefreshToken (unknown, expired, revoked, or the account is
    gone or disabled). A replay after the grace, or a login past its end,
    ends the session first and raises RefreshTokenReused or SessionEnded: the
    caller commits then, so the end sticks though the refresh fails.
    """
    try:
        family, new_token = login_sessions.rotate(
            session,
            refresh_token,
            utcnow(),
            issuer.settings.refresh_token_ttl,
            issuer.settings.refresh_reuse_grace,
        )
    except EndedFamily as error:
        issuer.end_session(session, error.family)
        if isinstance(error, RefreshTokenReused):
            record(
                session,
                EventType.REFRESH_REUSE_DETECTED,
                error.family.user_id,
                session_id=error.family.id,
            )
            log.warning(
                "refresh reuse detected user_id=%s sid=%s", error.family.user_id, error.family.id
            )
        else:
            log.info("refresh refused reason=session_ended sid=%s", error.family.id)
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
    issuer: TokenIssuer,
    user: User,
    claims: dict[str, Any],
    refresh_token: str | None = None,
) -> None:
    """End the login session of the access token (and of ``refresh_token``, if given).

    That session's refresh tokens and access tokens, and the presented access
    token itself, die here at once and at the user service once it hears of
    it. Raises NotYourRefreshToken for a refresh token of anyone else.
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
        if family is not None and family.user_id == user.id and family not in families:
            families.append(family)
    for family in families:
        issuer.end_session(session, login_sessions.lock(session, family))
    issuer.revocation.revoke_token(session, claims["jti"], claims["exp"])
    record(session, EventType.LOGOUT, user.id, session_id=sid)
    log.info("logout user_id=%s sid=%s", user.id, sid or "-")


def end_session_of(session: Session, issuer: TokenIssuer, user: User, sid: str) -> bool:
    """End the user's live session ``sid``, exactly as a logout of it would; False if none."""
    family = login_sessions.live_one(session, user.id, sid, utcnow())
    if family is None:
        return False
    issuer.end_session(session, login_sessions.lock(session, family))
    log.info("session ended user_id=%s sid=%s", user.id, sid)
    return True


def end_other_sessions(session: Session, issuer: TokenIssuer, user: User, keep: str | None) -> int:
    """End every live session of the user but ``keep`` (the caller's); how many ended."""
    ended = 0
    for family, _until in login_sessions.live(session, user.id, utcnow()):
        if family.id != keep:
            issuer.end_session(session, login_sessions.lock(session, family))
            ended += 1
    return ended
