"""One-time tokens mailed to users: password reset, email verification, email change.

A token is 32 random bytes (URL-safe base64), handed out once, inside a mail's
link; the database keeps only its SHA-256 hash, the address it was mailed to and
its expiry. A user has at most one token per purpose: issuing a new one deletes
the older, so only the latest mail's link works. Using a token deletes it, in
the transaction of the change it allows, so of two uses at once exactly one
wins. Functions take the caller's session and never commit.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from auth_app.models import AccountToken
from common.db import utcnow


class Purpose(StrEnum):
    """What a token allows."""

    RESET_PASSWORD = "reset_password"
    VERIFY_EMAIL = "verify_email"
    CHANGE_EMAIL = "change_email"


class InvalidToken(Exception):
    """Unknown, already used, replaced by a newer one, or expired."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def issue(
    session: Session,
    user_id: str,
    purpose: Purpose,
    email: str,
    ttl: timedelta,
    *,
    requested: bool = True,
    now: datetime | None = None,
) -> str:
    """A new token of ``purpose`` for the user, mailed to ``email``; any older one dies.

    ``requested`` is False for a token sent unasked (the verification mail of a
    registration), which does not count against the user's resend interval.
    The caller holds the user's row lock, so two issues for one user take turns.
    """
    now = now or utcnow()
    revoke(session, user_id, purpose)
    token = secrets.token_urlsafe(32)
    session.add(
        AccountToken(
            token_hash=_digest(token),
            user_id=user_id,
            purpose=purpose.value,
            email=email,
            created_at=now,
            expires_at=now + ttl,
            requested=requested,
        )
    )
    session.flush()
    return token


def latest(session: Session, user_id: str, purpose: Purpose) -> AccountToken | None:
    """The user's live-or-expired token of ``purpose``, if one was issued and not used."""
    return session.scalars(
        select(AccountToken).where(
            AccountToken.user_id == user_id, AccountToken.purpose == purpose.value
        )
    ).first()


def find(session: Session, purpose: Purpose, token: str) -> AccountToken:
    """The unexpired token row of ``purpose`` for ``token``, not yet used; else InvalidToken."""
    row = session.get(AccountToken, _digest(token))
    if row is None or row.purpose != purpose.value or row.expires_at <= utcnow():
        raise InvalidToken()
    return row


def consume(session: Session, row: AccountToken) -> None:
    """Use the token up: InvalidToken if another request used it first.

    One ``DELETE`` decides: on PostgreSQL a second deleter waits for the first
    to commit, then deletes nothing.
    """
    deleted = session.execute(
        delete(AccountToken)
        .where(AccountToken.token_hash == row.token_hash)
        .execution_options(synchronize_session=False)
    )
    if deleted.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidToken()
    session.expunge(row)


def revoke(session: Session, user_id: str, purpose: Purpose | None = None) -> None:
    """Delete the user's tokens of ``purpose`` (every purpose when None)."""
    query = delete(AccountToken).where(AccountToken.user_id == user_id)
    if purpose is not None:
        query = query.where(AccountToken.purpose == purpose.value)
    session.execute(query.execution_options(synchronize_session=False))
