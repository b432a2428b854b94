"""Login sessions: one per login, each the family of the refresh tokens rotated from it.

A login starts a login session (its id is the ``sid`` claim). Each refresh
rotates the presented token: it is marked used in the same statement that
checks it is unused, so of two concurrent refreshes exactly one wins. A used
token that comes back is a replay: the whole family is revoked. Only SHA-256
hashes of refresh tokens are stored. (``session`` below is the database
session, as everywhere; a login session is a ``family``.)
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from auth_app.models import LoginSession, RefreshToken

MAX_REFRESH_TOKEN_LENGTH = 512


class InvalidRefreshToken(Exception):
    """The refresh token is unknown, expired or of a revoked family."""


class RefreshTokenReused(InvalidRefreshToken):
    """An already-rotated refresh token came back; its family has been revoked."""

    def __init__(self, user_id: str, sid: str):
        super().__init__("refresh token reused")
        self.user_id = user_id
        self.sid = sid


def hash_token(token: str) -> str:
    """The stored form of a refresh token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _issue(session: Session, sid: str, now: datetime, ttl: timedelta) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            token_hash=hash_token(token), session_id=sid, issued_at=now, expires_at=now + ttl
        )
    )
    return token


def start(session: Session, user_id: str, now: datetime, ttl: timedelta) -> tuple[str, str]:
    """Open a session family for ``user_id``; return ``(sid, refresh_token)``."""
    family = LoginSession(user_id=user_id, created_at=now)
    session.add(family)
    session.flush()
    return family.id, _issue(session, family.id, now, ttl)


def find(session: Session, token: str) -> tuple[RefreshToken, LoginSession] | None:
    """The stored token and its family, whatever their state, or None."""
    if not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return None
    row = session.get(RefreshToken, hash_token(token))
    family = session.get(LoginSession, row.session_id) if row is not None else None
    if row is None or family is None:
        return None
    return row, family


def rotate(session: Session, token: str, now: datetime, ttl: timedelta) -> tuple[LoginSession, str]:
    """Exchange a live refresh token for a new one of the same family.

    Raises InvalidRefreshToken, or RefreshTokenReused after revoking the family
    (the caller commits, so the revocation sticks though the request fails).
    """
    found = find(session, token)
    if found is None:
        raise InvalidRefreshToken("unknown refresh token")
    row, family = found
    if family.revoked_at is not None:
        raise InvalidRefreshToken("session revoked")
    if row.rotated_at is not None:
        revoke(session, family, now)
        raise RefreshTokenReused(family.user_id, family.id)
    if row.expires_at <= now:
        raise InvalidRefreshToken("refresh token expired")
    # The check and the rotation in one statement: a concurrent refresh that
    # read the same row finds rotated_at set and changes nothing.
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == row.token_hash, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=now)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult, result).rowcount != 1:
        revoke(session, family, now)
        raise RefreshTokenReused(family.user_id, family.id)
    return family, _issue(session, family.id, now, ttl)


def revoke(session: Session, family: LoginSession, now: datetime) -> None:
    """Revoke one family: none of its refresh tokens works again."""
    if family.revoked_at is None:
        family.revoked_at = now


def revoke_all(session: Session, user_id: str, now: datetime) -> None:
    """Revoke every family of ``user_id``."""
    session.execute(
        update(LoginSession)
        .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session="fetch")
    )


def delete_all(session: Session, user_id: str) -> None:
    """Remove every family and refresh token of ``user_id`` (account deletion)."""
    sids = select(LoginSession.id).where(LoginSession.user_id == user_id)
    session.execute(
        delete(RefreshToken)
        .where(RefreshToken.session_id.in_(sids))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(LoginSession)
        .where(LoginSession.user_id == user_id)
        .execution_options(synchronize_session=False)
    )
