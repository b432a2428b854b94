"""What a security event looks like, and how the administrators' list is filtered."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate

from auth_app.security_events import EventType
from common.fields import Text, canonical_id


class SecurityEventSchema(Schema):
    """One event of the user's own account."""

    type = fields.String(required=True, metadata={"enum": [t.value for t in EventType]})
    at = fields.DateTime(required=True)
    ip = fields.String(required=True, allow_none=True)
    user_agent = fields.String(required=True, allow_none=True)
    session_id = fields.String(allow_none=True)


class AdminSecurityEventSchema(SecurityEventSchema):
    """One event of any account (``null`` for a login as an unknown user)."""

    user_id = fields.String(required=True, allow_none=True)


def _an_id(value: str) -> None:
    if canonical_id(value) is None:
        raise ValidationError("Not a valid id (a UUID string).")


class EventQuerySchema(Schema):
    """Which events an administrator lists."""

    user_id = Text(validate=_an_id, metadata={"format": "uuid"})
    type = Text(validate=validate.OneOf([t.value for t in EventType]))

    @post_load
    def _canonical(self, data: dict, **_kwargs: Any) -> dict:
        if "user_id" in data:
            data["user_id"] = canonical_id(data["user_id"])
        return data
