"""Whether a genuine token still works here: the account state the sync left behind.

The signature, issuer and audience are checked by :class:`common.tokens.TokenVerifier`;
this is the user service's own check after it, run on every authenticated request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from flask import g
from sqlalchemy import Exists, bindparam, exists, select
from sqlalchemy.orm import Session

from common.auth import AccountDisabled
from common.fields import canonical_id
from common.flask_db import get_session
from common.tokens import InvalidToken
from user_app.models import PendingRevocation, Profile, RevokedSession
from user_app.profiles import is_deleted


class ProfileState(Protocol):
    """What the token check reads of a profile: a :class:`Profile`, or its row as read here."""

    @property
    def id(self) -> str: ...
    @property
    def roles(self) -> list[str]: ...
    @property
    def roles_changed_at(self) -> datetime | None: ...
    @property
    def is_active(self) -> bool: ...
    @property
    def tokens_valid_after(self) -> float | None: ...


@dataclass(frozen=True)
class AccessState:
    """What the user service knows about a token's subject and its login session.

    ``profile`` is the profile's row, read-only (every column by name, as on
    a :class:`Profile`); a view that changes the profile loads it itself.
    """

    profile: ProfileState | None
    deleted: bool
    tokens_valid_after: float | None
    session_revoked: bool = False


def _revoked(sid: Any) -> Exists:
    return exists().where(RevokedSession.session_id == sid)


# Built once: the statement object, and with it SQLAlchemy's cache key, is
# reused by every request instead of being put together again each time. A
# token without ``sid`` binds NULL, which no revoked session matches. The
# profile's columns, not the entity: run on the session's connection, the row
# comes back as it is, without the ORM building (and tracking) a Profile from
# it, a third of the statement's cost on every authenticated request.
_PROFILES = Profile.__table__
_PROFILE_AND_SESSION = select(
    *_PROFILES.columns, _revoked(bindparam("sid")).label("session_revoked")
).where(_PROFILES.c.id == bindparam("user_id"))


def access_state(session: Session, user_id: str, sid: str | None = None) -> AccessState:
    """The profile, deletion and revocation state that decide whether a token still works.

    For a user with a profile, the common case, one statement reads the
    profile and whether login session ``sid`` was revoked.
    """
    row = (
        session.connection().execute(_PROFILE_AND_SESSION, {"user_id": user_id, "sid": sid}).first()
    )
    if row is not None:
        profile = cast(ProfileState, row)
        return AccessState(profile, False, profile.tokens_valid_after, bool(row.session_revoked))
    if is_deleted(session, user_id):
        return AccessState(None, True, None)
    pending = session.get(PendingRevocation, user_id)
    revoked = bool(session.scalar(select(_revoked(sid)))) if sid else False
    return AccessState(None, False, pending.revoked_before if pending else None, revoked)


def token_revoked(iat: float, tokens_valid_after: float | None) -> bool:
    """Whether a token issued at ``iat`` predates the user's last session revocation.

    The rule, shared with the auth service: a token is refused when
    ``iat < revoked_before``. The auth service publishes ``revoked_before`` as
    the whole second after the revocation instant (``floor(now) + 1``) and
    never issues that user a token with an ``iat`` below it, so a token issued
    earlier in the same second as a logout-all (``iat == floor(now)``) is
    refused while the pair issued right after it (``iat == revoked_before``) is
    accepted. Should a fractional value arrive, the same comparison refuses
    every whole-second ``iat`` up to and including the revocation's own second.
    """
    return tokens_valid_after is not None and iat < tokens_valid_after


def effective_roles(profile: ProfileState | None, token_roles: list[str]) -> list[str]:
    """The roles that authorise a request.

    Once an administrator here has set a user's roles, the profile's roles are
    authoritative (an old token still carrying a removed role gets nothing from
    it). Until then the token's roles, fresh from the auth service, count.
    """
    if profile is not None and profile.roles_changed_at is not None:
        return list(profile.roles)
    return list(token_roles)


def check_account(claims: dict[str, Any]) -> dict[str, Any]:
    """Refuse tokens of deleted, signed-out or disabled users; return the effective roles.

    A deleted user, a token issued no later than the user's last revocation of
    every session (see :func:`token_revoked`) or a token of a login session
    that ended gets 401; a deactivated user 403.
    """
    user_id = canonical_id(claims["sub"])
    if user_id is None or user_id != claims["sub"]:
        raise InvalidToken("invalid claim sub", "invalid_claim")
    sid = claims.get("sid")
    state = access_state(get_session(), user_id, sid if isinstance(sid, str) else None)
    # A view that reads the caller's profile answers with this same row: kept
    # for the request, so it is not read twice.
    g.account_profile = state.profile
    if state.deleted:
        raise InvalidToken("account deleted", "account_deleted")
    if state.session_revoked or token_revoked(claims["iat"], state.tokens_valid_after):
        raise InvalidToken("token revoked", "revoked")
    if state.profile is not None and not state.profile.is_active:
        raise AccountDisabled("Account disabled")
    return {**claims, "roles": effective_roles(state.profile, claims.get("roles", []))}
