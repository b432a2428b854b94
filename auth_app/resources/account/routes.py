"""``/api/v1/auth``: the signed-in user's account: me, logout, logout-all, password, deletion."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView
from flask_smorest import abort
from flask_smorest.error_handler import ErrorSchema

from auth_app import accounts, tokens
from auth_app.access import current_user
from auth_app.extensions import (
    login_throttle,
    password_hasher,
    revocation,
    settings,
    token_issuer,
)
from auth_app.passwords import PasswordPolicyError
from auth_app.resources.account.schemas import (
    DeleteAccountSchema,
    LogoutSchema,
    PasswordChangeSchema,
)
from auth_app.resources.auth.routes import (
    EXAMPLE_PASSWORD,
    NO_STORE,
    POLICY_REFUSED,
    REFRESH_TOKEN_EXAMPLE,
    THROTTLED,
    password_checked,
    policy_error,
)
from auth_app.resources.auth.schemas import TokenPairSchema, UserSchema
from auth_app.security_events import EventType, record
from common.auth import login_required
from common.flask_db import get_session
from common.web import ServiceBlueprint, client_address

blp = ServiceBlueprint(
    "account", __name__, url_prefix="/api/v1/auth", description="The signed-in user's account"
)


@blp.route("/me")
class Me(MethodView):
    @login_required
    @blp.response(200, UserSchema)
    def get(self) -> Any:
        """The account of the access token's user."""
        return current_user()

    @login_required
    @blp.arguments(DeleteAccountSchema, example={"password": EXAMPLE_PASSWORD})
    @blp.response(204)
    @blp.alt_response(401, description="Wrong password")
    @blp.alt_response(429, description=THROTTLED)
    def delete(self, data: dict) -> None:
        """Delete the account: its email and username are free again, every token dies.

        Wrong passwords count as failed logins of the account from this address.
        """
        session = get_session()
        with password_checked():
            accounts.delete_account(
                session,
                password_hasher(),
                login_throttle(),
                current_user(),
                data["password"],
                client_address(),
            )
        session.commit()


@blp.route("/logout")
class Logout(MethodView):
    @login_required
    # No body at all is a logout of the access token's session alone.
    @blp.arguments(LogoutSchema, required=False, example={"refresh_token": REFRESH_TOKEN_EXAMPLE})
    @blp.response(204)
    @blp.alt_response(
        400,
        schema=ErrorSchema,
        description="The body is not JSON, or its refresh token is not one of this user's",
    )
    def post(self, data: dict) -> None:
        """End this session: the access token and its session's refresh tokens die at once."""
        session = get_session()
        try:
            tokens.logout(
                session, token_issuer(), current_user(), g.claims, data.get("refresh_token")
            )
        except tokens.NotYourRefreshToken:
            abort(400, message="refresh_token is not a token of this user")
        session.commit()


@blp.route("/logout-all")
class LogoutAll(MethodView):
    @login_required
    @blp.response(204)
    def post(self) -> None:
        """End every session of the user; every access token issued before now dies."""
        session = get_session()
        user = current_user()
        accounts.revoke_everything(session, revocation(), user)
        record(session, EventType.LOGOUT_ALL, user.id, session_id=g.claims.get("sid"))
        session.commit()


@blp.route("/password")
class Password(MethodView):
    @login_required
    @blp.arguments(
        PasswordChangeSchema,
        example={"current_password": EXAMPLE_PASSWORD, "new_password": "difference-engine-1822"},
    )
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Wrong current password")
    @blp.alt_response(422, schema=ErrorSchema, description=POLICY_REFUSED)
    @blp.alt_response(429, description=THROTTLED)
    def post(self, data: dict) -> Any:
        """Change the password; every earlier token dies and a new pair is returned.

        Wrong current passwords count as failed logins of the account from this address.
        """
        session = get_session()
        user = current_user()
        try:
            with password_checked("Wrong current password"):
                accounts.change_password(
                    session,
                    password_hasher(),
                    revocation(),
                    login_throttle(),
                    user,
                    current_password=data["current_password"],
                    new_password=data["new_password"],
                    min_length=settings().password_min_length,
                    address=client_address(),
                )
        except PasswordPolicyError as error:
            policy_error(error, "new_password")
        pair = token_issuer().pair(session, user)
        session.commit()
        return pair, 200, NO_STORE
