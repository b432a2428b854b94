"""The auth service's tables: users, refresh-token session families, one-time account
tokens, the mail queue, outbox, processed messages, and the signing keys of
``KEY_STORE=database``."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.db import UTCDateTime, new_metadata, utcnow
from common.outbox import OutboxMixin, ProcessedMessageMixin


def new_id() -> str:
    """A fresh UUID string: user ids and session ids."""
    return str(uuid.uuid4())


def default_roles() -> list[str]:
    """The roles of a newly registered user."""
    return ["user"]


def password_only() -> list[str]:
    """The ``amr`` of a login by password alone (RFC 8176)."""
    return ["pwd"]


#: An auto-incrementing 64-bit key (SQLite auto-increments only INTEGER PRIMARY KEY).
BigKey = BigInteger().with_variant(Integer, "sqlite")


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
    # Whether the owner has shown they read mail at ``email`` (a link from it was followed).
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    # A confirmed TOTP credential: logins need a code after the password.
    mfa_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
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
    # The sessions a user can still use (the sessions list, ending them all),
    # without walking the revoked ones that wait for the janitor.
    __table_args__ = (
        Index(
            "ix_login_sessions_live",
            "user_id",
            postgresql_where=text("revoked_at IS NULL"),
            sqlite_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The login's absolute end (SESSION_MAX_AGE_DAYS), however often it is refreshed.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # Where and how it began, and when its refresh token was last used.
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(255))
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # How the user proved who they are (RFC 8176): ["pwd"] or ["pwd", "otp"].
    amr: Mapped[list[str]] = mapped_column(JSON, default=password_only)


class RefreshToken(Base):
    """One refresh token of a family, kept only as its SHA-256 hash."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("login_sessions.id", ondelete="CASCADE"), index=True
    )
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # Set once, by the refresh that replaced it; a second use is a replay.
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RevokedToken(Base):
    """An access token ended before its time (logout); kept until it would have expired."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AccountToken(Base):
    """A one-time token mailed to a user: reset the password, verify or change the email.

    Kept only as its SHA-256 hash, with the address it was mailed to (for an
    email change, the new address it proves). One per user and purpose: a newer
    one replaces the older. Deleted when used.
    """

    __tablename__ = "account_tokens"
    __table_args__ = (
        Index("uq_account_tokens_user_id_purpose", "user_id", "purpose", unique=True),
    )

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(36), ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(16))
    email: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Asked for by the user (counts in the resend interval), not sent on its own (registration).
    requested: Mapped[bool] = mapped_column(Boolean, default=True)


class TotpCredential(Base):
    """A user's TOTP secret (RFC 6238), encrypted; pending until a code confirms it."""

    __tablename__ = "totp_credentials"

    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # AES-GCM under a key derived from PASSWORD_PEPPER, bound to the user id.
    secret: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The time step of the last code accepted: that code and every older one are spent.
    last_step: Mapped[int | None] = mapped_column(BigInteger)


class RecoveryCode(Base):
    """One single-use recovery code of a user with MFA on, kept as a keyed hash."""

    __tablename__ = "recovery_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MfaChallenge(Base):
    """The second step a right password earned: an ``mfa_token``, as its hash.

    Bound to the password it was earned with (a digest of the hash then
    stored), it works once, for a few minutes, and dies after a few wrong codes.
    """

    __tablename__ = "mfa_challenges"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    password_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)


class SecurityEvent(Base):
    """Something that happened to an account: a login, a failure, a change of credentials.

    Kept without a foreign key, so an account's history outlives the account.
    """

    __tablename__ = "security_events"
    __table_args__ = (
        Index("ix_security_events_user_id_at", "user_id", "at"),
        Index("ix_security_events_type_at", "type", "at"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    user_id: Mapped[str | None] = mapped_column(String(36))
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(255))
    session_id: Mapped[str | None] = mapped_column(String(36))


# A mail waits for the mailer while neither sent nor given up.
MAIL_PENDING = "sent_at IS NULL AND failed_at IS NULL"


class Mail(Base):
    """A mail written by a request in its own transaction, sent later by the mailer worker.

    The bodies hold the mail's link until it is sent (or given up on), then are
    erased; what stays says what was sent to whom, and when.
    """

    __tablename__ = "mails"
    __table_args__ = (
        Index(
            "ix_mails_due",
            "next_attempt_at",
            postgresql_where=text(MAIL_PENDING),
            sqlite_where=text(MAIL_PENDING),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # Which template: verify_email, reset_password, confirm_email_change, email_change_notice.
    kind: Mapped[str] = mapped_column(String(32))
    sender: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The SMTP server's last answer (code and text), never the mail's content.
    last_error: Mapped[str | None] = mapped_column(String(200))
    # The id of the request that wrote it: the mailer's log lines about it carry it too.
    correlation_id: Mapped[str | None] = mapped_column(String(128))


class SigningKey(Base):
    """An RS256 key pair of the database key store, shared by every auth node.

    The public half is kept in clear (PEM); the private half sealed with AES-GCM
    under ``KEY_ENCRYPTION_KEY``, bound to the kid. ``active`` marks the key the
    last rotation made; the partial unique index lets at most one row hold it,
    so two rotations at once cannot leave two, and the check keeps it in step
    with ``retired_at``, set when a rotation replaced the key. Every rotation
    adds a row, so ``max(id)`` is the store's version: what the nodes poll.
    """

    __tablename__ = "signing_keys"
    __table_args__ = (
        Index(
            "uq_signing_keys_one_active",
            "active",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
        CheckConstraint(
            "(active AND retired_at IS NULL) OR (NOT active AND retired_at IS NOT NULL)",
            name="active_until_retired",
        ),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True, autoincrement=True)
    # The RFC 7638 thumbprint of the public key: the tokens' `kid`.
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str] = mapped_column(Text)
    # base64 of the nonce and the AES-GCM ciphertext of the PKCS #8 DER private key.
    private_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OutboxEvent(OutboxMixin, Base):
    """Events waiting for the relay, written in the transaction that caused them."""

    __tablename__ = "outbox"


class ProcessedMessage(ProcessedMessageMixin, Base):
    """Ids of messages the auth worker has already applied."""

    __tablename__ = "processed_messages"
