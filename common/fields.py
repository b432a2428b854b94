"""marshmallow field types that HTTP bodies and event payloads share.

JSON has exact types, and so do these: a boolean is ``true`` or ``false``, never
``"yes"``; a number is never a string; a user id is a UUID in its canonical form.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from marshmallow import ValidationError, fields

# Role names: what ``ROLES`` lists, what tokens carry and what events send.
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ROLE_NAME_ERROR = "Role names are 1-32 of a-z, 0-9, _ and -, starting with a letter."
MAX_ROLES = 20


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
        if not isinstance(value, str) or not ROLE_NAME.match(value):
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
