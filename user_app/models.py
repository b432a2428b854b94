"""The user service's tables: profiles, tombstones, pending revocations, outbox, inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    Index,
    SmallInteger,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.db import UTCDateTime, new_metadata, utcnow
from common.outbox import OutboxMixin, ProcessedMessageMixin
from user_app import profile_counts


class Base(DeclarativeBase):
    """Declarative base of the user service; its metadata holds only this service's tables."""

    metadata = new_metadata()


class Profile(Base):
    """A user's profile; ``id`` is the auth service's user id (the token's ``sub``).

    Roles, activity and email have one truth, the auth service's, and either
    side may change them. ``roles_changed_at``, ``active_changed_at`` and
    ``synced_at`` (email) record when each last changed, here or there, so a
    change that happened earlier never undoes a later one, in whatever order
    they arrive.
    """

    __tablename__ = "profiles"
    __table_args__ = (Index("ix_profiles_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    display_name: Mapped[str | None] = mapped_column(String(100))
    bio: Mapped[str | None] = mapped_column(Text)
    avatar_url: Mapped[str | None] = mapped_column(String(2048))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # Epoch seconds: access tokens with iat < this value are refused.
    tokens_valid_after: Mapped[float | None] = mapped_column(Double)
    # occurred_at of the last sync that set the email (and, at creation, the username).
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    roles_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    active_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ProfileCount(Base):
    """How many profiles have this ``is_active``: the sum of every slot's ``n``.

    Kept exact by triggers on ``profiles`` on PostgreSQL (user migration 0006),
    so the listing's ``total`` needs no count of a million rows; each
    connection writes its own slot. Empty, and unused, on SQLite.
    """

    __tablename__ = "profile_counts"

    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    is_active: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


@event.listens_for(Base.metadata, "after_create")
def _count_profiles(target: Any, connection: Connection, **kw: Any) -> None:
    # A schema built by create_all (the tests') counts profiles as the migrated one does;
    # ``tables`` are those this call created (none of an existing schema).
    created = {table.name for table in kw.get("tables", ())}
    if connection.dialect.name == "postgresql" and "profiles" in created:
        for statement in profile_counts.create_statements():
            connection.execute(text(statement))


@event.listens_for(Base.metadata, "after_drop")
def _stop_counting(target: Any, connection: Connection, **kw: Any) -> None:
    # The triggers went with the table; their functions would stay behind.
    dropped = {table.name for table in kw.get("tables", ())}
    if connection.dialect.name == "postgresql" and "profiles" in dropped:
        for statement in profile_counts.drop_statements():
            connection.execute(text(statement))


class Tombstone(Base):
    """A deleted user; a late ``created`` sync or an old token can never bring it back."""

    __tablename__ = "tombstones"

    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PendingRevocation(Base):
    """A ``sessions_revoked`` sync for a user whose profile does not exist yet.

    Folded into the profile's ``tokens_valid_after`` when the profile is created.
    """

    __tablename__ = "pending_revocations"

    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    revoked_before: Mapped[float] = mapped_column(Double)


class RevokedSession(Base):
    """A login session the auth service ended: access tokens with its ``sid`` are refused.

    Kept until its tokens have expired (``expires_at``, epoch seconds), then forgotten.
    """

    __tablename__ = "revoked_sessions"

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(36), index=True)
    expires_at: Mapped[float] = mapped_column(Double, index=True)


class OutboxEvent(OutboxMixin, Base):
    """Events waiting for the relay to publish them (transactional outbox)."""

    __tablename__ = "outbox"


class ProcessedMessage(ProcessedMessageMixin, Base):
    """Ids of ``user.sync`` messages the user worker has already applied."""

    __tablename__ = "processed_messages"
