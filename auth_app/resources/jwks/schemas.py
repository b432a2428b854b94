"""The JWKS document."""

from __future__ import annotations

from marshmallow import Schema, fields


class JwksSchema(Schema):
    """RFC 7517 key set."""

    keys = fields.List(fields.Dict(), required=True)
