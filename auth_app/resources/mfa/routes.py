"""``/api/v1/auth/mfa/totp``: turn a TOTP second factor on (enrol, confirm) and off."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView
from flask_smorest import abort
from flask_smorest.error_handler import ErrorSchema

from auth_app import mfa, tokens
from auth_app.access import current_user
from auth_app.extensions import login_throttle, mfa_keys, password_hasher, settings, token_issuer
from auth_app.resources.auth.routes import (
    EXAMPLE_PASSWORD,
    NO_STORE,
    THROTTLED,
    password_checked,
    refuse,
)
from auth_app.resources.mfa.schemas import (
    ConfirmSchema,
    DisableSchema,
    EnrolmentSchema,
    EnrolSchema,
    RecoveryCodesSchema,
)
from common.auth import login_required
from common.flask_db import get_session
from common.web import ServiceBlueprint, client_address

blp = ServiceBlueprint(
    "mfa", __name__, url_prefix="/api/v1/auth/mfa", description="A second factor (TOTP)"
)


@blp.route("/totp")
class Totp(MethodView):
    @login_required
    @blp.arguments(EnrolSchema, example={"password": EXAMPLE_PASSWORD})
    @blp.response(200, EnrolmentSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Wrong password")
    @blp.alt_response(409, schema=ErrorSchema, description="MFA is on already")
    @blp.alt_response(429, description=THROTTLED)
    def post(self, data: dict) -> Any:
        """Start a TOTP enrolment: a new secret and its ``otpauth://`` URI (RFC 6238).

        SHA-1, 6 digits, 30 s. The secret is shown this once; MFA stays off
        until ``POST mfa/totp/confirm`` gets a right code. Asking again
        replaces a pending secret. Wrong passwords count as failed logins.
        """
        session = get_session()
        try:
            with password_checked():
                enrolment = mfa.begin_enrolment(
                    session,
                    password_hasher(),
                    login_throttle(),
                    mfa_keys(),
                    current_user(),
                    password=data["password"],
                    address=client_address(),
                    issuer=settings().totp_issuer,
                )
        except mfa.MfaAlreadyOn:
            abort(409, message="MFA is on already")
        session.commit()
        answer = {"secret": enrolment.secret, "otpauth_uri": enrolment.otpauth_uri}
        return answer, 200, NO_STORE

    @login_required
    @blp.arguments(DisableSchema, example={"password": EXAMPLE_PASSWORD, "code": "123456"})
    @blp.response(204)
    @blp.alt_response(401, schema=ErrorSchema, description="Wrong password, or wrong code")
    @blp.alt_response(409, schema=ErrorSchema, description="MFA is not on")
    @blp.alt_response(429, description=f"{THROTTLED} or codes")
    def delete(self, data: dict) -> None:
        """Turn MFA off with the password and a code (TOTP, or a recovery code).

        The secret and every recovery code die, and every other session of the
        user ends (at both services), as if logged out. Wrong passwords and
        codes count as failed logins.
        """
        session = get_session()
        user = current_user()
        try:
            with password_checked():
                mfa.disable(
                    session,
                    password_hasher(),
                    login_throttle(),
                    mfa_keys(),
                    user,
                    password=data["password"],
                    code=data["code"],
                    address=client_address(),
                )
        except mfa.MfaNotOn:
            abort(409, message="MFA is not on")
        except mfa.WrongCode:
            refuse(session, 401, "Wrong code")
        tokens.end_other_sessions(session, token_issuer(), user, keep=g.claims.get("sid"))
        session.commit()


@blp.route("/totp/confirm")
class TotpConfirm(MethodView):
    @login_required
    @blp.arguments(ConfirmSchema, example={"code": "123456"})
    @blp.response(200, RecoveryCodesSchema)
    @blp.alt_response(
        400, schema=ErrorSchema, description="Wrong code, or no enrolment pending (MFA on already)"
    )
    def post(self, data: dict) -> Any:
        """Confirm the pending enrolment with a code: MFA is on; the ten recovery codes.

        Each recovery code works once, in place of a TOTP code, and is shown
        only this once.
        """
        session = get_session()
        try:
            codes = mfa.confirm_enrolment(session, mfa_keys(), current_user(), data["code"])
        except mfa.NothingPending:
            abort(400, message="No TOTP enrolment is pending")
        except mfa.WrongCode:
            abort(400, message="Wrong code")
        session.commit()
        return {"recovery_codes": codes}, 200, NO_STORE
