"""Public auth endpoints: register, login, refresh, introspect."""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from auth_app import accounts, sessions
from auth_app.components import check_access_token, components
from auth_app.models import User
from auth_app.passwords import PasswordPolicyError
from auth_app.resources.schemas import (
    IntrospectionSchema,
    IntrospectSchema,
    LoginSchema,
    RefreshSchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
)
from auth_app.tokens import token_pair
from common.auth import AccountDisabled, DependencyUnavailable
from common.db import conflict_on_integrity_error, get_session, utcnow
from common.tokens import InvalidToken

log = logging.getLogger("auth_app.auth")

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Accounts and tokens")

# Token responses must never be cached (RFC 6749 section 5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# The views flask-limiter guards per client IP (see auth_app.create_app).
RATE_LIMITED_ENDPOINTS = ("auth.Register", "auth.Login", "auth.Refresh")


def issue_pair(user: User, sid: str | None = None, refresh_token: str | None = None) -> dict:
    """A token pair for ``user``; opens a session family unless one is given."""
    config = current_app.config
    refresh_ttl = timedelta(days=config["REFRESH_TOKEN_EXPIRE_DAYS"])
    if sid is None:
        sid, refresh_token = sessions.start(get_session(), user.id, utcnow(), refresh_ttl)
    comps = components()
    access_token = comps.issuer.issue(user, sid, comps.revocation.issued_at_for(user.id))
    return token_pair(
        access_token,
        refresh_token,
        comps.issuer.ttl,
        int(refresh_ttl.total_seconds()),
    )


def policy_error(error: PasswordPolicyError, field: str = "password"):
    """Abort with 422 and the policy's reasons under the password field."""
    abort(422, message="Password refused", errors={"json": {field: error.messages}})


@blp.route("/register")
class Register(MethodView):
    @blp.arguments(RegisterSchema)
    @blp.response(201, UserSchema)
    @blp.alt_response(409, description="Email or username taken")
    def post(self, data):
        """Create an account."""
        db = get_session()
        try:
            user = accounts.register(
                db,
                components().hasher,
                email=data["email"],
                username=data["username"],
                password=data["password"],
                min_length=current_app.config["PASSWORD_MIN_LENGTH"],
            )
        except PasswordPolicyError as error:
            policy_error(error)
        except accounts.AccountExists as error:
            abort(409, message=f"That {error.field} is already registered")
        with conflict_on_integrity_error("That email or username is already registered"):
            db.commit()
        return user


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Invalid credentials")
    @blp.alt_response(403, description="Account disabled")
    @blp.alt_response(429, description="Too many failed logins")
    def post(self, data):
        """Exchange a password for a token pair.

        Answers 503 while Redis is unreachable: the failed-login throttle and
        the user's revocation cut-off, which every new token must clear, live there.
        """
        db = get_session()
        comps = components()
        try:
            user = accounts.authenticate(
                db,
                comps.hasher,
                comps.throttle,
                email=data.get("email"),
                username=data.get("username"),
                password=data["password"],
            )
        except accounts.InvalidCredentials:
            abort(401, message="Invalid credentials")
        except accounts.LoginThrottled as error:
            abort(
                429,
                message="Too many failed logins for this account; try again later",
                headers={"Retry-After": str(error.retry_after)},
            )
        except accounts.AccountInactive:
            abort(403, message="Account disabled")
        pair = issue_pair(user)
        db.commit()
        return pair, 200, NO_STORE


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Unknown, expired, revoked or reused refresh token")
    def post(self, data):
        """Exchange a refresh token for a new pair; the presented one dies.

        Answers 503 while Redis is unreachable, and the presented token then stays alive.
        """
        db = get_session()
        config = current_app.config
        ttl = timedelta(days=config["REFRESH_TOKEN_EXPIRE_DAYS"])
        try:
            family, refresh_token = sessions.rotate(db, data["refresh_token"], utcnow(), ttl)
        except sessions.RefreshTokenReused as error:
            components().revocation.revoke_session(error.sid)
            db.commit()
            log.warning("refresh reuse detected user_id=%s sid=%s", error.user_id, error.sid)
            abort(401, message="Invalid refresh token")
        except sessions.InvalidRefreshToken as error:
            log.info("refresh refused reason=%s", str(error).replace(" ", "_"))
            abort(401, message="Invalid refresh token")
        user = db.get(User, family.user_id)
        if user is None or not user.is_active:
            db.rollback()
            log.info("refresh refused reason=account_disabled user_id=%s", family.user_id)
            abort(401, message="Invalid refresh token")
        pair = issue_pair(user, family.id, refresh_token)
        db.commit()
        log.info("refresh ok user_id=%s sid=%s", user.id, family.id)
        return pair, 200, NO_STORE


@blp.route("/introspect")
class Introspect(MethodView):
    @blp.arguments(IntrospectSchema)
    @blp.response(200, IntrospectionSchema)
    def post(self, data):
        """Whether a token is a live access token of this service, and its claims (RFC 7662)."""
        try:
            claims = components().verifier.verify(data["token"])
            claims = check_access_token(claims)
        except (InvalidToken, AccountDisabled):
            return {"active": False}, 200, NO_STORE
        except DependencyUnavailable as error:
            abort(503, message=str(error))
        return {"active": True, **claims, "token_type": "access_token"}, 200, NO_STORE
