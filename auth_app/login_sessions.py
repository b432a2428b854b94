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
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import delete, exists, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from auth_app.models import LoginSession, RefreshToken
from auth_app.security_events import Client, current_client

MAX_REFRESH_TOKEN_LENGTH = 512


class InvalidRefreshToken(Exception):
    """The refresh token is unknown, expired or of a revoked family."""


class EndedFamily(InvalidRefreshToken):
    """The refresh token's login session must end now; ``family`` is it."""

    def __init__(self, reason: str, family: LoginSession) -> None:
        super().__init__(reason)
        self.family = family


class RefreshTokenReused(EndedFamily):
    """A refresh token rotated longer ago than the grace came back: a replay."""

    def __init__(self, family: LoginSession) -> None:
        super().__init__("refresh token reused", family)


class SessionEnded(EndedFamily):
    """The login reached its absolute end (``SESSION_MAX_AGE_DAYS``)."""

    def __init__(self, family: LoginSession) -> None:
        super().__init__("session ended", family)


def hash_token(token: str) -> str:
    """The stored form of a refresh token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _issue(session: Session, family: LoginSession, now: datetime, ttl: timedelta) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            token_hash=hash_token(token),
            session_id=family.id,
            issued_at=now,
            # No refresh token outlives its login.
            expires_at=min(now + ttl, family.expires_at),
        )
    )
    return token


def start(
    session: Session,
    user_id: str,
    now: datetime,
    ttl: timedelta,
    max_age: timedelta,
    *,
    amr: Sequence[str] = ("pwd",),
    client: Client | None = None,
) -> tuple[LoginSession, str]:
    """Open a login session for ``user_id`` that ends ``max_age`` from now.

    ``amr`` says how the user proved who they are; ``client`` where from
    (the current request's, unless given). Returns the session and its first
    refresh token.
    """
    client = client or current_client()
    # revoked_at given, though None: a bulk revocation later in this
    # transaction then updates this object too (the ORM only refreshes
    # attributes an object holds).
    family = LoginSession(
        user_id=user_id,
        created_at=now,
        expires_at=now + max_age,
        revoked_at=None,
        last_used_at=now,
        ip=client.ip,
        user_agent=client.user_agent,
        amr=list(amr),
    )
    session.add(family)
    session.flush()
    return family, _issue(session, family, now, ttl)


def find(session: Session, token: str) -> tuple[RefreshToken, LoginSession] | None:
    """The stored token and its family, whatever their state, or None."""
    if not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return None
    row = session.get(RefreshToken, hash_token(token))
    family = session.get(LoginSession, row.session_id) if row is not None else None
    if row is None or family is None:
        return None
    return row, family


def lock(session: Session, family: LoginSession) -> LoginSession:
    """``family`` as it is now, its row locked until the transaction ends (PostgreSQL).

    Rotating a family's tokens and revoking the family both take this lock
    (revoking through the ``UPDATE`` of :func:`revoke_all`), so one waits for
    the other: a refresh never mints a token for a family being revoked.
    """
    locked = session.get(LoginSession, family.id, with_for_update=True, populate_existing=True)
    return locked if locked is not None else family


def rotate(
    session: Session,
    token: str,
    now: datetime,
    ttl: timedelta,
    grace: timedelta = timedelta(0),
) -> tuple[LoginSession, str]:
    """Exchange a live refresh token for a new one of the same family.

    A token rotated at most ``grace`` ago answers once more with a new token
    of its family (two tabs refreshing at once); one rotated longer ago is a
    replay. Raises InvalidRefreshToken; RefreshTokenReused or SessionEnded
    when the family must end (the caller ends it and commits, so that sticks
    though the refresh fails).
    """
    found = find(session, token)
    if found is None:
        raise InvalidRefreshToken("unknown refresh token")
    row, family = found
    family = lock(session, family)
    session.refresh(row)
    if family.revoked_at is not None:
        raise InvalidRefreshToken("session revoked")
    if family.expires_at <= now:
        raise SessionEnded(family)
    if row.expires_at <= now:
        raise InvalidRefreshToken("refresh token expired")
    if row.rotated_at is None:
        # The check and the rotation in one statement: where no row lock
        # serialises refreshes (SQLite), the one that loses changes nothing.
        result = session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == row.token_hash, RefreshToken.rotated_at.is_(None))
            .values(rotated_at=now)
            .execution_options(synchronize_session=False)
        )
        if cast(CursorResult, result).rowcount == 1:
            family.last_used_at = now
            return family, _issue(session, family, now, ttl)
        session.refresh(row)
    # ``now`` was read before the lock: a refresh that waited on the one that
    # rotated the token can see a rotation "after" its own now. No grace (0)
    # must still mean that nothing answers twice.
    if grace > timedelta(0) and row.rotated_at is not None and now - row.rotated_at <= grace:
        family.last_used_at = now
        return family, _issue(session, family, now, ttl)
    raise RefreshTokenReused(family)


def revoke_all(session: Session, user_id: str, now: datetime) -> None:
    """Revoke every family of ``user_id`` (one family at a time: ``RevocationStore``)."""
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


def live(session: Session, user_id: str, now: datetime) -> list[tuple[LoginSession, datetime]]:
    """The user's live sessions, newest first, each with when it ends unless refreshed.

    Live: not revoked, not past its absolute end, and holding an unexpired
    refresh token that was never rotated (or it could never be refreshed again).
    """
    current = (
        select(RefreshToken.expires_at)
        .where(
            RefreshToken.session_id == LoginSession.id,
            RefreshToken.rotated_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .order_by(RefreshToken.expires_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = session.execute(
        select(LoginSession, current)
        .where(
            LoginSession.user_id == user_id,
            LoginSession.revoked_at.is_(None),
            LoginSession.expires_at > now,
            exists().where(
                RefreshToken.session_id == LoginSession.id,
                RefreshToken.rotated_at.is_(None),
                RefreshToken.expires_at > now,
            ),
        )
        .order_by(LoginSession.created_at.desc(), LoginSession.id)
    ).all()
    return [(family, min(family.expires_at, until)) for family, until in rows]


def live_one(session: Session, user_id: str, sid: str, now: datetime) -> LoginSession | None:
    """Session ``sid`` if it is one of ``user_id``'s live sessions."""
    for family, _until in live(session, user_id, now):
        if family.id == sid:
            return family
    return None
