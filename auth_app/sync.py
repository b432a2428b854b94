"""What the auth service does with the user service's events (the auth worker applies them).

Each handler takes the messages of one type the worker took from the queue, a
list of one or many, their data loaded by the catalogue's schema:
``user.created`` marks the account as provisioned, ``user.updated`` applies
an administrator's ``is_active`` and ``roles`` changes (deactivation revokes
every session and token, and login then answers 403), ``user.deleted``
removes the account and revokes everything.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from auth_app import accounts
from auth_app.revocation import RevocationStore
from common.events import USER_CREATED, USER_DELETED, USER_UPDATED, Envelope, EventType


def handle_user_created(envelopes: list[Envelope], session: Session) -> None:
    """``user.created``: the user service holds a profile for these accounts."""
    times: dict[str, datetime] = {}
    for envelope in envelopes:
        # The first answer for a user wins.
        times.setdefault(envelope.data["user_id"], envelope.occurred_at)
    accounts.mark_provisioned(session, times)


def handle_user_updated(
    envelopes: list[Envelope], session: Session, revocation: RevocationStore
) -> None:
    """``user.updated``: an administrator changed ``is_active`` or ``roles``."""
    for envelope in envelopes:
        data = envelope.data
        accounts.apply_admin_changes(
            session, revocation, data["user_id"], data["changes"], envelope.occurred_at
        )


def handle_user_deleted(
    envelopes: list[Envelope], session: Session, revocation: RevocationStore
) -> None:
    """``user.deleted``: an administrator deleted the user; the account goes too."""
    for envelope in envelopes:
        accounts.delete_account_from_user_service(session, revocation, envelope.data["user_id"])


def handlers(revocation: RevocationStore) -> dict[EventType, Any]:
    """The auth worker's handlers by event type, bound to the revocation store."""
    return {
        USER_CREATED: handle_user_created,
        USER_UPDATED: functools.partial(handle_user_updated, revocation=revocation),
        USER_DELETED: functools.partial(handle_user_deleted, revocation=revocation),
    }
