"""A second factor: TOTP (RFC 6238, through pyotp), recovery codes, and the login's second step.

- **Enrolment**: the password earns a fresh secret and its ``otpauth://`` URI;
  it stays pending until a right code confirms it, which turns MFA on and hands
  out ten single-use recovery codes, once.
- **Secrets at rest**: the TOTP secret is sealed with AES-GCM under a key
  derived from ``PASSWORD_PEPPER`` (configuration, not the database) and bound
  to its user's id; recovery codes are kept as HMACs under another key derived
  from it. A stolen database alone yields neither.
- **Codes**: SHA-1, 6 digits, 30 s steps; the step before and after the current
  one are accepted (clock drift). A code's step must be later than the last one
  accepted, so a code, once used, is refused for its whole window, and so is any
  older one.
- **The login's second step**: a right password of an MFA account earns an
  ``mfa_token`` (:func:`start_challenge`): random, stored as a hash, bound to
  the password it was earned with, good for 5 minutes, once, and dead after 5
  wrong codes. Wrong codes also count in the login throttle.

Functions take the caller's session and never commit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete
from sqlalchemy.orm import Session

from auth_app import accounts
from auth_app.login_throttle import LoginThrottle
from auth_app.models import MfaChallenge, RecoveryCode, TotpCredential, User
from auth_app.passwords import PasswordHasher
from auth_app.security_events import EventType, record
from common.db import utcnow

#: How long a login's second step may take, and how many wrong codes it survives.
CHALLENGE_TTL = timedelta(minutes=5)
MAX_CODE_FAILURES = 5
RECOVERY_CODE_COUNT = 10
# Recovery codes: 10 characters of an alphabet without look-alikes (50 bits), shown as xxxxx-xxxxx.
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstvwxyz0123456789"
TOTP_DIGITS = 6


class MfaAlreadyOn(Exception):
    """MFA is on already; turn it off first to enrol again."""


class MfaNotOn(Exception):
    """MFA is not on."""


class NothingPending(Exception):
    """No enrolment waits for its confirming code."""


class WrongCode(Exception):
    """The code (TOTP or recovery) is wrong, spent, or outside the accepted window."""


class InvalidMfaToken(Exception):
    """Unknown, used, expired, dead after wrong codes, or earned with a password since changed."""


class Factor(StrEnum):
    """What proved the second factor."""

    TOTP = "otp"
    RECOVERY_CODE = "recovery_code"


def _derive(pepper: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        pepper.encode("utf-8", "surrogatepass")
    )


class MfaKeys:
    """The keys that protect second factors at rest, derived from ``PASSWORD_PEPPER``."""

    def __init__(self, pepper: str) -> None:
        self._sealing = AESGCM(_derive(pepper, b"authsvc totp secret v1"))
        self._codes = _derive(pepper, b"authsvc recovery code v1")

    def seal(self, user_id: str, secret: str) -> str:
        """``secret`` encrypted, bound to ``user_id`` (as associated data)."""
        nonce = os.urandom(12)
        sealed = self._sealing.encrypt(nonce, secret.encode(), user_id.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, user_id: str, sealed: str) -> str:
        """The secret of :meth:`seal`; ValueError if it was not sealed for ``user_id`` here."""
        raw = base64.b64decode(sealed)
        try:
            return self._sealing.decrypt(raw[:12], raw[12:], user_id.encode()).decode()
        except InvalidTag:
            raise ValueError("a TOTP secret sealed under another key or for another user") from None

    def code_hash(self, user_id: str, code: str) -> str:
        """The stored form of a recovery code of ``user_id`` (spaces, dashes and case ignored)."""
        normal = "".join(code.split()).replace("-", "").lower()
        message = f"{user_id}:{normal}".encode("utf-8", "surrogatepass")
        return hmac.new(self._codes, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Enrolment:
    """What an authenticator app needs: the secret, and the URI its QR code holds."""

    secret: str
    otpauth_uri: str


def _locked_credential(session: Session, user_id: str) -> TotpCredential | None:
    return session.get(TotpCredential, user_id, with_for_update=True, populate_existing=True)


def begin_enrolment(
    session: Session,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    keys: MfaKeys,
    user: User,
    *,
    password: str,
    address: str,
    issuer: str,
) -> Enrolment:
    """A new pending TOTP secret for ``user`` after checking the password; MfaAlreadyOn if on.

    A pending one from before is replaced. Wrong passwords count as failed logins.
    """
    accounts.recheck_password(session, hasher, throttle, user, password, address, "mfa enrolment")
    if user.mfa_enabled:
        raise MfaAlreadyOn()
    secret = pyotp.random_base32()
    credential = _locked_credential(session, user.id)
    if credential is None:
        credential = TotpCredential(user_id=user.id, secret="")
        session.add(credential)
    credential.secret = keys.seal(user.id, secret)
    credential.created_at = utcnow()
    credential.confirmed_at = None
    credential.last_step = None
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=issuer)
    return Enrolment(secret, uri)


def _accepted_step(secret: str, code: str, last_step: int | None, now: datetime) -> int | None:
    """The time step ``code`` belongs to, within one step of now and after ``last_step``."""
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        fresh = last_step is None or step > last_step
        if fresh and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def confirm_enrolment(session: Session, keys: MfaKeys, user: User, code: str) -> list[str]:
    """Turn MFA on with a right code for the pending secret; the new recovery codes.

    Raises NothingPending (no enrolment, or MFA already on) or WrongCode.
    """
    current = accounts.locked(session, user.id)
    credential = _locked_credential(session, user.id)
    if current is None or current.mfa_enabled or credential is None:
        raise NothingPending()
    secret = keys.open(user.id, credential.secret)
    step = _accepted_step(secret, code, credential.last_step, utcnow())
    if step is None:
        raise WrongCode()
    now = utcnow()
    credential.last_step = step
    credential.confirmed_at = now
    current.mfa_enabled = True
    codes = _new_recovery_codes(session, keys, current.id, now)
    record(session, EventType.MFA_ENABLED, current.id)
    return codes


def _new_recovery_codes(session: Session, keys: MfaKeys, user_id: str, now: datetime) -> list[str]:
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        code = f"{raw[:5]}-{raw[5:]}"
        session.add(
            RecoveryCode(code_hash=keys.code_hash(user_id, code), user_id=user_id, created_at=now)
        )
        codes.append(code)
    return codes


def check_second_factor(
    session: Session,
    keys: MfaKeys,
    user: User,
    *,
    code: str | None = None,
    recovery_code: str | None = None,
) -> Factor:
    """Spend a TOTP code or a recovery code of ``user``; which it was, or WrongCode.

    A TOTP code's step becomes the last accepted one; a recovery code is
    deleted. Both under the credential's row lock, so of two uses at once one wins.
    """
    credential = _locked_credential(session, user.id)
    if credential is None or credential.confirmed_at is None:
        raise WrongCode()
    if code is not None:
        step = _accepted_step(
            keys.open(user.id, credential.secret), code, credential.last_step, utcnow()
        )
        if step is None:
            raise WrongCode()
        credential.last_step = step
        return Factor.TOTP
    if recovery_code:
        spent = session.execute(
            delete(RecoveryCode)
            .where(
                RecoveryCode.user_id == user.id,
                RecoveryCode.code_hash == keys.code_hash(user.id, recovery_code),
            )
            .execution_options(synchronize_session=False)
        )
        if spent.rowcount == 1:  # type: ignore[attr-defined]
            record(session, EventType.RECOVERY_CODE_USED, user.id)
            return Factor.RECOVERY_CODE
    raise WrongCode()


def _either(code: str) -> dict[str, str]:
    """A code field that takes both: six digits are a TOTP code, anything else a recovery code."""
    if len(code) == TOTP_DIGITS and code.isdigit():
        return {"code": code}
    return {"recovery_code": code}


def disable(
    session: Session,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    keys: MfaKeys,
    user: User,
    *,
    password: str,
    code: str,
    address: str,
) -> Factor:
    """Turn MFA off with the password and a code (TOTP or recovery); the secret and codes die.

    Raises InvalidCredentials, LoginThrottled (wrong passwords and codes are
    failed logins), MfaNotOn or WrongCode (its mfa_failed event is recorded).
    The caller ends the user's other sessions.
    """
    accounts.recheck_password(session, hasher, throttle, user, password, address, "mfa disable")
    if not user.mfa_enabled:
        raise MfaNotOn()
    account = accounts.throttle_account(user, email=None, username=None)
    retry_after = throttle.attempt(account, address)
    if retry_after is not None:
        raise accounts.LoginThrottled(retry_after)
    try:
        factor = check_second_factor(session, keys, user, **_either(code))
    except WrongCode:
        record(session, EventType.MFA_FAILED, user.id)
        raise
    throttle.clear(account, address)
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    session.execute(delete(TotpCredential).where(TotpCredential.user_id == user.id))
    user.mfa_enabled = False
    record(session, EventType.MFA_DISABLED, user.id)
    return factor


# -- the login's second step ---------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _password_digest(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()


def start_challenge(session: Session, user: User) -> tuple[str, int]:
    """An ``mfa_token`` for ``user``, whose password was just checked; (token, seconds it lives)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        MfaChallenge(
            token_hash=_token_hash(token),
            user_id=user.id,
            password_digest=_password_digest(user),
            created_at=now,
            expires_at=now + CHALLENGE_TTL,
            failures=0,
        )
    )
    return token, math.floor(CHALLENGE_TTL.total_seconds())


