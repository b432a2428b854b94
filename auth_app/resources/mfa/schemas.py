"""Bodies of the TOTP endpoints."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from auth_app.resources.auth.schemas import PASSWORD_LENGTH, TOTP_CODE
from common.fields import FullMatch, Text


class EnrolSchema(Schema):
    """The password, to confirm it is the owner asking."""

    password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)


class EnrolmentSchema(Schema):
    """What an authenticator app needs; shown once."""

    secret = fields.String(required=True, metadata={"example": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"})
    otpauth_uri = fields.String(required=True)


class ConfirmSchema(Schema):
    """A code from the authenticator app."""

    code = Text(required=True, load_only=True, validate=FullMatch(TOTP_CODE, error="6 digits"))


class RecoveryCodesSchema(Schema):
    """The recovery codes, each usable once instead of a TOTP code; shown once."""

    recovery_codes = fields.List(fields.String(), required=True)


class DisableSchema(Schema):
    """The password and a code: a TOTP code (6 digits) or a recovery code."""

    password = Text(required=True, load_only=True, validate=PASSWORD_LENGTH)
    code = Text(required=True, load_only=True, validate=validate.Length(min=1, max=32))
