"""What an administrator does at the user service: list and search, change, delete.

A change of ``is_active`` or ``roles`` and a deletion are told to the auth
service (``user.updated``, ``user.deleted``) through the outbox, in the same
transaction as the change.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, func, or_, select, tuple_
from sqlalchemy.orm import Session

from common.db import utcnow
from common.events import USER_DELETED, USER_UPDATED
from common.outbox import emit
from user_app.models import OutboxEvent, Profile, ProfileCount
from user_app.profiles import clean_roles, leave_tombstone, update_own_profile

ADMIN = "admin"


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
    total = count_profiles(session, q, is_active)
    if offset >= total:
        # Past the last page: nothing to fetch, and an offset beyond the database's
        # integer range (``?page=10**30``) never reaches it.
        return total, []
    page = session.scalars(listing(q, is_active).offset(offset).limit(limit)).all()
    return total, list(page)


def count_profiles(session: Session, q: str | None, is_active: bool | None) -> int:
    """How many profiles match: from the kept counts when nothing is searched (PostgreSQL)."""
    if not q and session.get_bind().dialect.name == "postgresql":
        kept = select(func.coalesce(func.sum(ProfileCount.n), 0))
        if is_active is not None:
            kept = kept.where(ProfileCount.is_active.is_(is_active))
        return int(session.scalar(kept) or 0)
    counted = select(func.count()).select_from(Profile).where(*search_conditions(q, is_active))
    return session.scalar(counted) or 0


def listing(q: str | None = None, is_active: bool | None = None) -> Select[Profile]:
    """The profiles matching ``q`` and ``is_active``, oldest first (ties by id)."""
    return (
        select(Profile)
        .where(*search_conditions(q, is_active))
        .order_by(Profile.created_at, Profile.id)
    )


class Position(NamedTuple):
    """Where a listing stands: the sort key of the last profile it showed."""

    created_at: datetime
    id: str


def encode_cursor(profile: Profile) -> str:
    """The opaque ``cursor`` that continues a listing after ``profile``."""
    raw = f"{profile.created_at.isoformat()}|{profile.id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    """The position a cursor of :func:`encode_cursor` names; ValueError if it names none."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, user_id = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor of this listing") from None
    if created_at.tzinfo is None or not 0 < len(user_id) <= 36:
        raise ValueError("not a cursor of this listing")
    return Position(created_at, user_id)


def profiles_after(
    session: Session,
    after: Position | None,
    *,
    q: str | None = None,
    is_active: bool | None = None,
    limit: int = 20,
) -> tuple[list[Profile], bool]:
    """``(page, more)``: the profiles matching ``q`` and ``is_active`` that follow ``after``
    (from the first, when None).

    A keyset page: the ``(created_at, id)`` index goes straight to ``after``, so
    a page costs the same at any depth, and there is no total to count.
    """
    query = listing(q, is_active)
    if after is not None:
        query = query.where(
            tuple_(Profile.created_at, Profile.id) > tuple_(after.created_at, after.id)
        )
    rows = session.scalars(query.limit(limit + 1)).all()
    return list(rows[:limit]), len(rows) > limit


def search_conditions(q: str | None, is_active: bool | None) -> list[Any]:
    """The WHERE of a profile search: ``lower(column) LIKE '%q%'`` on each searched column.

    On PostgreSQL each ``lower(column)`` has a trigram index (user migration
    0004), which serves a ``q`` of three characters or more.
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
    return conditions


class UnknownRoles(ValueError):
    """Role names that are not among ``ROLES``."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


class SelfLockout(Exception):
    """An administrator tried to take ``admin`` from itself or deactivate itself."""


def update_profile(
    session: Session,
    profile: Profile,
    changes: Mapping[str, Any],
    *,
    by: str,
    roles: Collection[str],
) -> dict:
    """Apply the edits of administrator ``by``; emit ``user.updated`` if is_active or roles changed.

    Role names must be among ``roles`` (UnknownRoles); an administrator may not
    take ``admin`` from itself or deactivate itself (SelfLockout), so there is
    always one who can undo a mistake. Nothing is changed when either is
    raised. Returns the changes reported to the auth service (empty when none).
    """
    unknown = [role for role in changes.get("roles", ()) if role not in roles]
    if unknown:
        raise UnknownRoles(unknown)
    if profile.id == by and (
        changes.get("is_active") is False or ("roles" in changes and ADMIN not in changes["roles"])
    ):
        raise SelfLockout()
    update_own_profile(profile, changes)
    now = utcnow()
    reported: dict[str, Any] = {}
    if "is_active" in changes and changes["is_active"] != profile.is_active:
        profile.is_active = changes["is_active"]
        reported["is_active"] = profile.is_active
    if "roles" in changes:
        roles = clean_roles(changes["roles"])
        if roles != list(profile.roles):
            profile.roles = roles
            reported["roles"] = roles
        # Even an unchanged list is an administrator's decision a late sync must not undo.
        profile.roles_changed_at = now
    if "is_active" in changes:
        profile.active_changed_at = now
    if reported:
        emit(session, OutboxEvent, USER_UPDATED, {"user_id": profile.id, "changes": reported})
    return reported


def delete_profile(session: Session, profile: Profile) -> None:
    """Delete a profile, leave a tombstone and emit ``user.deleted`` in the same transaction."""
    user_id = profile.id
    session.delete(profile)
    leave_tombstone(session, user_id, utcnow())
    emit(session, OutboxEvent, USER_DELETED, {"user_id": user_id})
