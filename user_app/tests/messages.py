"""``user.sync`` messages delivered as the user worker delivers them, for the user app's tests.

Each message goes the whole way a real one goes: written as a message body,
parsed, its data loaded by the catalogue's schema (or refused with
InvalidMessage), then applied by :func:`user_app.sync.handle_user_sync`.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from common.events import USER_SYNC, Envelope, parse_envelope
from common.fields import canonical_id
from user_app import sync
from user_app.models import Profile


def envelope(data: Any, occurred_at: Any, correlation_id: str | None = "req-1") -> Envelope:
    """A ``user.sync`` message with ``data``, as the user worker accepts it off the wire."""
    body = {
        "id": str(uuid.uuid4()),
        "type": USER_SYNC.name,
        "version": 1,
        "occurred_at": occurred_at.isoformat()
        if isinstance(occurred_at, datetime)
        else occurred_at,
        "source": "auth_app",
        "correlation_id": correlation_id,
        "data": data,
    }
    return USER_SYNC.accept(parse_envelope(json.dumps(body)))


def deliver(session: Session, data: Any, occurred_at: Any) -> None:
    """Apply one ``user.sync`` message in the caller's transaction."""
    sync.handle_user_sync([envelope(data, occurred_at)], session)


def apply_user_created(session: Session, data: Any, occurred_at: Any) -> Profile | None:
    """Deliver a ``created`` sync; the profile it leaves (None for a deleted user)."""
    if isinstance(data, dict):
        data = {"action": "created", **data}
    deliver(session, data, occurred_at)
    user_id = canonical_id(data.get("user_id") if isinstance(data, dict) else None)
    return session.get(Profile, user_id) if user_id else None


def apply_user_deleted(session: Session, user_id: Any, occurred_at: Any) -> None:
    """Deliver a ``deleted`` sync."""
    deliver(session, {"user_id": user_id, "action": "deleted"}, occurred_at)


def apply_sessions_revoked(session: Session, user_id: Any, revoked_before: Any) -> None:
    """Deliver a ``sessions_revoked`` sync."""
    data = {"user_id": user_id, "action": "sessions_revoked", "revoked_before": revoked_before}
    deliver(session, data, datetime.now().astimezone())


def apply_users_created(
    session: Session, events: list[tuple[dict[str, Any], datetime]]
) -> list[Profile | None]:
    """:func:`user_app.sync.apply_users_created` on data loaded as the worker loads it."""
    accepted = [envelope(data, occurred) for data, occurred in events]
    return sync.apply_users_created(session, [(e.data, e.occurred_at) for e in accepted])
