"""Whose address is it: email verification, and changing the email, both by mailed link.

Plain functions over a session, never committing; the views call them and
commit. A verification link proves the address it was mailed to: it stops
working if the account's email changes first. An email change is confirmed
from the new address, with a notice to the old one, and reaches the user
service as a ``user.sync`` ``updated`` carrying the change's time, so a later
change there or here is never undone by it.
"""

from __future__ import annotations

import logging
import math

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auth_app import account_tokens, accounts, announce, mail
from auth_app.account_tokens import InvalidToken, Purpose
from auth_app.config import AuthSettings
from auth_app.login_throttle import LoginThrottle
from auth_app.models import User
from auth_app.passwords import PasswordHasher
from auth_app.recovery import RESEND_INTERVAL
from auth_app.security_events import EventType, record
from common.db import utcnow

log = logging.getLogger("auth_app.email_address")


class AlreadyVerified(Exception):
    """The account's email is verified already."""


class AskedTooSoon(Exception):
    """A mail of this kind was asked for less than the resend interval ago."""

    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


def _asked_too_soon(session: Session, user: User, purpose: Purpose) -> int | None:
    """Seconds until the user may ask for another mail of ``purpose``, or None if now."""
    previous = account_tokens.latest(session, user.id, purpose)
    if previous is None or not previous.requested:
        return None
    wait = (previous.created_at + RESEND_INTERVAL - utcnow()).total_seconds()
    return math.ceil(wait) if wait > 0 else None


def send_verification(
    session: Session, settings: AuthSettings, user: User, *, requested: bool = True
) -> None:
    """Mail a verification link for the account's email; an earlier link dies.

    ``requested`` is False for the mail of a registration, which does not
    count against the resend interval.
    """
    token = account_tokens.issue(
        session,
        user.id,
        Purpose.VERIFY_EMAIL,
        user.email,
        settings.verify_token_ttl,
        requested=requested,
    )
    sent = mail.write(
        session,
        settings,
        mail.VERIFY_EMAIL,
        user.email,
        user.id,
        username=user.username,
        email=user.email,
        link=mail.link(settings, mail.VERIFY_EMAIL, token),
        valid_for=mail.describe(settings.verify_token_ttl),
    )
    log.info("verification mail queued user_id=%s mail_id=%s", user.id, sent.id)


def request_verification(session: Session, settings: AuthSettings, user: User) -> None:
    """The signed-in user asks for a verification mail.

    Raises AlreadyVerified, or AskedTooSoon within the resend interval of the
    last one asked for (the registration's mail does not count).
    """
    current = accounts.locked(session, user.id)
    if current is None:
        raise accounts.AccountGone()
    if current.email_verified:
        raise AlreadyVerified()
    retry_after = _asked_too_soon(session, current, Purpose.VERIFY_EMAIL)
    if retry_after is not None:
        raise AskedTooSoon(retry_after)
    send_verification(session, settings, current)


def request_verification_by_email(session: Session, settings: AuthSettings, email: str) -> None:
    """Anyone asks for a verification mail to ``email``: sent only where it can help.

    That is an active account with this email, unverified, not asked for within
    the resend interval. Every other case sends nothing and says nothing.
    """
    user = accounts.find_by_email(session, email)
    if user is None or not user.is_active:
        log.info(
            "verification mail not sent reason=%s",
            "unknown_account" if user is None else "disabled",
        )
        return
    try:
        request_verification(session, settings, user)
    except (AlreadyVerified, AskedTooSoon, accounts.AccountGone) as error:
        log.info("verification mail not sent reason=%s user_id=%s", type(error).__name__, user.id)


def verify_email(session: Session, token: str) -> User:
    """Mark the account's email verified with a verification token; InvalidToken if it is not one.

    A token mailed to an address the account no longer has is invalid.
    """
    row = account_tokens.find(session, Purpose.VERIFY_EMAIL, token)
    user = accounts.locked(session, row.user_id)
    if user is None or row.email != user.email:
        raise InvalidToken()
    account_tokens.consume(session, row)
    if not user.email_verified:
        user.email_verified = True
        announce.updated(session, user, {"email_verified": True}, utcnow())
        record(session, EventType.EMAIL_VERIFIED, user.id)
    log.info("email verified user_id=%s", user.id)
    return user


def request_email_change(
    session: Session,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    settings: AuthSettings,
    user: User,
    *,
    new_email: str,
    password: str,
    address: str,
) -> None:
    """Ask to change the email: a confirmation link to the new address, a notice to the old.

    Needs the password (a failure of the login throttle, like a password change);
    raises AccountExists when an account has the new address already, and
    AskedTooSoon within the resend interval of the last change asked for.
    """
    accounts.recheck_password(session, hasher, throttle, user, password, address, "email change")
    new_email = accounts.normalise_email(new_email)
    if accounts.email_taken(session, new_email):
        raise accounts.AccountExists("email")
    retry_after = _asked_too_soon(session, user, Purpose.CHANGE_EMAIL)
    if retry_after is not None:
        raise AskedTooSoon(retry_after)
    token = account_tokens.issue(
        session, user.id, Purpose.CHANGE_EMAIL, new_email, settings.verify_token_ttl
    )
    mail.write(
        session,
        settings,
        mail.CONFIRM_EMAIL_CHANGE,
        new_email,
        user.id,
        username=user.username,
        email=new_email,
        link=mail.link(settings, mail.CONFIRM_EMAIL_CHANGE, token),
        valid_for=mail.describe(settings.verify_token_ttl),
    )
    mail.write(
        session,
        settings,
        mail.EMAIL_CHANGE_NOTICE,
        user.email,
        user.id,
        username=user.username,
        email=user.email,
        new_email=new_email,
    )
    log.info("email change asked user_id=%s", user.id)


def confirm_email_change(session: Session, token: str) -> User:
    """Give the account the new, verified email of a change token; the old address is free.

    Raises InvalidToken, or AccountExists when another account took the
    address meanwhile. Every other mailed token of the user (a reset link sent
    to the old address) dies.
    """
    row = account_tokens.find(session, Purpose.CHANGE_EMAIL, token)
    user = accounts.locked(session, row.user_id)
    if user is None:
        raise InvalidToken()
    new_email = row.email
    if accounts.email_taken(session, new_email):
        raise accounts.AccountExists("email")
    account_tokens.consume(session, row)
    account_tokens.revoke(session, user.id)
    user.email = new_email
    user.email_verified = True
    try:
        session.flush()
    except IntegrityError:
        # An account registered with the address between the check and now.
        raise accounts.AccountExists("email") from None
    announce.updated(session, user, {"email": new_email, "email_verified": True}, utcnow())
    record(session, EventType.EMAIL_CHANGED, user.id)
    log.info("email changed user_id=%s", user.id)
    return user
