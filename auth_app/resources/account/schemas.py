"""Bodies of the signed-in user's endpoints."""

from __future__ import annotations

from marshmallow import Schema

from auth_app.resources.auth.schemas import PASSWORD_LENGTH
from common.fields import Text


class LogoutSchema(Schema):
    """Optionally, the refresh token of the session being closed."""

    refresh_token = Text(load_only=True)


class PasswordChangeSchema(Schema):
    """The current password and the new one."""

    current_password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)
    new_password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)


class DeleteAccountSchema(Schema):
    """The password, to confirm deletion."""

    password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)
