"""``/api/v1/auth``: register, login, refresh, introspect."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from flask import request
from flask.views import MethodView
from flask_smorest import abort
from flask_smorest.error_handler import ErrorSchema
from sqlalchemy.orm import Session

from auth_app import accounts, email_address, introspection, mfa, tokens
from auth_app.extensions import (
    TOO_MANY_REQUESTS,
    auth_rate_limit,
    introspection_clients,
    limiter,
    login_throttle,
    metrics,
    mfa_keys,
    password_hasher,
    settings,
    token_issuer,
)
from auth_app.login_sessions import EndedFamily, InvalidRefreshToken, RefreshTokenReused
from auth_app.models import User
from auth_app.passwords import PasswordPolicyError
from auth_app.resources.auth.schemas import (
    IntrospectionSchema,
    IntrospectSchema,
    LoginMfaSchema,
    LoginSchema,
    RefreshSchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
)
from common.auth import DependencyUnavailable, bearer_auth
from common.flask_db import conflict_on_integrity_error, get_session
from common.web import ServiceBlueprint, client_address

blp = ServiceBlueprint(
    "auth", __name__, url_prefix="/api/v1/auth", description="Accounts and tokens"
)

# Token responses must never be cached (RFC 6749 section 5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

#: The per-client-address limit (``RATELIMIT_AUTH``) of every endpoint anyone may call
#: that costs a password hash or a token lookup: register, login and refresh here, and
#: the password forgot and reset endpoints when they come. flask-limiter scopes a limit
#: to its endpoint, so each endpoint has its own bucket per address.
rate_limited = limiter.limit(auth_rate_limit, error_message=TOO_MANY_REQUESTS)
RATE_LIMITED = "Too many requests from this address"
THROTTLED = "Too many wrong passwords for this account from this address"

# Request examples, one per body (the README's "Trying it" account).
EXAMPLE_PASSWORD = "analytical-engine-1843"
REGISTER_EXAMPLE = {"email": "ada@example.com", "username": "ada", "password": EXAMPLE_PASSWORD}
LOGIN_EXAMPLE = {"email": "ada@example.com", "password": EXAMPLE_PASSWORD}
REFRESH_TOKEN_EXAMPLE = "Xk3o6hV1m0b2Zc5Q9rYw7tLp4sNa8dEf0gHj1kMn2pQ"
ACCESS_TOKEN_EXAMPLE = "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9.e30.c2lnbmF0dXJl"


def _link(name: str, path: str, body: dict) -> dict:
    # An OpenAPI link: the body of a following POST ``path`` made from this
    # exchange (clients and stateful API testers follow them: register, then log
    # in; log in, then refresh or introspect). The body is the whole request:
    # ``x-schemathesis`` says so to schemathesis, which would otherwise mix it
    # with generated fields (login takes exactly one of email or username).
    pointer = path.replace("/", "~1")
    return {
        name: {
            "operationRef": f"#/paths/{pointer}/post",
            "requestBody": body,
            "x-schemathesis": {"merge_body": False},
        }
    }


LINKS_FROM_TOKEN_PAIR = {
    **_link("Refresh", "/api/v1/auth/refresh", {"refresh_token": "$response.body#/refresh_token"}),
    **_link("Introspect", "/api/v1/auth/introspect", {"token": "$response.body#/access_token"}),
}
# The password policy is more than a JSON schema can say: its refusal is a documented 422.
POLICY_REFUSED = (
    "Invalid body, or a password the policy refuses: shorter than PASSWORD_MIN_LENGTH, "
    "common or breached-looking, or equal to the email or username "
    '(message "Password refused", reasons under errors.json)'
)


def policy_error(error: PasswordPolicyError, field: str = "password") -> NoReturn:
    """Abort with 422 and the policy's reasons under the password field."""
    abort(422, message="Password refused", errors={"json": {field: error.messages}})


def throttled(error: accounts.LoginThrottled, message: str) -> NoReturn:
    """Abort with 429 and ``Retry-After``: too many wrong passwords from this address."""
    abort(429, message=message, headers={"Retry-After": str(error.retry_after)})


