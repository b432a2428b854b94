"""``/api/v1/auth``: register, login, refresh, introspect."""

from __future__ import annotations

from typing import Any, NoReturn

from flask.views import MethodView
from flask_smorest import abort

from auth_app import accounts, tokens
from auth_app.extensions import (
    TOO_MANY_REQUESTS,
    auth_rate_limit,
    limiter,
    login_throttle,
    password_hasher,
    settings,
    token_issuer,
)
from auth_app.login_sessions import EndedFamily, InvalidRefreshToken
from auth_app.passwords import PasswordPolicyError
from auth_app.resources.auth.schemas import (
    IntrospectionSchema,
    IntrospectSchema,
    LoginSchema,
    RefreshSchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
)
from common.auth import AccountDisabled, DependencyUnavailable, bearer_auth
from common.flask_db import conflict_on_integrity_error, get_session
from common.tokens import InvalidToken
from common.web import ServiceBlueprint

blp = ServiceBlueprint(
    "auth", __name__, url_prefix="/api/v1/auth", description="Accounts and tokens"
)

# Token responses must never be cached (RFC 6749 section 5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

rate_limited = limiter.limit(auth_rate_limit, error_message=TOO_MANY_REQUESTS)


def policy_error(error: PasswordPolicyError, field: str = "password") -> NoReturn:
    """Abort with 422 and the policy's reasons under the password field."""
    abort(422, message="Password refused", errors={"json": {field: error.messages}})


@blp.route("/register")
class Register(MethodView):
    @rate_limited
    @blp.arguments(RegisterSchema)
    @blp.response(201, UserSchema)
    @blp.alt_response(409, description="Email or username taken")
    def post(self, data: dict) -> Any:
        """Create an account."""
        session = get_session()
        try:
            user = accounts.register(
                session,
                password_hasher(),
                email=data["email"],
                username=data["username"],
                password=data["password"],
                min_length=settings().password_min_length,
            )
        except PasswordPolicyError as error:
            policy_error(error)
        except accounts.AccountExists as error:
            session.rollback()
            abort(409, message=f"That {error.field} is already registered")
        with conflict_on_integrity_error("That email or username is already registered"):
            session.commit()
        return user


@blp.route("/login")
class Login(MethodView):
    @rate_limited
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Invalid credentials")
    @blp.alt_response(403, description="Account disabled")
    @blp.alt_response(429, description="Too many failed logins")
    def post(self, data: dict) -> Any:
        """Exchange a password for a token pair.

        Answers 503 while Redis is unreachable: the failed-login throttle and
        the user's revocation cut-off, which every new token must clear, live there.
        """
        session = get_session()
        try:
            user = accounts.authenticate(
                session,
                password_hasher(),
                login_throttle(),
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
        pair = token_issuer().pair(session, user)
        session.commit()
        return pair, 200, NO_STORE


@blp.route("/refresh")
class Refresh(MethodView):
    @rate_limited
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Unknown, expired, revoked or reused refresh token")
    def post(self, data: dict) -> Any:
        """Exchange a refresh token for a new pair of the same session; the presented one dies.

        A token rotated less than ``REFRESH_REUSE_GRACE_SECONDS`` ago answers
        once more (two tabs refreshing at once); one rotated longer ago is a
        replay, and ends its whole session. A replay answers 503 while Redis is
        unreachable, and its session is then left as it was.
        """
        session = get_session()
        try:
            pair = tokens.refresh(session, token_issuer(), data["refresh_token"])
        except EndedFamily:
            session.commit()  # a replay or a login past its end: the session's end stands
            abort(401, message="Invalid refresh token")
        except InvalidRefreshToken:
            abort(401, message="Invalid refresh token")
        session.commit()
        return pair, 200, NO_STORE


@blp.route("/introspect")
class Introspect(MethodView):
    @blp.arguments(IntrospectSchema)
    @blp.response(200, IntrospectionSchema)
    def post(self, data: dict) -> Any:
        """Whether a token is a live access token of this service, and its claims (RFC 7662)."""
        try:
            claims = bearer_auth().claims_of(data["token"])
        except (InvalidToken, AccountDisabled):
            return {"active": False}, 200, NO_STORE
        except DependencyUnavailable as error:
            abort(503, message=str(error))
        return {"active": True, **claims, "token_type": "access_token"}, 200, NO_STORE
