"""Accounts: registration, login, password change, deletion, roles, admin changes.

Plain functions over a session (never committing) and the Redis stores; the
views and the auth worker call them and commit. Failures are the exceptions
below, which the views map to HTTP answers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import case, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auth_app import account_tokens, announce, login_sessions
from auth_app.login_throttle import LoginThrottle
from auth_app.models import User
from auth_app.passwords import PasswordHasher, check_policy
from auth_app.revocation import RevocationStore
from auth_app.security_events import EventType, record
from common.db import utcnow

log = logging.getLogger("auth_app.accounts")


class AccountExists(Exception):
    """The email or username is taken; ``field`` names which."""

    def __init__(self, field: str):
        super().__init__(f"{field} already registered")
        self.field = field


class InvalidCredentials(Exception):
    """Unknown account or wrong password: the client is told nothing more."""


class LoginThrottled(Exception):
    """Too many wrong passwords for the account from this address; wait ``retry_after`` s."""

    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class AccountGone(Exception):
    """The account was deleted while this request waited for it."""


class AccountInactive(Exception):
    """The password was right but the account is disabled."""


class EmailNotVerified(Exception):
    """The password was right but ``EMAIL_VERIFICATION=required`` and the email is unverified."""


class UnknownAccount(LookupError):
    """No account has this email."""


class InvalidRole(ValueError):
    """A role name that is not one of ``ROLES``."""


def normalise_email(email: str) -> str:
    """Emails are compared and stored lower-cased."""
    return email.strip().lower()


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
    try:
        session.flush()
    except IntegrityError as error:
        # A registration of the same email or username committed between the
        # check above and this insert: the database's unique index said so.
        field = _taken_field(error)
        log.info("registration refused reason=%s_taken", field.replace(" ", "_"))
        raise AccountExists(field) from None
    announce.created(session, user)
    log.info("registered user_id=%s", user.id)
    return user


def _taken_field(error: IntegrityError) -> str:
    """Which unique column a failed insert of a user collided on: email, username, or both."""
    diag = getattr(error.orig, "diag", None)  # PostgreSQL names the constraint
    where = getattr(diag, "constraint_name", None) or str(error.orig)  # SQLite: "users.email"
    if "username" in where:
        return "username"
    if "email" in where:
        return "email"
    return "email or username"


def find_by_email(session: Session, email: str) -> User | None:
    """The account with this email (compared lower-cased), if any."""
    return session.scalars(select(User).where(User.email == normalise_email(email))).first()


def email_taken(session: Session, email: str) -> bool:
    """Whether an account has this email (compared lower-cased)."""
    return (
        session.scalars(select(User.id).where(User.email == normalise_email(email))).first()
        is not None
    )


def find_for_login(session: Session, *, email: str | None, username: str | None) -> User | None:
    """The account named by email or by username (case-insensitively), if any."""
    if email is not None:
        return find_by_email(session, email)
    return session.scalars(
        select(User).where(User.username_key == (username or "").strip().lower())
    ).first()


def throttle_account(user: User | None, *, email: str | None, username: str | None) -> str:
    """The account a password attempt counts against in the login throttle.

    A known account is its id, whichever of email and username named it; an
    unknown one a digest of the name it was asked for (fixed size), counted
    and refused exactly like a known account's, so 429s reveal nothing.
    """
    if user is not None:
        return f"user:{user.id}"
    named = normalise_email(email) if email is not None else f"@{(username or '').strip().lower()}"
    return "unknown:" + hashlib.sha256(named.encode("utf-8", "surrogatepass")).hexdigest()


def authenticate(
    session: Session,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    *,
    email: str | None,
    username: str | None,
    password: str,
    address: str,
    require_verified_email: bool = False,
) -> User:
    """The account whose password this is, or InvalidCredentials/LoginThrottled/AccountInactive.

    With ``require_verified_email`` (``EMAIL_VERIFICATION=required``) a right
    password of an unverified address raises EmailNotVerified. Failures count
    per account and client ``address``. An unknown account
    costs one bcrypt verification like a known one, and is throttled the same
    way, so neither timing nor 429s reveal which accounts exist. A throttled
    attempt checks no password at all, known account or not. Every outcome
    but success records its security event here, which the caller commits
    though it refuses the login (success is recorded with its new session).
    """
    user = find_for_login(session, email=email, username=username)
    account = throttle_account(user, email=email, username=username)
    user_id = user.id if user is not None else None
    retry_after = throttle.attempt(account, address)
    if retry_after is not None:
        log.info("login refused reason=throttled user_id=%s", user_id or "-")
        record(session, EventType.LOGIN_THROTTLED, user_id)
        raise LoginThrottled(retry_after)
    if user is None:
        hasher.burn(password)
        log.info("login failed reason=unknown_account")
        record(session, EventType.LOGIN_FAILED, None)
        raise InvalidCredentials()
    if not hasher.verify(password, user.password_hash):
        log.info("login failed reason=wrong_password user_id=%s", user.id)
        record(session, EventType.LOGIN_FAILED, user.id)
        raise InvalidCredentials()
    if user.mfa_enabled:
        # The login is not done: the right password takes back its own attempt
        # but keeps earlier failures, or logging in again would undo wrong codes.
        throttle.forgive(account, address)
    else:
        throttle.clear(account, address)
    if not user.is_active:
        log.info("login refused reason=account_disabled user_id=%s", user.id)
        record(session, EventType.LOGIN_FAILED, user.id)
        raise AccountInactive()
    if require_verified_email and not user.email_verified:
        log.info("login refused reason=email_not_verified user_id=%s", user.id)
        record(session, EventType.LOGIN_FAILED, user.id)
        raise EmailNotVerified()
    if hasher.needs_rehash(user.password_hash):
        # The cost was raised since this hash was made: upgrade it while we know the password.
        user.password_hash = hasher.hash(password)
        log.info("password rehashed user_id=%s rounds=%d", user.id, hasher.rounds)
    log.info("login ok user_id=%s", user.id)
    return user


def check_current_password(
    hasher: PasswordHasher, throttle: LoginThrottle, user: User, password: str, address: str
) -> None:
    """The signed-in user's password, re-checked: a failure of the login throttle's counter.

    A stolen access token must not allow more guesses at the password than
    the login form: wrong passwords count against the account from
    ``address`` like failed logins, and once over the limit the password is
    not even checked (LoginThrottled).
    """
    account = throttle_account(user, email=None, username=None)
    retry_after = throttle.attempt(account, address)
    if retry_after is not None:
        log.info("password check refused reason=throttled user_id=%s", user.id)
        raise LoginThrottled(retry_after)
    if not hasher.verify(password, user.password_hash):
        raise InvalidCredentials()
    throttle.clear(account, address)


def revoke_everything(session: Session, revocation: RevocationStore, user: User) -> int:
    """End every session and access token of ``user``, here and at the user service.

    Returns the ``revoked_before`` cut-off (epoch seconds).
    """
    login_sessions.revoke_all(session, user.id, utcnow())
    cutoff = revocation.revoke_user(session, user)
    announce.sessions_revoked(session, user.id, cutoff)
    log.info("sessions revoked user_id=%s revoked_before=%d", user.id, cutoff)
    return cutoff


def change_password(
    session: Session,
    hasher: PasswordHasher,
    revocation: RevocationStore,
    throttle: LoginThrottle,
    user: User,
    *,
    current_password: str,
    new_password: str,
    min_length: int,
    address: str,
) -> None:
    """Replace the password after checking the current one; every earlier token dies.

    A wrong current password is a failure of the login throttle (see
    :func:`check_current_password`). The row stays locked from the check to the
    commit: of two changes sent with the same current password, the second
    checks against the new one.
    """
    recheck_password(session, hasher, throttle, user, current_password, address, "password change")
    check_policy(new_password, email=user.email, username=user.username, min_length=min_length)
    user.password_hash = hasher.hash(new_password)
    # A reset link mailed before the change would undo it: it dies with the old password.
    account_tokens.revoke(session, user.id, account_tokens.Purpose.RESET_PASSWORD)
    revoke_everything(session, revocation, user)
    record(session, EventType.PASSWORD_CHANGED, user.id)
    log.info("password changed user_id=%s", user.id)


def recheck_password(
    session: Session,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    user: User,
    password: str,
    address: str,
    action: str,
) -> None:
    """Lock the account row, then check its password (:func:`check_current_password`).

    ``user`` is the object the token check loaded: read again, locked, so two
    requests with one password take turns. ``action`` names a refusal in the log.
    """
    if locked(session, user.id) is None:
        raise AccountGone()
    try:
        check_current_password(hasher, throttle, user, password, address)
    except InvalidCredentials:
        log.info("%s refused reason=wrong_password user_id=%s", action, user.id)
        raise


def _remove(session: Session, user: User) -> None:
    # Every token of a user that is gone is refused (unknown user), here and
    # (tombstone) at the user service: nothing else to revoke.
    login_sessions.delete_all(session, user.id)
    session.delete(user)
    session.flush()


def delete_account(
    session: Session,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    user: User,
    password: str,
    address: str,
) -> None:
    """Delete the account after checking its password; publish a ``deleted`` sync.

    A wrong password is a failure of the login throttle (see :func:`check_current_password`).
    Of two deletions at once, the second finds the account gone (AccountGone).
    """
    recheck_password(session, hasher, throttle, user, password, address, "account deletion")
    user_id = user.id
    _remove(session, user)
    announce.deleted(session, user_id)
    record(session, EventType.ACCOUNT_DELETED, user_id)
    log.info("account deleted user_id=%s", user_id)


def delete_account_from_user_service(session: Session, user_id: str) -> bool:
    """Apply ``user.deleted``: remove the account, no echo event. False if already gone."""
    user = session.get(User, user_id)
    if user is None:
        return False
    _remove(session, user)
    record(session, EventType.ACCOUNT_DELETED, user_id)
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


def validate_role(role: str, roles: Collection[str]) -> str:
    """``role`` itself if it is one of ``roles`` (``ROLES``), else InvalidRole."""
    if not isinstance(role, str) or role not in roles:
        raise InvalidRole(f"invalid role {role!r}: the roles are {', '.join(roles)}")
    return role


def locked(session: Session, user_id: str) -> User | None:
    """The user as it is now, its row locked until the transaction ends (PostgreSQL).

    A change is read, compared with the field's time, then written: two of
    them at once (the CLI and the auth worker) must not interleave, or the
    earlier could be written over the later.
    """
    return session.get(User, user_id, with_for_update=True, populate_existing=True)


def _newer(at: datetime, last: datetime | None) -> bool:
    return last is None or at > last


def change_account(
    session: Session,
    revocation: RevocationStore,
    user: User,
    at: datetime,
    *,
    roles: Collection[str] | None = None,
    is_active: bool | None = None,
) -> dict[str, Any]:
    """Set roles and/or activity as of ``at``, unless a later change of that field won.

    Wherever a change was made (the CLI here, an administrator at the user
    service), it lands here, and the user service hears it back as ``user.sync``
    ``updated`` at the same time ``at``: every order of concurrent changes ends
    with the later one on both sides. A role taken away or a deactivation ends
    every session and token of the user. Returns what changed.
    """
    changed: dict[str, Any] = {}
    taken_away = False
    if roles is not None and _newer(at, user.roles_changed_at):
        # Even an unchanged list is a decision an older change must not undo.
        user.roles_changed_at = at
        new_roles = sorted(set(roles))
        if new_roles != sorted(user.roles):
            taken_away = bool(set(user.roles) - set(new_roles))
            user.roles = new_roles
            changed["roles"] = new_roles
    if is_active is not None and _newer(at, user.active_changed_at):
        user.active_changed_at = at
        if is_active != user.is_active:
            user.is_active = is_active
            changed["is_active"] = is_active
    if changed:
        announce.updated(session, user, changed, at)
    if taken_away or changed.get("is_active") is False:
        # Tokens carry roles and work while active: the old ones die everywhere.
        revoke_everything(session, revocation, user)
    if roles is not None or is_active is not None:
        log.info("account change user_id=%s changed=%s", user.id, ",".join(sorted(changed)) or "-")
    return changed


def apply_admin_changes(
    session: Session,
    revocation: RevocationStore,
    user_id: str,
    changes: dict[str, Any],
    occurred_at: datetime,
    roles: Collection[str],
) -> dict[str, Any]:
    """Apply ``user.updated``: an administrator's change of ``is_active``/``roles`` over there.

    ``changes`` is what the catalogue's schema loaded; ``roles`` are the role
    names there are (InvalidRole for any other). Returns what changed (empty
    for an unknown user or a change a later one beat).
    """
    for role in changes.get("roles", ()):
        validate_role(role, roles)
    user = locked(session, user_id)
    if user is None:
        return {}
    return change_account(
        session,
        revocation,
        user,
        occurred_at,
        roles=changes.get("roles"),
        is_active=changes.get("is_active"),
    )


def set_role(
    session: Session,
    revocation: RevocationStore,
    email: str,
    role: str,
    *,
    grant: bool,
    roles: Collection[str],
) -> User:
    """Grant or revoke a role (one of ``roles``); revoking ends the user's sessions everywhere."""
    validate_role(role, roles)
    # Stored lower-cased: the unique index on email finds it, whatever the table's size.
    found = session.scalars(select(User.id).where(User.email == normalise_email(email))).first()
    user = locked(session, found) if found is not None else None
    if user is None:
        raise UnknownAccount(email)
    current = set(user.roles)
    wanted = current | {role} if grant else current - {role}
    change_account(session, revocation, user, utcnow(), roles=wanted)
    return user
