"""marshmallow field types that HTTP bodies and event payloads share.

JSON has exact types, and so do these: a boolean is ``true`` or ``false``, never
``"yes"``; a number is never a string; a user id is a UUID in its canonical form.
Every string a client sends is a :class:`Text` (or a field built on it): one
PostgreSQL can store, refused with a 422 otherwise, never a 500.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from marshmallow import ValidationError, fields, validate

# Role names: what ``ROLES`` lists, what tokens carry and what events send.
from common.roles import MAX_ROLES as MAX_ROLES
from common.roles import ROLE_NAME as ROLE_NAME
from common.roles import ROLE_NAME_ERROR as ROLE_NAME_ERROR

# What PostgreSQL cannot store: NUL (its text types refuse it) and UTF-16
# surrogates (JSON's "\ud800" escape decodes to a lone one, which is not
# Unicode text and which psycopg2 cannot encode).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
TEXT_ERROR = "Must not contain NUL characters or lone surrogates."
# The part of that rule a JSON Schema pattern can say (surrogates never appear
# in UTF-8 text): what the OpenAPI document shows for a Text without a pattern of its own.
NO_NUL_PATTERN = "^[^\\x00]*$"


def canonical_id(value: object) -> str | None:
    """The canonical (lower-case, hyphenated) form of a UUID string, or None if it is not one.

    User ids and session ids are such strings.
    """
    if not isinstance(value, str) or len(value) > 36:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


class FullMatch(validate.Regexp):
    """A ``validate.Regexp`` that must match the whole value, trailing newline included.

    ``re.match`` with a pattern ending in ``$`` accepts ``"ada\\n"``; this
    one does not. The pattern itself stays as the OpenAPI document shows it
    (``^...$``, which means the end of input in JSON Schema).
    """

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class Text(fields.String):
    """A JSON string PostgreSQL can store: NUL or a lone surrogate is refused (422)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any(isinstance(v, validate.Regexp) for v in self.validators):
            self.metadata = {"pattern": NO_NUL_PATTERN, **self.metadata}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if _UNSTORABLE.search(text):
            raise ValidationError(TEXT_ERROR)
        return text


class Email(Text, fields.Email):
    """An email address (marshmallow's rule) that PostgreSQL can store."""


class StrictBoolean(fields.Boolean):
    """A JSON boolean only: ``"yes"``, ``1`` or ``"true"`` are refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


class UuidString(fields.String):
    """A user or session id: a UUID string (at most 36 characters), loaded canonical."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        user_id = canonical_id(value)
        if user_id is None:
            raise ValidationError("Not a valid id (a UUID string).")
        return user_id


class RoleName(fields.String):
    """A role name: ``[a-z][a-z0-9_-]{0,31}``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str) or not ROLE_NAME.fullmatch(value):
            raise ValidationError(ROLE_NAME_ERROR)
        return value


class EpochSeconds(fields.Float):
    """A positive, finite JSON number of seconds since the epoch (never a string or a boolean).

    Written as given (an integer stays an integer), read as a float.
    """

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValidationError("Not a positive number of epoch seconds.")
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            seconds = math.inf
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValidationError("Not a positive number of epoch seconds.")
        return seconds
