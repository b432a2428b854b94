"""The user service's domain: profiles, their revocation state and the sync they receive.

Every function takes a session and never commits: the view or the worker does,
so an event written with :func:`common.events.emit` lands in the same
transaction as the change that caused it. The ``apply_*`` functions are what
the user worker calls for ``user.sync`` messages; each is idempotent and safe
to receive out of order.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, exists, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.db import utcnow
from common.events import AUTH_EVENTS, emit
from user_app.models import OutboxEvent, PendingRevocation, Profile, Tombstone

SOURCE = "user_app"
ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_ROLES = 20
EDITABLE_FIELDS = ("display_name", "bio", "avatar_url")


class InvalidEventData(Exception):
    """A sync message's data can never be applied (the worker dead-letters it)."""


@dataclass(frozen=True)
class AccessState:
    """What the user service knows about a token's subject."""

    profile: Profile | None
    deleted: bool
    tokens_valid_after: float | None


def normalise_user_id(value: object) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID string, or None if it is not one."""
    if not isinstance(value, str) or len(value) > 36:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _dialect_insert(session: Session):
    # The insert construct that knows ON CONFLICT on this session's database.
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _insert_ignoring_conflict(session: Session, model: type, **values) -> None:
    # INSERT ... ON CONFLICT DO NOTHING: two first requests (or a request and the
    # worker) creating the same row at once both succeed, neither sees an error.
    session.execute(_dialect_insert(session)(model).values(**values).on_conflict_do_nothing())


def _insert_new_profile(session: Session, user_id: str, values: dict) -> Profile | None:
    """Create the profile in one statement when neither it nor a tombstone exists.

    A pending revocation is folded in by the same statement. Returns the new
    profile, or None when the row existed or the user was deleted: the caller
    then takes the slower way that merges. Changes pending in the session are
    not flushed first (in a worker's batch they are the earlier messages'
    outbox rows): tombstones and pending revocations, the rows this statement
    reads, are always written with statements of their own, never left pending.
    """
    table = Profile.__table__
    pending = (
        select(PendingRevocation.revoked_before)
        .where(PendingRevocation.user_id == user_id)
        .scalar_subquery()
    )
    source = select(
        *(literal(value, table.c[name].type).label(name) for name, value in values.items()),
        pending.label("tokens_valid_after"),
    ).where(~exists().where(Tombstone.user_id == user_id))
    statement = (
        _dialect_insert(session)(Profile)
        .from_select([*values, "tokens_valid_after"], source)
        .on_conflict_do_nothing()
        .returning(Profile)
    )
    with session.no_autoflush:
        profile = session.scalars(statement).first()
        if profile is not None and profile.tokens_valid_after is not None:
            session.execute(delete(PendingRevocation).where(PendingRevocation.user_id == user_id))
    return profile


def is_deleted(session: Session, user_id: str) -> bool:
    """Whether the user was deleted (a tombstone exists)."""
    return session.get(Tombstone, user_id) is not None


def access_state(session: Session, user_id: str) -> AccessState:
    """The profile, deletion and revocation state that decide whether a token still works."""
    profile = session.get(Profile, user_id)
    if profile is not None:
        return AccessState(profile, False, profile.tokens_valid_after)
    if is_deleted(session, user_id):
        return AccessState(None, True, None)
    pending = session.get(PendingRevocation, user_id)
    return AccessState(None, False, pending.revoked_before if pending else None)


def token_revoked(iat: float, tokens_valid_after: float | None) -> bool:
    """Whether a token issued at ``iat`` predates the user's last session revocation.

    The rule, shared with the auth service: a token is refused when
    ``iat < revoked_before``. The auth service publishes ``revoked_before`` as
    the whole second after the revocation instant (``floor(now) + 1``) and
    never issues that user a token with an ``iat`` below it, so a token issued
    earlier in the same second as a logout-all (``iat == floor(now)``) is
    refused while the pair issued right after it (``iat == revoked_before``) is
    accepted. Should a fractional value arrive, the same comparison refuses
    every whole-second ``iat`` up to and including the revocation's own second.
    """
    return tokens_valid_after is not None and iat < tokens_valid_after


def _fold_pending_revocation(session: Session, profile: Profile) -> None:
    pending = session.get(PendingRevocation, profile.id)
    if pending is not None:
        current = profile.tokens_valid_after
        profile.tokens_valid_after = max(current or 0.0, pending.revoked_before)
        session.delete(pending)


def _claim_str(claims: dict, name: str, limit: int) -> str:
    value = claims.get(name)
    return value[:limit] if isinstance(value, str) else ""


def ensure_profile(session: Session, claims: dict) -> Profile | None:
    """The profile of the token's subject, created from its claims if the sync has not come yet.

    Safe when two first requests race. Returns None for a deleted user.
    """
    user_id = claims["sub"]
    profile = session.get(Profile, user_id)
    if profile is not None:
        return profile
    if is_deleted(session, user_id):
        return None
    roles = claims.get("roles")
    now = utcnow()
    _insert_ignoring_conflict(
        session,
        Profile,
        id=user_id,
        email=_claim_str(claims, "email", 320).lower(),
        username=_claim_str(claims, "username", 64),
        roles=_clean_roles(roles) if isinstance(roles, list) else [],
        is_active=True,
        created_at=now,
        updated_at=now,
    )
    profile = session.get(Profile, user_id, populate_existing=True)
    _fold_pending_revocation(session, profile)
    return profile


def _clean_roles(roles: list) -> list[str]:
    # Keep the first occurrence of each role, in order.
    return list(dict.fromkeys(r for r in roles if isinstance(r, str) and ROLE_RE.match(r)))


def get_profile(session: Session, user_id: str) -> Profile | None:
    """The profile with this id, or None."""
    return session.get(Profile, user_id)


def effective_roles(profile: Profile | None, token_roles: list[str]) -> list[str]:
    """The roles that authorise a request.

    Once an administrator here has set a user's roles, the profile's roles are
    authoritative (an old token still carrying a removed role gets nothing from
    it). Until then the token's roles, fresh from the auth service, count.
    """
    if profile is not None and profile.roles_changed_at is not None:
        return list(profile.roles)
    return list(token_roles)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_profiles(
    session: Session,
    *,
    q: str | None = None,
    is_active: bool | None = None,
    offset: int = 0,
    limit: int = 20,
) -> tuple[int, list[Profile]]:
    """``(total, page)`` of profiles matching ``q`` and ``is_active``, oldest first.

    ``q`` is a case-insensitive substring of email, username or display name;
    ``%`` and ``_`` in it match themselves.
    """
    conditions = []
    if q:
        pattern = f"%{_escape_like(q.lower())}%"
        conditions.append(
            or_(
                *(
                    func.lower(column).like(pattern, escape="\\")
                    for column in (Profile.email, Profile.username, Profile.display_name)
                )
            )
        )
    if is_active is not None:
        conditions.append(Profile.is_active.is_(is_active))
    total = session.scalar(select(func.count()).select_from(Profile).where(*conditions))
    if offset >= total:
        # Past the last page: nothing to fetch, and an offset beyond the database's
        # integer range (``?page=10**30``) never reaches it.
        return total, []
    page = session.scalars(
        select(Profile)
        .where(*conditions)
        .order_by(Profile.created_at, Profile.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return total or 0, list(page)


def update_own_profile(profile: Profile, changes: dict) -> None:
    """Apply a user's own edits (display name, bio, avatar URL; None clears)."""
    for name in EDITABLE_FIELDS:
        if name in changes:
            setattr(profile, name, changes[name])