@contextmanager
def password_checked(wrong: str = "Wrong password") -> Iterator[None]:
    """Answer what re-checking the signed-in user's password refuses, in the block.

    A wrong password is 401 ``wrong``, an account deleted meanwhile 401, and
    too many wrong passwords from this address 429 with ``Retry-After``.
    """
    try:
        yield
    except accounts.InvalidCredentials:
        abort(401, message=wrong)
    except accounts.AccountGone:
        abort(401, message="Account deleted")
    except accounts.LoginThrottled as error:
        throttled(error, "Too many wrong passwords for this account; try again later")


@blp.route("/register")
class Register(MethodView):
    @rate_limited
    @blp.arguments(RegisterSchema, example=REGISTER_EXAMPLE)
    @blp.response(201, UserSchema)
    @blp.doc(
        responses={
            201: {
                "links": _link(
                    "LogIn",
                    "/api/v1/auth/login",
                    {"email": "$response.body#/email", "password": "$request.body#/password"},
                )
            }
        }
    )
    @blp.alt_response(409, description="Email or username taken")
    @blp.alt_response(422, schema=ErrorSchema, description=POLICY_REFUSED)
    @blp.alt_response(429, description=RATE_LIMITED)
    def post(self, data: dict) -> Any:
        """Create an account; unless ``EMAIL_VERIFICATION=off``, mail it a verification link."""
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
        if settings().email_verification != "off":
            email_address.send_verification(session, settings(), user, requested=False)
        with conflict_on_integrity_error("That email or username is already registered"):
            session.commit()
        return user


def refuse(session: Session, status: int, message: str, **kwargs: Any) -> NoReturn:
    """Commit what the refusal recorded (its security event, a spent token), then abort."""
    session.commit()
    abort(status, message=message, **kwargs)


def mfa_challenge(session: Session, user: User) -> tuple[dict, int, dict]:
    """The answer of a right password of an MFA account: an ``mfa_token`` and no tokens."""
    token, expires_in = mfa.start_challenge(session, user)
    session.commit()
    return {"mfa_required": True, "mfa_token": token, "expires_in": expires_in}, 200, NO_STORE


#: A login's 200, and a password reset's: a token pair, or with MFA on (and no
#: tokens yet) the mfa_token that POST login/mfa takes with a code. The views
#: return either dict as it is; the document says which two shapes it may have.
LOGIN_ANSWER = {
    "description": "A token pair; or, with MFA on, mfa_required and the mfa_token "
    "that POST login/mfa takes with a code (no tokens yet)",
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/TokenPair"},
                    {"$ref": "#/components/schemas/MfaRequired"},
                ]
            }
        }
    },
}


