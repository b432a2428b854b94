"""A user's profile: finding it, making it from a token, the user's own edits, tombstones.

Every function takes a session and never commits: the view or the worker does,
so an event written with :func:`common.outbox.emit` lands in the same
transaction as the change that caused it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from common.db import insert_ignoring_conflict, utcnow
from common.fields import ROLE_NAME
from user_app.models import PendingRevocation, Profile, Tombstone

EDITABLE_FIELDS = ("display_name", "bio", "avatar_url")


def get_profile(session: Session, user_id: str, *, for_update: bool = False) -> Profile | None:
    """The profile with this id, or None.

    ``for_update`` reads it as it is now and locks its row until the
    transaction ends (PostgreSQL): what a change that compares field times
    before it writes needs, so that two changes at once never interleave.
    """
    if for_update:
        return session.get(Profile, user_id, with_for_update=True, populate_existing=True)
    return session.get(Profile, user_id)


def is_deleted(session: Session, user_id: str) -> bool:
    """Whether the user was deleted (a tombstone exists)."""
    return session.get(Tombstone, user_id) is not None


def leave_tombstone(session: Session, user_id: str, deleted_at: datetime) -> None:
    """Mark the user deleted for good; a revocation kept for a profile to come is dropped."""
    insert_ignoring_conflict(session, Tombstone, user_id=user_id, deleted_at=deleted_at)
    session.execute(delete(PendingRevocation).where(PendingRevocation.user_id == user_id))


def fold_pending_revocation(session: Session, profile: Profile) -> None:
    """Move a revocation that arrived before the profile into the profile."""
    pending = session.get(PendingRevocation, profile.id)
    if pending is not None:
        current = profile.tokens_valid_after
        profile.tokens_valid_after = max(current or 0.0, pending.revoked_before)
        session.delete(pending)


def clean_roles(roles: Iterable[object]) -> list[str]:
    """Valid role names only, each once, in their first order."""
    return list(dict.fromkeys(r for r in roles if isinstance(r, str) and ROLE_NAME.fullmatch(r)))


def _claim_str(claims: Mapping[str, Any], name: str, limit: int) -> str:
    value = claims.get(name)
    return value[:limit] if isinstance(value, str) else ""


def ensure_profile(session: Session, claims: Mapping[str, Any]) -> Profile | None:
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
    insert_ignoring_conflict(
        session,
        Profile,
        id=user_id,
        email=_claim_str(claims, "email", 320).lower(),
        username=_claim_str(claims, "username", 64),
        roles=clean_roles(roles) if isinstance(roles, list) else [],
        is_active=True,
        email_verified=claims.get("email_verified") is True,
        created_at=now,
        updated_at=now,
    )
    profile = session.get(Profile, user_id, populate_existing=True)
    if profile is not None:
        fold_pending_revocation(session, profile)
    return profile


def update_own_profile(profile: Profile, changes: Mapping[str, Any]) -> None:
    """Apply a user's own edits (display name, bio, avatar URL; None clears)."""
    for name in EDITABLE_FIELDS:
        if name in changes:
            setattr(profile, name, changes[name])
