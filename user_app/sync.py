"""What the user service does with the auth service's events: ``user.sync``.

The user worker hands :func:`handle_user_sync` the messages it took from the
queue, a list of one or many, their data already loaded by the catalogue's
schema (:data:`common.events.USER_SYNC`), by action:

- ``created`` creates or merges the profile and answers ``user.created``
  through the outbox in the same transaction;
- ``updated`` applies roles, activity or email changed at the auth service,
  each unless a later change of it was made here;
- ``deleted`` removes the profile and leaves a tombstone;
- ``sessions_revoked`` stores the time before which the user's tokens are dead;
- ``session_revoked`` refuses the tokens of one login session until they expire.

Each is idempotent and safe to receive late or out of order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Double, cast, delete, literal_column, null, select, union_all, update
from sqlalchemy.orm import Session

from common.db import dialect_insert, insert_ignoring_conflict, utcnow
from common.events import USER_CREATED, USER_SYNC, Envelope, EventType, InvalidMessage
from common.outbox import emit_all
from user_app.config import UserSettings
from user_app.models import OutboxEvent, PendingRevocation, Profile, RevokedSession, Tombstone
from user_app.profiles import fold_pending_revocation, get_profile, is_deleted, leave_tombstone

# A revoked session is forgotten this long after its tokens expired: longer
# than any clock leeway a token is checked with.
FORGET_AFTER_SECONDS = 300


@dataclass(frozen=True)
class _Created:
    """A ``created`` sync: the user, the event's time, the new row's values."""

    user_id: str
    occurred: datetime
    created_at: datetime | None
    fields: dict[str, Any]
    values: dict[str, Any]


def _created(data: dict[str, Any], occurred: datetime) -> _Created:
    fields = {
        "email": data["email"].lower(),
        "username": data["username"],
        "roles": list(dict.fromkeys(data.get("roles", []))),
        "is_active": data.get("is_active", True),
        "email_verified": data.get("email_verified", False),
    }
    now = utcnow()
    # The account's own creation time, when the sync carries it: the profile
    # of a user is as old as the user, however late the sync arrived.
    created_at = data.get("created_at")
    values = {
        "id": data["user_id"],
        "created_at": created_at or now,
        "updated_at": now,
        "synced_at": occurred,
        **fields,
    }
    return _Created(data["user_id"], occurred, created_at, fields, values)


class CreatedProfile(Protocol):
    """What :func:`apply_users_created` answers for each user: a profile's row or object."""

    id: str
    created_at: datetime


def apply_users_created(
    session: Session, events: list[tuple[dict[str, Any], datetime]]
) -> list[CreatedProfile | None]:
    """Create or merge the profiles of newly registered users, each at most once in ``events``.

    Users seen here for the first time, the common case, cost two statements
    for the whole lot (tombstones, profiles and pending revocations looked up
    together in one, then one multi-row insert), both Core statements: no ORM
    object is made for a new profile. A profile already made from the user's
    first request is merged: email and username follow the newest sync, roles
    and is_active follow it unless an administrator here set them after the
    event; the user's own fields are never touched. Returns, in the order of
    ``events``, the new profiles' rows and the merged profiles, None for a
    deleted user.
    """
    parsed = [_created(data, occurred) for data, occurred in events]
    ids = [event.user_id for event in parsed]
    if len(set(ids)) != len(ids):
        raise ValueError("apply_users_created takes each user at most once")
    deleted, existing, pending = _known(session, ids)
    rows = [
        {**event.values, "tokens_valid_after": pending.get(event.user_id)}
        for event in parsed
        if event.user_id not in deleted and event.user_id not in existing
    ]
    inserted: dict[str, CreatedProfile] = {}
    if rows:
        profiles = Profile.__table__
        statement = dialect_insert(session)(profiles).on_conflict_do_nothing()
        inserted = {row.id: row for row in session.execute(statement.returning(*profiles.c), rows)}
        folded = [user_id for user_id in inserted if pending.get(user_id) is not None]
        if folded:
            session.execute(delete(PendingRevocation).where(PendingRevocation.user_id.in_(folded)))
    # Deleted users, existing profiles, and rows another writer inserted first.
    return [inserted.get(event.user_id) or _merge_created(session, event) for event in parsed]


