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
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from auth_app import accounts
from auth_app.revocation import RevocationStore
from common.events import (
    USER_CREATED,
    USER_DELETED,
    USER_UPDATED,
    Envelope,
    EventType,
    InvalidMessage,
)


def handle_user_created(envelopes: list[Envelope], session: Session) -> None:
    """``user.created``: the user service holds a profile for these accounts."""
    times: dict[str, datetime] = {}
    for envelope in envelopes:
        # The first answer for a user wins.
        times.setdefault(envelope.data["user_id"], envelope.occurred_at)
    accounts.mark_provisioned(session, times)


def handle_user_updated(
    envelopes: list[Envelope],
    session: Session,
    revocation: RevocationStore,
    roles: Collection[str],
) -> None:
    """``user.updated``: an administrator changed ``is_active`` or ``roles``.

    Applied unless a later change of the field won, and told back to the user
    service (``user.sync`` ``updated``); a role name outside ``roles`` can
    never apply.
    """
    for envelope in envelopes:
        data = envelope.data
        try:
            accounts.apply_admin_changes(
                session, revocation, data["user_id"], data["changes"], envelope.occurred_at, roles
            )
        except accounts.InvalidRole as error:
            raise InvalidMessage(str(error)) from None


def handle_user_deleted(envelopes: list[Envelope], session: Session) -> None:
    """``user.deleted``: an administrator deleted the user; the account goes too."""
    for envelope in envelopes:
        accounts.delete_account_from_user_service(session, envelope.data["user_id"])


def handlers(revocation: RevocationStore, roles: Collection[str]) -> dict[EventType, Any]:
    """The auth worker's handlers by event type, bound to the revocation store and ``ROLES``."""
    return {
        USER_CREATED: handle_user_created,
        USER_UPDATED: functools.partial(handle_user_updated, revocation=revocation, roles=roles),
        USER_DELETED: handle_user_deleted,
    }
