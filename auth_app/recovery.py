"""Password reset by mail: ask for a link (``forgot_password``), use it (``reset_password``).

Plain functions over a session, never committing; the views call them and
commit. Asking reveals nothing: an unknown or disabled address, and an account
asked for again within :data:`RESEND_INTERVAL`, get no mail and no error, so
the caller cannot tell them from an account that got one.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session

from auth_app import account_tokens, accounts, announce, mail
from auth_app.account_tokens import InvalidToken, Purpose
from auth_app.config import AuthSettings
from auth_app.models import User
from auth_app.passwords import PasswordHasher, check_policy
from auth_app.revocation import RevocationStore
from auth_app.security_events import EventType, record
from common.db import utcnow

log = logging.getLogger("auth_app.recovery")

#: An account gets at most one reset mail (and one verification mail asked for) this often.
RESEND_INTERVAL = timedelta(seconds=60)


def forgot_password(session: Session, settings: AuthSettings, email: str) -> None:
    """Mail a reset link to the active account with this email, if there is one.

    The link's token replaces any earlier one of the account. At most one
    mail per :data:`RESEND_INTERVAL` and account; more asks are ignored.
    """
    found = accounts.find_by_email(session, email)
    user = accounts.locked(session, found.id) if found is not None else None
    if user is None or not user.is_active:
        log.info(
            "password reset not sent reason=%s", "unknown_account" if user is None else "disabled"
        )
        return
    record(session, EventType.PASSWORD_RESET_REQUESTED, user.id)
    previous = account_tokens.latest(session, user.id, Purpose.RESET_PASSWORD)
    if previous is not None and previous.created_at > utcnow() - RESEND_INTERVAL:
        log.info("password reset not sent reason=asked_again user_id=%s", user.id)
        return
    token = account_tokens.issue(
        session, user.id, Purpose.RESET_PASSWORD, user.email, settings.reset_token_ttl
    )
    sent = mail.write(
        session,
        settings,
        mail.RESET_PASSWORD,
        user.email,
        user.id,
        username=user.username,
        link=mail.link(settings, mail.RESET_PASSWORD, token),
        valid_for=mail.describe(settings.reset_token_ttl),
    )
    log.info("password reset mail queued user_id=%s mail_id=%s", user.id, sent.id)


def reset_password(
    session: Session,
    hasher: PasswordHasher,
    revocation: RevocationStore,
    settings: AuthSettings,
    token: str,
    new_password: str,
) -> User:
    """Set a new password with a reset token; every earlier session and token of the user dies.

    Raises InvalidToken (unknown, used, replaced or expired), AccountInactive,
    or PasswordPolicyError, which leaves the token usable for a better password.
    Following the link proves the mailbox, so the address counts as verified.
    Every other mailed token of the user (a pending email change) dies too.
    """
    row = account_tokens.find(session, Purpose.RESET_PASSWORD, token)
    user = accounts.locked(session, row.user_id)
    if user is None:
        raise InvalidToken()
    if not user.is_active:
        log.info("password reset refused reason=account_disabled user_id=%s", user.id)
        raise accounts.AccountInactive()
    check_policy(
        new_password,
        email=user.email,
        username=user.username,
        min_length=settings.password_min_length,
    )
    account_tokens.consume(session, row)
    user.password_hash = hasher.hash(new_password)
    if row.email == user.email and not user.email_verified:
        user.email_verified = True
        announce.updated(session, user, {"email_verified": True}, utcnow())
        record(session, EventType.EMAIL_VERIFIED, user.id)
    account_tokens.revoke(session, user.id)
    accounts.revoke_everything(session, revocation, user)
    record(session, EventType.PASSWORD_RESET, user.id)
    log.info("password reset user_id=%s", user.id)
    return user