def complete_login(
    session: Session,
    throttle: LoginThrottle,
    keys: MfaKeys,
    *,
    mfa_token: str,
    code: str | None,
    recovery_code: str | None,
    address: str,
) -> tuple[User, Factor]:
    """The user of a live ``mfa_token`` whose second factor this is; the token is spent.

    Raises InvalidMfaToken, LoginThrottled, or WrongCode (counted on the token,
    which dies at the fifth, and in the login throttle; its mfa_failed event
    recorded: the caller commits before refusing).
    """
    challenge = session.get(
        MfaChallenge, _token_hash(mfa_token), with_for_update=True, populate_existing=True
    )
    if challenge is None or challenge.expires_at <= utcnow():
        raise InvalidMfaToken()
    user = accounts.locked(session, challenge.user_id)
    if (
        user is None
        or not user.is_active
        or not user.mfa_enabled
        or challenge.password_digest != _password_digest(user)
    ):
        session.delete(challenge)
        raise InvalidMfaToken()
    account = accounts.throttle_account(user, email=None, username=None)
    retry_after = throttle.attempt(account, address)
    if retry_after is not None:
        record(session, EventType.LOGIN_THROTTLED, user.id)
        raise accounts.LoginThrottled(retry_after)
    try:
        factor = check_second_factor(session, keys, user, code=code, recovery_code=recovery_code)
    except WrongCode:
        challenge.failures += 1
        if challenge.failures >= MAX_CODE_FAILURES:
            session.delete(challenge)
        record(session, EventType.MFA_FAILED, user.id)
        raise
    throttle.clear(account, address)
    session.delete(challenge)
    return user, factor
