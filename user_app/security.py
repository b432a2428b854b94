"""How the user service trusts a token: its key source, then the synced account state."""

from __future__ import annotations

from flask import Flask, g

from common.auth import AccountDisabled, BearerAuth
from common.db import get_session
from common.jwks import JWKSKeySet
from common.keys import KeyRing
from common.tokens import InvalidToken, TokenVerifier
from user_app import profiles


def make_key_set(config: dict):
    """The keys tokens are verified with: the auth service's JWKS if configured, else PEM keys.

    Raises ConfigError when the configured key cannot be read.
    """
    if config.get("AUTH_JWKS_URL"):
        return JWKSKeySet(
            config["AUTH_JWKS_URL"],
            cooldown=config["JWKS_REFETCH_COOLDOWN_SECONDS"],
            timeout=config.get("JWKS_TIMEOUT_SECONDS", 5.0),
        )
    # Retired keys stay trusted as long as a token they signed can be alive.
    retain = config["ACCESS_TOKEN_EXPIRE_MINUTES"] * 60 + config["JWT_LEEWAY_SECONDS"]
    if config.get("JWT_PUBLIC_KEY"):
        return KeyRing(public_pem=config["JWT_PUBLIC_KEY"], retain_seconds=retain)
    return KeyRing(public_path=config["PUBLIC_KEY_PATH"], retain_seconds=retain)


def check_account(claims: dict) -> dict:
    """Refuse tokens of deleted, signed-out or disabled users; return the effective roles.

    A deleted user or a token issued no later than the user's last session
    revocation (see :func:`user_app.profiles.token_revoked`) gets 401; a
    deactivated user 403.
    """
    user_id = profiles.normalise_user_id(claims["sub"])
    if user_id is None or user_id != claims["sub"]:
        raise InvalidToken("invalid claim sub")
    state = profiles.access_state(get_session(), user_id)
    # The view reads the same row: keep it for the request, so it is not read twice.
    # (The session's identity map holds rows weakly, so without this reference
    # the object is gone by the time the view asks for it again.)
    g.account_profile = state.profile
    if state.deleted:
        raise InvalidToken("account deleted")
    if profiles.token_revoked(claims["iat"], state.tokens_valid_after):
        raise InvalidToken("token revoked")
    if state.profile is not None and not state.profile.is_active:
        raise AccountDisabled("Account disabled")
    return {**claims, "roles": profiles.effective_roles(state.profile, claims.get("roles", []))}


def init_auth(app: Flask) -> BearerAuth:
    """Install the app's bearer guard from its configuration."""
    config = app.config
    verifier = TokenVerifier(
        make_key_set(config),
        issuer=config["JWT_ISSUER"],
        audience=config["JWT_AUDIENCE"],
        leeway=config["JWT_LEEWAY_SECONDS"],
    )
    auth = BearerAuth(verifier, check=check_account, realm="user-service")
    auth.init_app(app)
    return auth
