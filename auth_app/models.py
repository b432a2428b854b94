"""The auth service's tables: users, refresh-token session families, outbox, processed messages."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.db import UTCDateTime, new_metadata, utcnow
from common.outbox import OutboxMixin, ProcessedMessageMixin


def new_id() -> str:
    """A fresh UUID string: user ids and session ids."""
    return str(uuid.uuid4())


def default_roles() -> list[str]:
    """The roles of a newly registered user."""
    return ["user"]


class Base(DeclarativeBase):
    """Declarative base of the auth service, with the shared naming convention."""

    metadata = new_metadata()


class User(Base):
    """An account. The id is minted here and is the ``sub`` everywhere."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    username: Mapped[str] = mapped_column(String(32))
    # Usernames are unique whatever their case; the display case is kept in `username`.
    username_key: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    roles: Mapped[list[str]] = mapped_column(JSON, default=default_roles)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    provisioned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When roles and activity last changed, wherever the change was made: a change
    # that happened earlier never overwrites a later one, in any order of arrival.
    roles_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    active_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Epoch second: every access token of the user with an ``iat`` below it is dead.
    revoked_before: Mapped[int | None] = mapped_column(BigInteger)


class LoginSession(Base):
    """A refresh-token family: one login, every refresh token rotated from it shares its id."""

    __tablename__ = "login_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The login's absolute end (SESSION_MAX_AGE_DAYS), however often it is refreshed.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class RefreshToken(Base):
    """One refresh token of a family, kept only as its SHA-256 hash."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("login_sessions.id", ondelete="CASCADE"), index=True
    )
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set once, by the refresh that replaced it; a second use is a replay.
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RevokedToken(Base):
    """An access token ended before its time (logout); kept until it would have expired."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class OutboxEvent(OutboxMixin, Base):
    """Events waiting for the relay, written in the transaction that caused them."""

    __tablename__ = "outbox"


class ProcessedMessage(ProcessedMessageMixin, Base):
    """Ids of messages the auth worker has already applied."""

    __tablename__ = "processed_messages"
