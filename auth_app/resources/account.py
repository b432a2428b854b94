"""Endpoints of a signed-in user: me, logout, logout-all, password change, deletion."""

from __future__ import annotations

import logging

from flask import current_app, g
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from auth_app import accounts, sessions
from auth_app.components import components, current_user
from auth_app.passwords import PasswordPolicyError
from auth_app.resources.auth import NO_STORE, issue_pair, policy_error
from auth_app.resources.schemas import (
    DeleteAccountSchema,
    LogoutSchema,
    PasswordChangeSchema,
    TokenPairSchema,
    UserSchema,
)
from common.auth import login_required
from common.db import get_session, utcnow

log = logging.getLogger("auth_app.account")

blp = Blueprint(
    "account", __name__, url_prefix="/api/v1/auth", description="The signed-in user's account"
)


@blp.route("/me")
class Me(MethodView):
    @login_required
    @blp.response(200, UserSchema)
    def get(self):
        """The account of the access token's user."""
        return current_user()

    @login_required
    @blp.arguments(DeleteAccountSchema)
    @blp.response(204)
    @blp.alt_response(401, description="Wrong password")
    def delete(self, data):
        """Delete the account: its email and username are free again, every token dies."""
        db = get_session()
        try:
            accounts.delete_account(
                db, components().hasher, components().revocation, current_user(), data["password"]
            )
        except accounts.InvalidCredentials:
            abort(401, message="Wrong password")
        db.commit()


@blp.route("/logout")
class Logout(MethodView):
    @login_required
    @blp.arguments(LogoutSchema)
    @blp.response(204)
    @blp.alt_response(400, description="The refresh token is not one of this user's")
    def post(self, data):
        """End this session: the access token and its session's refresh tokens die at once."""
        db = get_session()
        claims = g.claims
        user = current_user()
        families = []
        if data.get("refresh_token"):
            found = sessions.find(db, data["refresh_token"])
            if found is None or found[1].user_id != user.id:
                abort(400, message="refresh_token is not a token of this user")
            families.append(found[1])
        sid = claims.get("sid")
        if sid:
            family = db.get(sessions.LoginSession, sid)
            if family is not None and family.user_id == user.id:
                families.append(family)
        revocation = components().revocation
        now = utcnow()
        for family in families:
            sessions.revoke(db, family, now)
            revocation.revoke_session(family.id)
        revocation.revoke_token(claims["jti"], claims["exp"])
        db.commit()
        log.info("logout user_id=%s sid=%s", user.id, sid or "-")


@blp.route("/logout-all")
class LogoutAll(MethodView):
    @login_required
    @blp.response(204)
    def post(self):
        """End every session of the user; every access token issued before now dies."""
        db = get_session()
        accounts.revoke_everything(db, components().revocation, current_user())
        db.commit()


@blp.route("/password")
class Password(MethodView):
    @login_required
    @blp.arguments(PasswordChangeSchema)
    @blp.response(200, TokenPairSchema)
    @blp.alt_response(401, description="Wrong current password")
    def post(self, data):
        """Change the password; every earlier token dies and a new pair is returned."""
        db = get_session()
        user = current_user()
        try:
            accounts.change_password(
                db,
                components().hasher,
                components().revocation,
                user,
                current_password=data["current_password"],
                new_password=data["new_password"],
                min_length=current_app.config["PASSWORD_MIN_LENGTH"],
            )
        except accounts.InvalidCredentials:
            abort(401, message="Wrong current password")
        except PasswordPolicyError as error:
            policy_error(error, "new_password")
        pair = issue_pair(user)
        db.commit()
        return pair, 200, NO_STORE
