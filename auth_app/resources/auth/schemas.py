"""Bodies of the public auth endpoints, and the user and token pair every endpoint answers."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from auth_app.accounts import normalise_email
from auth_app.passwords import MAX_PASSWORD_LENGTH
from common.fields import Email, FullMatch, Text

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"
MAX_EMAIL_LENGTH = 254
PASSWORD_LENGTH = validate.Length(max=MAX_PASSWORD_LENGTH)


def _fits_once_lower_cased(email: str) -> None:
    # Emails are stored lower-cased, and lower-casing can lengthen one ("İ" is two
    # characters in lower case): the stored form must fit the column too.
    if len(email) <= MAX_EMAIL_LENGTH < len(normalise_email(email)):
        raise ValidationError(f"Longer than maximum length {MAX_EMAIL_LENGTH} once lower-cased.")


def email_field(*, required: bool = True) -> Email:
    """An email address a client gives: at most 254 characters, once lower-cased too."""
    return Email(
        required=required,
        validate=[validate.Length(max=MAX_EMAIL_LENGTH), _fits_once_lower_cased],
    )


class RegisterSchema(Schema):
    """A new account."""

    email = email_field()
    username = Text(
        required=True,
        validate=FullMatch(USERNAME_PATTERN, error="3-32 of A-Z a-z 0-9 _ . -"),
    )
    password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)


class LoginSchema(Schema):
    """Credentials: a password and exactly one of email or username."""

    email = Text(validate=validate.Length(min=1, max=MAX_EMAIL_LENGTH))
    username = Text(validate=validate.Length(min=1, max=MAX_EMAIL_LENGTH))
    password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)

    @validates_schema
    def _one_identifier(self, data: dict, **_kwargs: Any) -> None:
        if ("email" in data) == ("username" in data):
            raise ValidationError("Give exactly one of email or username.", "_schema")


class RefreshSchema(Schema):
    """A refresh token to exchange."""

    refresh_token = Text(required=True, load_only=True)


class IntrospectSchema(Schema):
    """Any token (RFC 7662)."""

    token = Text(required=True, load_only=True)
    token_type_hint = Text(load_only=True)


class UserSchema(Schema):
    """An account as clients see it."""

    id = fields.String(dump_only=True)
    email = fields.String(dump_only=True)
    username = fields.String(dump_only=True)
    roles = fields.List(fields.String(), dump_only=True)
    is_active = fields.Boolean(dump_only=True)
    email_verified = fields.Boolean(dump_only=True)
    mfa_enabled = fields.Boolean(dump_only=True)
    created_at = fields.DateTime(dump_only=True)


class TokenPairSchema(Schema):
    """An access token and a refresh token."""

    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = fields.Integer(required=True)
    refresh_expires_in = fields.Integer(required=True)


class MfaRequiredSchema(Schema):
    """The password was right; a second factor must follow (``POST login/mfa``)."""

    mfa_required = fields.Boolean(required=True, metadata={"enum": [True]})
    mfa_token = fields.String(required=True)
    expires_in = fields.Integer(required=True)


TOTP_CODE = r"^[0-9]{6}$"


class LoginMfaSchema(Schema):
    """The second step: the ``mfa_token`` and exactly one of a TOTP code or a recovery code."""

    mfa_token = Text(required=True, load_only=True, validate=validate.Length(min=1, max=128))
    code = Text(load_only=True, validate=FullMatch(TOTP_CODE, error="6 digits"))
    recovery_code = Text(load_only=True, validate=validate.Length(min=1, max=32))

    @validates_schema
    def _one_code(self, data: dict, **_kwargs: Any) -> None:
        if ("code" in data) == ("recovery_code" in data):
            raise ValidationError("Give exactly one of code or recovery_code.", "_schema")


class IntrospectionSchema(Schema):
    """RFC 7662 answer: ``active`` and, for a live access token, its claims."""

    active = fields.Boolean(required=True)
    token_type = fields.String()
    iss = fields.String()
    aud = fields.Raw()
    sub = fields.String()
    client_id = fields.String()
    exp = fields.Integer()
    iat = fields.Integer()
    nbf = fields.Integer()
    jti = fields.String()
    sid = fields.String()
    roles = fields.List(fields.String())
    email = fields.String()
    username = fields.String()
    email_verified = fields.Boolean()
    amr = fields.List(fields.String())