@blp.route("/login")
class Login(MethodView):
    @rate_limited
    @blp.arguments(LoginSchema, example=LOGIN_EXAMPLE)
    @blp.response(200)
    @blp.doc(responses={200: {**LOGIN_ANSWER, "links": LINKS_FROM_TOKEN_PAIR}})
    @blp.alt_response(401, description="Invalid credentials")
    @blp.alt_response(
        403,
        description="Account disabled, or (EMAIL_VERIFICATION=required) email not verified",
    )
    @blp.alt_response(429, description=f"{THROTTLED}; or {RATE_LIMITED.lower()}")
    def post(self, data: dict) -> Any:
        """Exchange a password for a token pair (or, with MFA on, for an ``mfa_token``).

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
                address=client_address(),
                require_verified_email=settings().email_verification == "required",
            )
        except accounts.InvalidCredentials:
            metrics().login("wrong_credentials")
            refuse(session, 401, "Invalid credentials")
        except accounts.LoginThrottled as error:
            session.commit()
            metrics().login("throttled")
            throttled(error, "Too many failed logins for this account; try again later")
        except accounts.AccountInactive:
            metrics().login("disabled")
            refuse(session, 403, "Account disabled")
        except accounts.EmailNotVerified:
            metrics().login("email_not_verified")
            refuse(session, 403, "Email not verified: follow the link mailed to you first")
        if user.mfa_enabled:
            metrics().login("mfa_required")
            return mfa_challenge(session, user)
        try:
            pair = token_issuer().log_in(session, user)
        except tokens.AccountGone:
            metrics().login("wrong_credentials")
            refuse(session, 401, "Invalid credentials")
        session.commit()
        metrics().login("ok")
        return pair, 200, NO_STORE


@blp.route("/login/mfa")
class LoginMfa(MethodView):
    @rate_limited
    @blp.arguments(LoginMfaSchema, example={"mfa_token": REFRESH_TOKEN_EXAMPLE, "code": "123456"})
    @blp.response(200, TokenPairSchema)
    @blp.doc(responses={200: {"links": LINKS_FROM_TOKEN_PAIR}})
    @blp.alt_response(
        401,
        description="Invalid, used or expired mfa_token (dead after 5 wrong codes); "
        "or a wrong or already used code",
    )
    @blp.alt_response(429, description=f"{THROTTLED}; or {RATE_LIMITED.lower()}")
    def post(self, data: dict) -> Any:
        """Complete an MFA login: the ``mfa_token`` and a TOTP code or a recovery code.

        The access token's ``amr`` is ``["pwd", "otp"]``. Wrong codes count as
        failed logins of the account from this address.
        """
        session = get_session()
        try:
            user, _factor = mfa.complete_login(
                session,
                login_throttle(),
                mfa_keys(),
                mfa_token=data["mfa_token"],
                code=data.get("code"),
                recovery_code=data.get("recovery_code"),
                address=client_address(),
            )
        except mfa.InvalidMfaToken:
            metrics().login("wrong_credentials")
            refuse(session, 401, "Invalid or expired mfa_token")
        except mfa.WrongCode:
            metrics().login("wrong_credentials")
            refuse(session, 401, "Wrong code")
        except accounts.LoginThrottled as error:
            session.commit()
            metrics().login("throttled")
            throttled(error, "Too many failed logins for this account; try again later")
        pair = token_issuer().log_in(session, user, amr=("pwd", "otp"))
        session.commit()
        metrics().login("ok")
        return pair, 200, NO_STORE


@blp.route("/refresh")
class Refresh(MethodView):
    @rate_limited
    @blp.arguments(RefreshSchema, example={"refresh_token": REFRESH_TOKEN_EXAMPLE})
    @blp.response(200, TokenPairSchema)
    @blp.doc(responses={200: {"links": LINKS_FROM_TOKEN_PAIR}})
    @blp.alt_response(401, description="Unknown, expired, revoked or reused refresh token")
    @blp.alt_response(429, description=RATE_LIMITED)
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
        except EndedFamily as error:
            session.commit()  # a replay or a login past its end: the session's end stands
            if isinstance(error, RefreshTokenReused):
                metrics().refresh_reuse_detected()
            abort(401, message="Invalid refresh token")
        except InvalidRefreshToken:
            abort(401, message="Invalid refresh token")
        session.commit()
        return pair, 200, NO_STORE


#: The OpenAPI security scheme of the clients allowed to introspect (registered in resources).
INTROSPECTION_SCHEME = "introspectionClient"


def client_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Require HTTP Basic credentials of an introspection client before anything else runs.

    Checked before the body is read, so a caller without credentials learns
    nothing from validation errors either.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if introspection_clients().authenticate(request.authorization) is None:
            abort(
                401,
                message="Client authentication required (HTTP Basic)",
                headers={"WWW-Authenticate": introspection.CHALLENGE},
            )
        return view(*args, **kwargs)

    return wrapper


@blp.route("/introspect")
class Introspect(MethodView):
    @client_required
    @blp.arguments(IntrospectSchema, example={"token": ACCESS_TOKEN_EXAMPLE})
    @blp.response(200, IntrospectionSchema)
    @blp.alt_response(401, description="Missing or invalid client credentials")
    @blp.doc(security=[{INTROSPECTION_SCHEME: []}])
    def post(self, data: dict) -> Any:
        """Whether a token is a live access token of this service, and its claims (RFC 7662).

        Only clients named in ``INTROSPECTION_CLIENTS`` may ask, with HTTP Basic
        credentials ``client_id:secret``.
        """
        try:
            answer = introspection.introspect(bearer_auth(), data["token"])
        except DependencyUnavailable as error:
            abort(503, message=str(error))
        return answer, 200, NO_STORE