def admin_update_profile(session: Session, profile: Profile, changes: dict) -> dict:
    """Apply an administrator's edits; emit ``user.updated`` if is_active or roles changed.

    Returns the changes reported to the auth service (empty when none).
    """
    update_own_profile(profile, changes)
    now = utcnow()
    reported: dict = {}
    if "is_active" in changes and changes["is_active"] != profile.is_active:
        profile.is_active = changes["is_active"]
        reported["is_active"] = profile.is_active
    if "roles" in changes:
        roles = _clean_roles(changes["roles"])
        if roles != list(profile.roles):
            profile.roles = roles
            reported["roles"] = roles
        # Even an unchanged list is an administrator's decision a late sync must not undo.
        profile.roles_changed_at = now
    if "is_active" in changes:
        profile.active_changed_at = now
    if reported:
        emit(
            session,
            OutboxEvent,
            exchange=AUTH_EVENTS,
            event_type="user.updated",
            source=SOURCE,
            data={"user_id": profile.id, "changes": reported},
        )
    return reported


def _tombstone(session: Session, user_id: str, deleted_at: datetime) -> None:
    _insert_ignoring_conflict(session, Tombstone, user_id=user_id, deleted_at=deleted_at)
    pending = session.get(PendingRevocation, user_id)
    if pending is not None:
        session.delete(pending)


