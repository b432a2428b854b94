"""Bodies and query of the users resource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from common.fields import MAX_ROLES, ROLE_NAME, ROLE_NAME_ERROR, FullMatch, StrictBoolean, Text
from user_app.administration import decode_cursor


class ProfileSchema(Schema):
    """A user's profile."""

    id = fields.String(dump_only=True)
    email = fields.String(dump_only=True)
    username = fields.String(dump_only=True)
    display_name = fields.String(dump_only=True, allow_none=True)
    bio = fields.String(dump_only=True, allow_none=True)
    avatar_url = fields.String(dump_only=True, allow_none=True)
    roles = fields.List(fields.String(), dump_only=True)
    is_active = fields.Boolean(dump_only=True)
    email_verified = fields.Boolean(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class ProfileUpdateSchema(Schema):
    """The fields a user may change on their own profile; ``null`` clears one."""

    class Meta:
        unknown = RAISE

    display_name = Text(allow_none=True, validate=validate.Length(max=100))
    bio = Text(allow_none=True, validate=validate.Length(max=2000))
    avatar_url = Text(
        allow_none=True,
        validate=[
            validate.Length(max=2048),
            validate.URL(relative=False, schemes={"http", "https"}, require_tld=False),
        ],
        metadata={"description": "An absolute http(s) URL"},
    )


class AdminProfileUpdateSchema(ProfileUpdateSchema):
    """What an administrator may change on any profile."""

    is_active = StrictBoolean()
    roles = fields.List(
        Text(validate=FullMatch(ROLE_NAME, error=ROLE_NAME_ERROR)),
        validate=validate.Length(max=MAX_ROLES),
    )

    @post_load
    def _deduplicate_roles(self, data: dict, **kwargs: Any) -> dict:
        if "roles" in data:
            data["roles"] = list(dict.fromkeys(data["roles"]))
        return data


# Read from the same query string by flask-smorest's pagination schema.
PAGINATION_PARAMETERS = {"page", "page_size"}


class UserQuerySchema(Schema):
    """Filters of the user listing (pagination parameters are flask-smorest's)."""

    class Meta:
        # page and page_size are read by the pagination schema from the same query string.
        unknown = EXCLUDE

    q = Text(
        validate=validate.Length(max=200),
        metadata={"description": "Case-insensitive substring of email, username or display name"},
    )
    is_active = fields.Boolean()
    after = Text(
        validate=validate.Length(max=200),
        metadata={
            "description": "Continue after this position: the `cursor` of the previous "
            "page's X-Pagination; empty for the first page. A page by cursor has no totals "
            "(nothing is counted) and costs the same at any depth; `page` is then ignored. "
            "A string that is not a cursor of this listing is refused with 422."
        },
    )

    @validates_schema(pass_original=True)
    def _no_unknown_parameters(self, data: dict, original: Mapping, **kwargs: Any) -> None:
        # A misspelt filter (``?is_activ=false``) must not silently list everyone.
        unknown = sorted(set(original) - set(self.fields) - PAGINATION_PARAMETERS)
        if unknown:
            raise ValidationError("Unknown query parameter.", unknown[0])

    @post_load
    def _read_cursor(self, data: dict, **kwargs: Any) -> dict:
        if data.get("after") == "":
            data["after"] = None
        # An empty ``after`` starts a listing by cursor: no totals, nothing counted.
        if data.get("after"):
            try:
                data["after"] = decode_cursor(data["after"])
            except ValueError:
                raise ValidationError(
                    "Invalid cursor: use the cursor of a previous page's X-Pagination.", "after"
                ) from None
        return data
