"""Accounts: registration, login, password change, deletion, roles, admin changes.

Plain functions over a session (never committing) and the Redis stores; the
views and the auth worker call them and commit. Failures are the exceptions
below, which the views map to HTTP answers.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import Session

from auth_app import login_sessions
from auth_app.login_throttle import LoginThrottle
from auth_app.models import OutboxEvent, User
from auth_app.passwords import PasswordHasher, check_policy
from auth_app.revocation import RevocationStore
from common.db import utcnow
from common.events import USER_SYNC
from common.fields import ROLE_NAME
from common.outbox import emit

log = logging.getLogger("auth_app.accounts")


class AccountExists(Exception):
    """The email or username is taken; ``field`` names which."""

    def __init__(self, field: str):
        super().__init__(f"{field} already registered")
        self.field = field


class InvalidCredentials(Exception):
    """Unknown account or wrong password: the client is told nothing more."""


class LoginThrottled(Exception):
    """Too many failed logins for this account; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class AccountInactive(Exception):
    """The password was right but the account is disabled."""


class UnknownAccount(LookupError):
    """No account has this email."""


class InvalidRole(ValueError):
    """A role name outside ``[a-z][a-z0-9_-]{0,31}``."""


def normalise_email(email: str) -> str:
    """Emails are compared and stored lower-cased."""
    return email.strip().lower()


def _sync(session: Session, user_id: str, action: str, **data: object) -> None:
    emit(session, OutboxEvent, USER_SYNC, {"user_id": user_id, "action": action, **data})


