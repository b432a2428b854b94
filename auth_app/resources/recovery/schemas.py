"""Bodies of the endpoints that work through mailed links: reset, verification, email change."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from auth_app.resources.auth.schemas import PASSWORD_LENGTH, email_field
from common.fields import Text

#: A mailed token: 43 URL-safe characters; anything much longer is not one of ours.
TOKEN = validate.Length(min=1, max=128)


class ForgotPasswordSchema(Schema):
    """The address to mail a reset link to."""

    email = email_field()


class ResetPasswordSchema(Schema):
    """The token of a reset mail and the new password."""

    token = Text(required=True, load_only=True, validate=TOKEN)
    new_password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)


class VerificationRequestSchema(Schema):
    """Without a Bearer token, the address to mail a verification link to."""

    email = email_field(required=False)


class TokenSchema(Schema):
    """The token of a verification or email change mail."""

    token = Text(required=True, load_only=True, validate=TOKEN)


class EmailChangeSchema(Schema):
    """The new address, and the password to confirm it is the owner asking."""

    new_email = email_field()
    password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)


class AcceptedSchema(Schema):
    """The same answer whatever happened behind it."""

    message = fields.String(required=True)
