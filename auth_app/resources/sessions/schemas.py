"""What a login session looks like to its user."""

from __future__ import annotations

from marshmallow import Schema, fields


class LoginSessionSchema(Schema):
    """One live login session (the ``sid`` of its tokens)."""

    id = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    last_used_at = fields.DateTime(required=True, metadata={"description": "last refreshed"})
    expires_at = fields.DateTime(
        required=True, metadata={"description": "when it ends unless refreshed before"}
    )
    ip = fields.String(required=True, allow_none=True)
    user_agent = fields.String(required=True, allow_none=True)
    current = fields.Boolean(
        required=True, metadata={"description": "the session of the token that asked"}
    )