def admin_delete_profile(session: Session, profile: Profile) -> None:
    """Delete a profile, leave a tombstone and emit ``user.deleted`` in the same transaction."""
    user_id = profile.id
    session.delete(profile)
    _tombstone(session, user_id, utcnow())
    emit(
        session,
        OutboxEvent,
        exchange=AUTH_EVENTS,
        event_type="user.deleted",
        source=SOURCE,
        data={"user_id": user_id},
    )


# -- user.sync, applied by the user worker ------------------------------------


def _user_id(data: object) -> str:
    if not isinstance(data, dict):
        raise InvalidEventData("data must be an object")
    user_id = normalise_user_id(data.get("user_id"))
    if user_id is None:
        raise InvalidEventData("user_id must be a UUID string")
    return user_id


def _occurred(occurred_at: object) -> datetime:
    if not isinstance(occurred_at, datetime):
        raise InvalidEventData("occurred_at must be a datetime")
    return occurred_at.replace(tzinfo=UTC) if occurred_at.tzinfo is None else occurred_at


def _string(data: dict, name: str, limit: int) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidEventData(f"{name} must be a non-empty string of at most {limit} characters")
    return value


def _created_fields(data: dict) -> dict:
    fields = {
        "email": _string(data, "email", 320).lower(),
        "username": _string(data, "username", 64),
    }
    roles = data.get("roles", [])
    if (
        not isinstance(roles, list)
        or len(roles) > MAX_ROLES
        or not all(isinstance(r, str) and ROLE_RE.match(r) for r in roles)
    ):
        raise InvalidEventData(f"roles must be a list of at most {MAX_ROLES} role names")
    fields["roles"] = list(dict.fromkeys(roles))
    is_active = data.get("is_active", True)
    if not isinstance(is_active, bool):
        raise InvalidEventData("is_active must be a boolean")
    fields["is_active"] = is_active
    created_at = data.get("created_at")
    if created_at is not None:
        try:
            created = datetime.fromisoformat(created_at)
        except (TypeError, ValueError):
            raise InvalidEventData("created_at must be an ISO 8601 timestamp") from None
        fields["created_at"] = created.replace(tzinfo=UTC) if created.tzinfo is None else created
    return fields


@dataclass(frozen=True)
class _Created:
    """A validated ``created`` sync: the user, the event's time, the new row's values."""

    user_id: str
    occurred: datetime
    created_at: datetime | None
    fields: dict
    values: dict


def _created(data: dict, occurred_at: datetime) -> _Created:
    user_id = _user_id(data)
    occurred = _occurred(occurred_at)
    fields = _created_fields(data)
    now = utcnow()
    # The account's own creation time, when the sync carries it: the profile
    # of a user is as old as the user, however late the sync arrived.
    created_at = fields.pop("created_at", None)
    values = {
        "id": user_id,
        "created_at": created_at or now,
        "updated_at": now,
        "synced_at": occurred,
        **fields,
    }
    return _Created(user_id, occurred, created_at, fields, values)


def apply_user_created(session: Session, data: dict, occurred_at: datetime) -> Profile | None:
    """Create or merge the profile of a newly registered user; None if the user was deleted.

    A profile already made from the user's first request is merged: email and
    username follow the newest sync, roles and is_active follow it unless an
    administrator here set them after ``occurred_at``; the user's own fields
    are never touched. Raises InvalidEventData for malformed data.
    """
    event = _created(data, occurred_at)
    # The common case, a user seen here for the first time: one statement.
    profile = _insert_new_profile(session, event.user_id, event.values)
    if profile is not None:
        return profile
    return _merge_created(session, event)


