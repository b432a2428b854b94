"""``/api/v1/auth``: what works through a mailed link: password reset, verification, email change.

Each endpoint that mails writes the mail in the request's own transaction
(:mod:`auth_app.mail`); the mailer worker sends it after the commit. The two
that anyone may call with an address (``password/forgot`` and the tokenless
``email/verify/request``) answer the same 202, no sooner than
:data:`UNIFORM_ANSWER_SECONDS`, whether or not a mail went out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import g, request
from flask.views import MethodView
from flask_smorest import abort
from flask_smorest.error_handler import ErrorSchema

from auth_app import accounts, email_address, recovery
from auth_app.access import current_user
from auth_app.account_tokens import InvalidToken
from auth_app.extensions import (
    login_throttle,
    password_hasher,
    revocation,
    settings,
    token_issuer,
)
from auth_app.passwords import PasswordPolicyError
from auth_app.resources.auth.routes import (
    EXAMPLE_PASSWORD,
    LOGIN_ANSWER,
    NO_STORE,
    POLICY_REFUSED,
    RATE_LIMITED,
    THROTTLED,
    mfa_challenge,
    password_checked,
    policy_error,
    rate_limited,
)
from auth_app.resources.auth.schemas import UserSchema
from auth_app.resources.recovery.schemas import (
    AcceptedSchema,
    EmailChangeSchema,
    ForgotPasswordSchema,
    ResetPasswordSchema,
    TokenSchema,
    VerificationRequestSchema,
)
from common.auth import bearer_auth, login_required
from common.flask_db import conflict_on_integrity_error, get_session
from common.web import ServiceBlueprint, client_address

blp = ServiceBlueprint(
    "recovery",
    __name__,
    url_prefix="/api/v1/auth",
    description="Password reset, email verification and email change, by mailed link",
)

#: The answers that must not tell whether an account exists take at least this long:
#: longer than writing a token and a mail takes, so both cases end at the same moment.
UNIFORM_ANSWER_SECONDS = 0.2

TOKEN_EXAMPLE = {"token": "q2vP0sX9aT4nK7mW1eR6yU3iO8pL5jH2gF0dS9aZxC4"}
INVALID_TOKEN = "Invalid, used or expired token"
MAIL_SENT = "If that address has an account, a mail is on its way"


@contextmanager
def uniform_duration() -> Iterator[None]:
    """Finish the block no sooner than :data:`UNIFORM_ANSWER_SECONDS` after it began."""
    started = time.monotonic()
    yield
    left = UNIFORM_ANSWER_SECONDS - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)


def accepted(message: str = MAIL_SENT) -> tuple[dict, int]:
    """The 202 answer of an endpoint that (maybe) sent a mail."""
    return {"message": message}, 202


@blp.route("/password/forgot")
class ForgotPassword(MethodView):
    @rate_limited
    @blp.arguments(ForgotPasswordSchema, example={"email": "ada@example.com"})
    @blp.response(202, AcceptedSchema)
    @blp.alt_response(429, description=RATE_LIMITED)
    def post(self, data: dict) -> Any:
        """Mail a password reset link to the address, if it belongs to an active account.

        The answer is the same, and takes about as long, whether or not it does;
        an account gets at most one reset mail a minute (more asks are ignored).
        The link is ``FRONTEND_URL/reset-password?token=...`` and works once,
        for ``RESET_TOKEN_TTL_MINUTES``.
        """
        session = get_session()
        with uniform_duration():
            recovery.forgot_password(session, settings(), data["email"])
            session.commit()
        return accepted()


@blp.route("/password/reset")
class ResetPassword(MethodView):
    @rate_limited
    @blp.arguments(
        ResetPasswordSchema,
        example={**TOKEN_EXAMPLE, "new_password": "difference-engine-1822"},
    )
    @blp.response(200)
    @blp.doc(responses={200: LOGIN_ANSWER})
    @blp.alt_response(400, schema=ErrorSchema, description=INVALID_TOKEN)
    @blp.alt_response(403, schema=ErrorSchema, description="Account disabled")
    @blp.alt_response(422, schema=ErrorSchema, description=POLICY_REFUSED)
    @blp.alt_response(429, description=RATE_LIMITED)
    def post(self, data: dict) -> Any:
        """Set a new password with the token of a reset mail; answers a pair of a new session.

        Every earlier session and token of the user dies, here and at the user
        service. A password the policy refuses leaves the token usable. With
        MFA on, the mail alone signs nobody in: the answer is an ``mfa_token``
        for ``POST login/mfa``, as a login's is.
        """
        session = get_session()
        try:
            user = recovery.reset_password(
                session,
                password_hasher(),
                revocation(),
                settings(),
                data["token"],
                data["new_password"],
            )
        except InvalidToken:
            abort(400, message=INVALID_TOKEN)
        except accounts.AccountInactive:
            abort(403, message="Account disabled")
        except PasswordPolicyError as error:
            policy_error(error, "new_password")
        if user.mfa_enabled:
            return mfa_challenge(session, user)
        pair = token_issuer().pair(session, user)
        session.commit()
        return pair, 200, NO_STORE


@blp.route("/email/verify/request")
class VerificationRequest(MethodView):
    @rate_limited
    @blp.arguments(VerificationRequestSchema, required=False, example={"email": "ada@example.com"})
    @blp.response(202, AcceptedSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Invalid or revoked token")
    @blp.alt_response(403, schema=ErrorSchema, description="Account disabled")
    @blp.alt_response(409, schema=ErrorSchema, description="Email already verified (Bearer form)")
    @blp.alt_response(
        422, schema=ErrorSchema, description="Invalid body, or no email without a Bearer token"
    )
    @blp.alt_response(
        429,
        description="A verification mail was asked for less than a minute ago (Bearer form); "
        + RATE_LIMITED.lower(),
    )
    @blp.doc(security=[{"bearerAuth": []}, {}])
    def post(self, data: dict) -> Any:
        """Mail a verification link: the signed-in user's, or, without a token, to ``email``.

        With a Bearer token: 409 when the email is verified already, 429 within a
        minute of the last mail asked for (the registration's does not count).
        Without one, the same 202 whether or not the address has an unverified
        account. The link is ``FRONTEND_URL/verify-email?token=...``.
        """
        session = get_session()
        if "Authorization" in request.headers:
            g.claims = bearer_auth().authenticate()
            try:
                email_address.request_verification(session, settings(), current_user())
            except email_address.AlreadyVerified:
                abort(409, message="Email already verified")
            except email_address.AskedTooSoon as error:
                abort(
                    429,
                    message="A verification mail was sent less than a minute ago",
                    headers={"Retry-After": str(error.retry_after)},
                )
            except accounts.AccountGone:
                abort(401, message="Account deleted")
            session.commit()
            return accepted("A verification mail is on its way")
        if "email" not in data:
            abort(
                422,
                message="Give email, or a Bearer token",
                errors={"json": {"email": ["Missing data for required field."]}},
            )
        with uniform_duration():
            email_address.request_verification_by_email(session, settings(), data["email"])
            session.commit()
        return accepted()


@blp.route("/email/verify")
class VerifyEmail(MethodView):
    @rate_limited
    @blp.arguments(TokenSchema, example=TOKEN_EXAMPLE)
    @blp.response(200, UserSchema)
    @blp.alt_response(400, schema=ErrorSchema, description=INVALID_TOKEN)
    @blp.alt_response(429, description=RATE_LIMITED)
    def post(self, data: dict) -> Any:
        """Mark the address verified with the token of a verification mail; answers the user.

        A link mailed to an address the account no longer has does not work.
        """
        session = get_session()
        try:
            user = email_address.verify_email(session, data["token"])
        except InvalidToken:
            abort(400, message=INVALID_TOKEN)
        session.commit()
        return user


@blp.route("/email")
class ChangeEmail(MethodView):
    @login_required
    @blp.arguments(
        EmailChangeSchema,
        example={"new_email": "ada@lovelace.example", "password": EXAMPLE_PASSWORD},
    )
    @blp.response(202, AcceptedSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Wrong password")
    @blp.alt_response(409, schema=ErrorSchema, description="Email taken")
    @blp.alt_response(
        429, description=f"{THROTTLED}; or a change was asked for less than a minute ago"
    )
    def post(self, data: dict) -> Any:
        """Ask to change the email: a confirmation link to the new address, a notice to the old.

        The email changes only once the link (``FRONTEND_URL/confirm-email?token=...``)
        is followed. Wrong passwords count as failed logins of the account from
        this address.
        """
        session = get_session()
        try:
            with password_checked():
                email_address.request_email_change(
                    session,
                    password_hasher(),
                    login_throttle(),
                    settings(),
                    current_user(),
                    new_email=data["new_email"],
                    password=data["password"],
                    address=client_address(),
                )
        except accounts.AccountExists:
            session.rollback()
            abort(409, message="That email is already registered")
        except email_address.AskedTooSoon as error:
            abort(
                429,
                message="An email change was asked for less than a minute ago",
                headers={"Retry-After": str(error.retry_after)},
            )
        session.commit()
        return accepted("A confirmation mail is on its way to the new address")


@blp.route("/email/confirm")
class ConfirmEmail(MethodView):
    @rate_limited
    @blp.arguments(TokenSchema, example=TOKEN_EXAMPLE)
    @blp.response(200, UserSchema)
    @blp.alt_response(400, schema=ErrorSchema, description=INVALID_TOKEN)
    @blp.alt_response(409, schema=ErrorSchema, description="Email taken meanwhile")
    @blp.alt_response(429, description=RATE_LIMITED)
    def post(self, data: dict) -> Any:
        """Give the account the new, verified email of a change mail's token; answers the user.

        The old address is free again; the change reaches the user service.
        """
        session = get_session()
        try:
            user = email_address.confirm_email_change(session, data["token"])
        except InvalidToken:
            abort(400, message=INVALID_TOKEN)
        except accounts.AccountExists:
            session.rollback()
            abort(409, message="That email is already registered")
        with conflict_on_integrity_error("That email is already registered"):
            session.commit()
        return user
