"""The security event log: what happened to an account, when, from where.

Every event is written in the transaction of the thing it records, so it is
there exactly when that is: a login's with its session, a password reset's
with the new password. A failed login changes nothing else and commits its
event on its own. Each event carries the client's address (behind
``TRUSTED_PROXY_COUNT`` proxies) and user agent, which the web app binds for
the request (:func:`bind_client`); events of the workers have neither.

Events are kept ``SECURITY_EVENT_RETENTION_DAYS``; :func:`purge` removes older
ones in small batches, each its own short transaction, so the table that every
login writes to is never locked for long.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from auth_app.models import SecurityEvent
from common.db import delete_in_batches, utcnow


class EventType(StrEnum):
    """The kinds of event (the contract's list)."""

    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"
    LOGIN_THROTTLED = "login_throttled"
    MFA_FAILED = "mfa_failed"
    LOGOUT = "logout"
    LOGOUT_ALL = "logout_all"
    SESSION_REVOKED = "session_revoked"
    REFRESH_REUSE_DETECTED = "refresh_reuse_detected"
    PASSWORD_CHANGED = "password_changed"
    PASSWORD_RESET_REQUESTED = "password_reset_requested"
    PASSWORD_RESET = "password_reset"
    EMAIL_VERIFIED = "email_verified"
    EMAIL_CHANGED = "email_changed"
    MFA_ENABLED = "mfa_enabled"
    MFA_DISABLED = "mfa_disabled"
    RECOVERY_CODE_USED = "recovery_code_used"
    ACCOUNT_DELETED = "account_deleted"


#: How much of a User-Agent header is kept.
MAX_USER_AGENT = 255
# Control characters (NUL among them, which PostgreSQL cannot store) never reach a row.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Client:
    """Who is on the other end of the current request."""

    ip: str | None = None
    user_agent: str | None = None
    #: The login session of the request's access token, once it has been checked.
    session_id: str | None = None


NOBODY = Client()
_client: contextvars.ContextVar[Client | None] = contextvars.ContextVar("client", default=None)


def clean_user_agent(value: str | None) -> str | None:
    """A User-Agent as it is kept: control characters dropped, cut to a sane length."""
    if not value:
        return None
    return _CONTROL.sub("", value)[:MAX_USER_AGENT] or None


def bind_client(ip: str | None, user_agent: str | None) -> contextvars.Token[Client | None]:
    """Make ``ip`` and ``user_agent`` the current client (until :func:`unbind_client`)."""
    return _client.set(Client(ip if ip and ip != "-" else None, clean_user_agent(user_agent)))


def bind_session(session_id: str | None) -> None:
    """The current request acts in login session ``session_id`` (its token's ``sid``)."""
    _client.set(replace(current_client(), session_id=session_id))


def unbind_client(token: contextvars.Token[Client | None]) -> None:
    """Forget the client bound by :func:`bind_client`."""
    _client.reset(token)


def current_client() -> Client:
    """The client of the current request (nobody, outside one)."""
    return _client.get() or NOBODY


def record(
    session: Session,
    event_type: EventType,
    user_id: str | None,
    session_id: str | None = None,
    at: datetime | None = None,
) -> None:
    """Write an event in the caller's transaction, with the current client.

    ``session_id`` defaults to the session of the request's access token, if any.
    """
    client = current_client()
    session.add(
        SecurityEvent(
            type=event_type.value,
            at=at or utcnow(),
            user_id=user_id,
            ip=client.ip,
            user_agent=client.user_agent,
            session_id=session_id or client.session_id,
        )
    )


def page(
    session: Session,
    *,
    user_id: str | None = None,
    event_type: str | None = None,
    offset: int = 0,
    limit: int = 20,
) -> tuple[int, list[SecurityEvent]]:
    """``(total, events)``: the events matching, newest first, ``limit`` from ``offset``."""
    conditions = []
    if user_id is not None:
        conditions.append(SecurityEvent.user_id == user_id)
    if event_type is not None:
        conditions.append(SecurityEvent.type == event_type)
    total = session.scalar(select(func.count()).select_from(SecurityEvent).where(*conditions))
    if not total or offset >= total:
        return total or 0, []
    events = session.scalars(
        select(SecurityEvent)
        .where(*conditions)
        .order_by(SecurityEvent.at.desc(), SecurityEvent.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return total, list(events)


def purge(engine: Engine, before: datetime, batch_size: int = 1000) -> int:
    """Delete the events older than ``before``, ``batch_size`` at a time; how many went.

    Each batch is its own transaction, deleting by key the oldest rows found
    through the index on ``at`` (:func:`common.db.delete_in_batches`): a login
    inserting meanwhile waits for no lock, and a purge of millions never holds
    one for long.
    """
    return delete_in_batches(
        engine,
        SecurityEvent.id,
        SecurityEvent.at < before,
        order_by=SecurityEvent.at,
        batch_size=batch_size,
    )