def apply_users_created(
    session: Session, events: list[tuple[dict, datetime]]
) -> list[Profile | None]:
    """``apply_user_created`` for many users at once, each user at most once in ``events``.

    Users seen here for the first time, the common case, cost four statements
    for the whole lot (tombstones, profiles and pending revocations looked up
    together, then one multi-row insert); the others are merged one by one.
    Returns the profiles in the order of ``events``. Raises InvalidEventData
    for malformed data, ValueError when a user comes twice.
    """
    parsed = [_created(data, occurred_at) for data, occurred_at in events]
    ids = [event.user_id for event in parsed]
    if len(set(ids)) != len(ids):
        raise ValueError("apply_users_created takes each user at most once")
    deleted = set(session.scalars(select(Tombstone.user_id).where(Tombstone.user_id.in_(ids))))
    existing = set(session.scalars(select(Profile.id).where(Profile.id.in_(ids))))
    pending = {
        user_id: revoked_before
        for user_id, revoked_before in session.execute(
            select(PendingRevocation.user_id, PendingRevocation.revoked_before).where(
                PendingRevocation.user_id.in_(ids)
            )
        )
    }
    rows = [
        {**event.values, "tokens_valid_after": pending.get(event.user_id)}
        for event in parsed
        if event.user_id not in deleted and event.user_id not in existing
    ]
    inserted: dict[str, Profile] = {}
    if rows:
        statement = _dialect_insert(session)(Profile).on_conflict_do_nothing()
        inserted = {p.id: p for p in session.scalars(statement.returning(Profile), rows)}
        folded = [user_id for user_id in inserted if pending.get(user_id) is not None]
        if folded:
            session.execute(delete(PendingRevocation).where(PendingRevocation.user_id.in_(folded)))
    # Deleted users, existing profiles, and rows another writer inserted first.
    return [inserted.get(event.user_id) or _merge_created(session, event) for event in parsed]


def _merge_created(session: Session, event: _Created) -> Profile | None:
    if is_deleted(session, event.user_id):
        return None
    _insert_ignoring_conflict(session, Profile, **event.values)
    profile = session.get(Profile, event.user_id, populate_existing=True)
    _fold_pending_revocation(session, profile)
    occurred, fields = event.occurred, event.fields
    if event.created_at is not None and event.created_at < profile.created_at:
        profile.created_at = event.created_at
    if profile.synced_at is None or profile.synced_at <= occurred:
        profile.email = fields["email"]
        profile.username = fields["username"]
        profile.synced_at = occurred
    if profile.roles_changed_at is None or profile.roles_changed_at < occurred:
        if list(profile.roles) != fields["roles"]:
            profile.roles = fields["roles"]
    if profile.active_changed_at is None or profile.active_changed_at < occurred:
        profile.is_active = fields["is_active"]
    return profile


def apply_user_deleted(session: Session, user_id: str, occurred_at: datetime) -> None:
    """Delete the user's profile (if any) and leave a tombstone; repeating it changes nothing."""
    user_id = _user_id({"user_id": user_id})
    occurred = _occurred(occurred_at)
    profile = session.get(Profile, user_id)
    if profile is not None:
        session.delete(profile)
    _tombstone(session, user_id, occurred)


def apply_sessions_revoked(session: Session, user_id: str, revoked_before: float) -> None:
    """Refuse the user's access tokens issued up to ``revoked_before`` (epoch seconds).

    Keeps the latest revocation seen. Before the profile exists the value is
    kept aside and folded into the profile when it is created; for a deleted
    user nothing is stored.
    """
    user_id = _user_id({"user_id": user_id})
    if (
        not isinstance(revoked_before, int | float)
        or isinstance(revoked_before, bool)
        or not math.isfinite(revoked_before)
        or revoked_before <= 0
    ):
        raise InvalidEventData("revoked_before must be a positive number of epoch seconds")
    revoked_before = float(revoked_before)
    profile = session.get(Profile, user_id)
    if profile is not None:
        profile.tokens_valid_after = max(profile.tokens_valid_after or 0.0, revoked_before)
        return
    if is_deleted(session, user_id):
        return
    _insert_ignoring_conflict(
        session, PendingRevocation, user_id=user_id, revoked_before=revoked_before
    )
    # A statement, not a change left pending in the session: the profile
    # insert folds this row in with SQL of its own (see _insert_new_profile).
    later = PendingRevocation.revoked_before < revoked_before
    session.execute(
        update(PendingRevocation)
        .where(PendingRevocation.user_id == user_id, later)
        .values(revoked_before=revoked_before)
    )