def register(
    session: Session,
    hasher: PasswordHasher,
    *,
    email: str,
    username: str,
    password: str,
    min_length: int,
) -> User:
    """Create an account and its ``created`` sync event; raise on a taken name or weak password."""
    email = normalise_email(email)
    check_policy(password, email=email, username=username, min_length=min_length)
    taken = session.scalars(
        select(User).where(or_(User.email == email, User.username_key == username.lower()))
    ).first()
    if taken is not None:
        raise AccountExists("email" if taken.email == email else "username")
    now = utcnow()
    user = User(
        email=email,
        username=username,
        username_key=username.lower(),
        password_hash=hasher.hash(password),
        roles=["user"],
        is_active=True,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    session.flush()
    _sync(
        session,
        user.id,
        "created",
        email=user.email,
        username=user.username,
        roles=list(user.roles),
        is_active=user.is_active,
        created_at=user.created_at,
    )
    log.info("registered user_id=%s", user.id)
    return user


def find_for_login(session: Session, *, email: str | None, username: str | None) -> User | None:
    """The account named by email or by username (case-insensitively), if any."""
    if email is not None:
        return session.scalars(select(User).where(User.email == normalise_email(email))).first()
    return session.scalars(
        select(User).where(User.username_key == (username or "").strip().lower())
    ).first()


def authenticate(
    session: Session,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    *,
    email: str | None,
    username: str | None,
    password: str,
) -> User:
    """The account whose password this is, or InvalidCredentials/LoginThrottled/AccountInactive.

    An unknown account costs one bcrypt verification like a known one, and is
    throttled the same way, so neither timing nor 429s reveal which accounts exist.
    """
    user = find_for_login(session, email=email, username=username)
    if user is not None:
        account = f"user:{user.id}"
    else:
        named = normalise_email(email) if email is not None else f"@{(username or '').lower()}"
        account = "unknown:" + hashlib.sha256(named.encode("utf-8", "surrogatepass")).hexdigest()
    retry_after = throttle.retry_after(account)
    if retry_after is not None:
        hasher.burn(password)
        log.info("login refused reason=throttled user_id=%s", user.id if user else "-")
        raise LoginThrottled(retry_after)
    if user is None:
        hasher.burn(password)
        throttle.record_failure(account)
        log.info("login failed reason=unknown_account")
        raise InvalidCredentials()
    if not hasher.verify(password, user.password_hash):
        throttle.record_failure(account)
        log.info("login failed reason=wrong_password user_id=%s", user.id)
        raise InvalidCredentials()
    if not user.is_active:
        log.info("login refused reason=account_disabled user_id=%s", user.id)
        raise AccountInactive()
    throttle.clear(account)
    if hasher.needs_rehash(user.password_hash):
        # The cost was raised since this hash was made: upgrade it while we know the password.
        user.password_hash = hasher.hash(password)
        log.info("password rehashed user_id=%s rounds=%d", user.id, hasher.rounds)
    log.info("login ok user_id=%s", user.id)
    return user


def revoke_everything(
    session: Session, revocation: RevocationStore, user: User, *, announce: bool = True
) -> int:
    """End every session and access token of ``user``; return the ``revoked_before`` epoch.

    With ``announce`` a ``sessions_revoked`` sync tells the user service too.
    """
    login_sessions.revoke_all(session, user.id, utcnow())
    cutoff = revocation.revoke_user(user.id)
    if announce:
        _sync(session, user.id, "sessions_revoked", revoked_before=cutoff)
    log.info("sessions revoked user_id=%s revoked_before=%d", user.id, cutoff)
    return cutoff


def change_password(
    session: Session,
    hasher: PasswordHasher,
    revocation: RevocationStore,
    user: User,
    *,
    current_password: str,
    new_password: str,
    min_length: int,
) -> None:
    """Replace the password after checking the current one; every earlier token dies."""
    if not hasher.verify(current_password, user.password_hash):
        log.info("password change refused reason=wrong_password user_id=%s", user.id)
        raise InvalidCredentials()
    check_policy(new_password, email=user.email, username=user.username, min_length=min_length)
    user.password_hash = hasher.hash(new_password)
    revoke_everything(session, revocation, user)
    log.info("password changed user_id=%s", user.id)


def _remove(session: Session, revocation: RevocationStore, user: User) -> None:
    revocation.revoke_user(user.id)
    login_sessions.delete_all(session, user.id)
    session.delete(user)
    session.flush()


def delete_account(
    session: Session, hasher: PasswordHasher, revocation: RevocationStore, user: User, password: str
) -> None:
    """Delete the account after checking its password; publish a ``deleted`` sync."""
    if not hasher.verify(password, user.password_hash):
        log.info("account deletion refused reason=wrong_password user_id=%s", user.id)
        raise InvalidCredentials()
    user_id = user.id
    _remove(session, revocation, user)
    _sync(session, user_id, "deleted")
    log.info("account deleted user_id=%s", user_id)


def delete_account_from_user_service(
    session: Session, revocation: RevocationStore, user_id: str
) -> bool:
    """Apply ``user.deleted``: remove the account, no echo event. False if already gone."""
    user = session.get(User, user_id)
    if user is None:
        return False
    _remove(session, revocation, user)
    log.info("account deleted by the user service user_id=%s", user_id)
    return True


def mark_provisioned(session: Session, times: dict[str, datetime]) -> None:
    """Apply ``user.created``: ``{user_id: at}``, each account marked once, in one statement.

    The first time recorded stays; users that are gone are skipped.
    """
    if times:
        session.execute(
            update(User)
            .where(User.id.in_(times), User.provisioned_at.is_(None))
            .values(provisioned_at=case(times, value=User.id))
            .execution_options(synchronize_session="fetch")
        )


def validate_role(role: str) -> str:
    """``role`` itself, or InvalidRole."""
    if not isinstance(role, str) or not ROLE_NAME.match(role):
        raise InvalidRole(f"invalid role {role!r}: use [a-z][a-z0-9_-]{{0,31}}")
    return role


def apply_admin_changes(
    session: Session,
    revocation: RevocationStore,
    user_id: str,
    changes: dict,
    occurred_at: datetime,
) -> bool:
    """Apply ``user.updated`` (``is_active`` and/or ``roles``) unless a newer change won.

    ``changes`` is what the catalogue's schema loaded (a boolean, role names).
    Returns False when nothing was applied (unknown user or a stale change).
    Deactivation revokes every session and token.
    """
    is_active = changes.get("is_active")
    roles = sorted(set(changes["roles"])) if "roles" in changes else None
    user = session.get(User, user_id)
    if user is None:
        return False
    if user.admin_changed_at is not None and occurred_at <= user.admin_changed_at:
        log.info("stale admin change ignored user_id=%s", user_id)
        return False
    user.admin_changed_at = occurred_at
    if roles is not None:
        user.roles = roles
    if is_active is not None and is_active != user.is_active:
        user.is_active = is_active
        if not is_active:
            revoke_everything(session, revocation, user, announce=False)
    log.info("admin change applied user_id=%s fields=%s", user_id, ",".join(sorted(changes)))
    return True


def set_role(
    session: Session, revocation: RevocationStore, email: str, role: str, *, grant: bool
) -> User:
    """Grant or revoke a role; revoking one also ends the user's sessions, here and there."""
    validate_role(role)
    user = session.scalars(
        select(User).where(func.lower(User.email) == normalise_email(email))
    ).first()
    if user is None:
        raise UnknownAccount(email)
    roles = set(user.roles)
    if grant:
        roles.add(role)
    elif role in roles:
        roles.discard(role)
        # Tokens carry roles: make the old ones, with the role, die everywhere.
        revoke_everything(session, revocation, user)
    user.roles = sorted(roles)
    return user