def _known(session: Session, ids: list[str]) -> tuple[set[str], set[str], dict[str, float | None]]:
    """Of ``ids``: the deleted users, those with a profile, and pending revocations, at once."""
    deleted, existing, pending = 1, 2, 3
    lookup = union_all(
        select(literal_column(str(deleted)), Tombstone.user_id, cast(null(), Double)).where(
            Tombstone.user_id.in_(ids)
        ),
        select(literal_column(str(existing)), Profile.id, cast(null(), Double)).where(
            Profile.id.in_(ids)
        ),
        select(
            literal_column(str(pending)),
            PendingRevocation.user_id,
            PendingRevocation.revoked_before,
        ).where(PendingRevocation.user_id.in_(ids)),
    )
    found: dict[int, dict[str, float | None]] = {deleted: {}, existing: {}, pending: {}}
    for kind, user_id, revoked_before in session.execute(lookup):
        found[kind][user_id] = revoked_before
    return set(found[deleted]), set(found[existing]), found[pending]


def _merge_created(session: Session, event: _Created) -> Profile | None:
    if is_deleted(session, event.user_id):
        return None
    insert_ignoring_conflict(session, Profile, **event.values)
    profile = get_profile(session, event.user_id, for_update=True)
    if profile is None:  # deleted by another writer since
        return None
    fold_pending_revocation(session, profile)
    occurred, fields = event.occurred, event.fields
    if event.created_at is not None and event.created_at < profile.created_at:
        profile.created_at = event.created_at
    if profile.synced_at is None or profile.synced_at <= occurred:
        profile.email = fields["email"]
        profile.username = fields["username"]
        profile.email_verified = fields["email_verified"]
        profile.synced_at = occurred
    if profile.roles_changed_at is None or profile.roles_changed_at < occurred:
        if list(profile.roles) != fields["roles"]:
            profile.roles = fields["roles"]
    if profile.active_changed_at is None or profile.active_changed_at < occurred:
        profile.is_active = fields["is_active"]
    return profile


def apply_user_deleted(session: Session, user_id: str, occurred_at: datetime) -> None:
    """Delete the user's profile (if any) and leave a tombstone; repeating it changes nothing."""
    profile = session.get(Profile, user_id)
    if profile is not None:
        session.delete(profile)
    leave_tombstone(session, user_id, occurred_at)


def apply_sessions_revoked(session: Session, user_id: str, revoked_before: float) -> None:
    """Refuse the user's access tokens issued up to ``revoked_before`` (epoch seconds).

    Keeps the latest revocation seen. Before the profile exists the value is
    kept aside and folded into the profile when it is created; for a deleted
    user nothing is stored.
    """
    profile = get_profile(session, user_id, for_update=True)
    if profile is not None:
        profile.tokens_valid_after = max(profile.tokens_valid_after or 0.0, revoked_before)
        return
    if is_deleted(session, user_id):
        return
    insert_ignoring_conflict(
        session, PendingRevocation, user_id=user_id, revoked_before=revoked_before
    )
    # A statement, not a change left pending in the session: the multi-row
    # profile insert folds this row in from what it reads with SQL.
    later = PendingRevocation.revoked_before < revoked_before
    session.execute(
        update(PendingRevocation)
        .where(PendingRevocation.user_id == user_id, later)
        .values(revoked_before=revoked_before)
    )


def _profile_for_change(session: Session, user_id: str) -> Profile | None:
    """The profile a change applies to; made empty if the ``created`` sync is still on its way.

    The ``created`` sync merges into it later and, its times being older,
    keeps what the change set. None for a deleted user.
    """
    profile = get_profile(session, user_id, for_update=True)
    if profile is not None or is_deleted(session, user_id):
        return profile
    now = utcnow()
    insert_ignoring_conflict(
        session,
        Profile,
        id=user_id,
        email="",
        username="",
        roles=[],
        created_at=now,
        updated_at=now,
    )
    profile = get_profile(session, user_id, for_update=True)
    if profile is not None:
        fold_pending_revocation(session, profile)
    return profile


