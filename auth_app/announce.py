"""What the auth service tells the user service: ``user.sync``, one function per action.

Each writes its event to the outbox in the caller's transaction, so it goes out
exactly when the change it reports commits.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from auth_app.models import LoginSession, OutboxEvent, User
from common.events import USER_SYNC
from common.outbox import emit


def _sync(
    session: Session, user_id: str, action: str, occurred_at: datetime | None = None, **data: Any
) -> None:
    emit(
        session,
        OutboxEvent,
        USER_SYNC,
        {"user_id": user_id, "action": action, **data},
        occurred_at=occurred_at,
    )


def created(session: Session, user: User) -> None:
    """A new account: what the user service makes its profile from."""
    _sync(
        session,
        user.id,
        "created",
        email=user.email,
        username=user.username,
        roles=list(user.roles),
        is_active=user.is_active,
        email_verified=user.email_verified,
        created_at=user.created_at,
    )


def updated(session: Session, user: User, changes: dict[str, Any], occurred_at: datetime) -> None:
    """Roles, activity or email changed, at ``occurred_at``: the time later changes beat."""
    _sync(session, user.id, "updated", occurred_at=occurred_at, changes=changes)


def deleted(session: Session, user_id: str) -> None:
    """The account is gone."""
    _sync(session, user_id, "deleted")


def sessions_revoked(session: Session, user_id: str, revoked_before: int) -> None:
    """Every token of the user issued before ``revoked_before`` (epoch seconds) is dead."""
    _sync(session, user_id, "sessions_revoked", revoked_before=revoked_before)


def session_revoked(session: Session, family: LoginSession, tokens_until: float) -> None:
    """One login session ended; its access tokens could live until ``tokens_until`` (epoch)."""
    _sync(
        session,
        family.user_id,
        "session_revoked",
        session_id=family.id,
        expires_at=math.ceil(tokens_until),
    )