def apply_user_updated(
    session: Session, user_id: str, changes: dict[str, Any], occurred_at: datetime
) -> None:
    """Apply roles, activity or email changed at the auth service at ``occurred_at``.

    Each field changes only if it last changed earlier (here or there), so an
    administrator's later decision here, or a later change there that
    overtook this message, is never undone.
    """
    profile = _profile_for_change(session, user_id)
    if profile is None:
        return
    if "roles" in changes and _newer(occurred_at, profile.roles_changed_at):
        profile.roles = list(dict.fromkeys(changes["roles"]))
        profile.roles_changed_at = occurred_at
    if "is_active" in changes and _newer(occurred_at, profile.active_changed_at):
        profile.is_active = changes["is_active"]
        profile.active_changed_at = occurred_at
    if ("email" in changes or "email_verified" in changes) and _newer(
        occurred_at, profile.synced_at
    ):
        if "email" in changes:
            profile.email = changes["email"].lower()
        if "email_verified" in changes:
            profile.email_verified = changes["email_verified"]
        profile.synced_at = occurred_at


def _newer(at: datetime, last: datetime | None) -> bool:
    return last is None or at > last


def apply_session_revoked(
    session: Session, user_id: str, session_id: str, expires_at: float
) -> None:
    """Refuse access tokens of login session ``session_id`` until they expire (``expires_at``).

    The user's entries whose tokens are long expired are forgotten on the way.
    """
    if is_deleted(session, user_id):
        return
    insert_ignoring_conflict(
        session, RevokedSession, session_id=session_id, user_id=user_id, expires_at=expires_at
    )
    session.execute(
        delete(RevokedSession).where(
            RevokedSession.user_id == user_id,
            RevokedSession.expires_at < time.time() - FORGET_AFTER_SECONDS,
        )
    )


def _each_user_once(envelopes: list[Envelope]) -> Iterator[list[Envelope]]:
    """The messages in order, cut wherever a user comes again.

    Within one run every message concerns another user, so its messages touch
    different rows and may be applied in any order; runs follow each other.
    """
    run: list[Envelope] = []
    users: set[str] = set()
    for envelope in envelopes:
        user_id = envelope.data["user_id"]
        if user_id in users:
            yield run
            run, users = [], set()
        run.append(envelope)
        users.add(user_id)
    if run:
        yield run


def handle_user_sync(envelopes: list[Envelope], session: Session) -> None:
    """Apply ``user.sync`` messages in order, in the caller's transaction."""
    for run in _each_user_once(envelopes):
        created = [envelope for envelope in run if envelope.data["action"] == "created"]
        profiles = apply_users_created(session, [(e.data, e.occurred_at) for e in created])
        # The auth service marks each account provisioned.
        answers = [
            ({"user_id": profile.id, "profile_created_at": profile.created_at}, envelope.id)
            for envelope, profile in zip(created, profiles, strict=True)
            if profile is not None
        ]
        emit_all(session, OutboxEvent, USER_CREATED, answers)
        for envelope in run:
            data = envelope.data
            action = data["action"]
            if action == "updated":
                apply_user_updated(session, data["user_id"], data["changes"], envelope.occurred_at)
            elif action == "deleted":
                apply_user_deleted(session, data["user_id"], envelope.occurred_at)
            elif action == "sessions_revoked":
                apply_sessions_revoked(session, data["user_id"], data["revoked_before"])
            elif action == "session_revoked":
                apply_session_revoked(
                    session, data["user_id"], data["session_id"], data["expires_at"]
                )


#: The user worker's handlers, by event type.
HANDLERS: dict[EventType, Any] = {USER_SYNC: handle_user_sync}


def future_times(settings: UserSettings) -> Callable[[Envelope], None]:
    """The user worker's rule for the times a sync carries: none further ahead than can be.

    A cut-off (``revoked_before``) is at most a second ahead of its event, and a
    session's tokens live at most ``ACCESS_TOKEN_EXPIRE_MINUTES``; either
    further ahead than that plus the clock leeway would refuse tokens nobody
    revoked, so the message can never apply (InvalidMessage).
    """
    leeway = settings.jwt_leeway_seconds

    def check(envelope: Envelope) -> None:
        data = envelope.data
        now = time.time()
        if data.get("revoked_before", 0) > now + 1 + leeway:
            raise InvalidMessage("revoked_before is in the future")
        if data.get("expires_at", 0) > now + settings.access_token_ttl + leeway:
            raise InvalidMessage("expires_at is further ahead than a token lives")

    return check
