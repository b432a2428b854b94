"""``user.sync`` ``created`` loaded in plain Python: the schema's answer, or none.

The user worker loads every registration's message through
:func:`common.events.load_created` instead of marshmallow. It must never
accept what the schema refuses, nor load anything differently; where it is
unsure it answers None and the schema decides. These tests put both through
the same payloads: every field's edge cases, and thousands of random mixes.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from marshmallow import ValidationError

from common.events import (
    _CREATED_FIELDS,
    _CREATED_REQUIRED,
    USER_SYNC,
    ByField,
    UserSyncCreated,
    UserSyncData,
    load_created,
)
from common.fields import MAX_ROLES

SCHEMA = UserSyncCreated()
MARSHMALLOW_ONLY = ByField(UserSyncData.field, UserSyncData.schemas)
ABSENT = object()

USER_ID = str(uuid.uuid4())

#: For each field: values the schema takes, and values it refuses or that test
#: how it loads them (case, hyphens, time zones, lengths at and past the limit).
VARIANTS: dict[str, list[Any]] = {
    "user_id": [
        USER_ID,
        USER_ID.upper(),
        USER_ID.replace("-", ""),
        "{" + USER_ID + "}",
        "urn:uuid:" + USER_ID,
        USER_ID + "0",
        "not-a-uuid",
        "",
        None,
        7,
        ["x"],
    ],
    "action": ["created", None, 1],
    "email": ["ada@example.com", "A" * 320, "A" * 321, "", " ", "é@ü.example", None, 5, True, []],
    "username": ["ada", "x" * 64, "x" * 65, "", None, 0, {"a": 1}],
    "roles": [
        ["user"],
        [],
        ["user", "user"],
        ["admin", "support-2", "a_b"],
        ["r"] * MAX_ROLES,
        ["r"] * (MAX_ROLES + 1),
        ["User"],
        ["1abc"],
        ["a" * 32],
        ["a" * 33],
        [""],
        [None],
        [1],
        "user",
        None,
        {"user": 1},
    ],
    "is_active": [True, False, None, 1, 0, "true"],
    "email_verified": [True, False, None, 1, "false"],
    "created_at": [
        "2026-12-04T10:11:12.123456+00:00",
        "2026-12-04T10:11:12+00:00",
        "2026-12-04T10:11:12Z",
        "2026-12-04T10:11:12+02:00",
        "2026-12-04T10:11:12",
        "2026-12-04",
        "2026-12-04 10:11:12",
        "20261204T101112",
        "2026-13-04T10:11:12+00:00",
        "yesterday",
        "",
        None,
        1733300000,
    ],
    "newer_field": ["anything", None],
}


def valid() -> dict[str, Any]:
    return {
        "user_id": USER_ID,
        "action": "created",
        "email": "ada@example.com",
        "username": "ada",
        "roles": ["user"],
        "is_active": True,
        "email_verified": False,
        "created_at": "2026-12-04T10:11:12.123456+00:00",
    }


def schema_load(data: dict[str, Any]) -> dict[str, Any] | None:
    """What the schema loads, or None where it refuses."""
    try:
        loaded: dict[str, Any] = SCHEMA.load(data)
        return loaded
    except ValidationError:
        return None


def holds_to_the_schema(data: dict[str, Any]) -> None:
    fast = load_created(data)
    if fast is not None:
        assert fast == schema_load(data), data
        # Same types too: a tz-aware datetime, a list, canonical strings.
        assert {k: type(v) for k, v in fast.items()} == {
            k: type(v) for k, v in SCHEMA.load(data).items()
        }
    # user.sync's loader answers as it would with marshmallow alone, errors included.
    try:
        expected = MARSHMALLOW_ONLY.load(data)
    except ValidationError as refused:
        with pytest.raises(ValidationError) as raised:
            UserSyncData.load(data)
        assert raised.value.messages == refused.messages
    else:
        assert UserSyncData.load(data) == expected


def test_it_knows_every_field_of_the_schema_and_which_are_required():
    # A field added to the schema without a fast loader would be dropped from
    # every message: this fails first.
    assert set(_CREATED_FIELDS) == set(SCHEMA.fields)
    assert _CREATED_REQUIRED == {name for name, field in SCHEMA.fields.items() if field.required}


def test_what_the_auth_service_publishes_takes_the_fast_path():
    data = USER_SYNC.make(
        {
            **valid(),
            "created_at": datetime.now(UTC),
            "roles": ["user", "admin"],
        }
    ).data
    data = json.loads(json.dumps(data))  # as it crosses the broker
    assert load_created(data) is not None
    holds_to_the_schema(data)


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in VARIANTS.items() for value in [*values, ABSENT]],
)
def test_each_field_variant_loads_as_the_schema_loads_it(name, value):
    data = valid()
    if value is ABSENT:
        data.pop(name, None)
    else:
        data[name] = value
    holds_to_the_schema(data)


def test_random_mixes_of_variants_load_as_the_schema_loads_them():
    chooser = random.Random(20261204)
    fast_taken = 0
    for _ in range(3000):
        data = {}
        for name, values in VARIANTS.items():
            # Mostly a valid value, so that mixes get past the first field.
            if chooser.random() < 0.75:
                value = values[0]
            else:
                value = chooser.choice([*values, ABSENT])
            if value is not ABSENT:
                data[name] = value
        holds_to_the_schema(data)
        fast_taken += load_created(data) is not None
    assert fast_taken > 300  # the path under test is taken, not skipped


def test_time_zones_are_kept_and_a_naive_time_is_utc():
    offset = load_created({**valid(), "created_at": "2026-12-04T10:11:12+02:00"})
    naive = load_created({**valid(), "created_at": "2026-12-04T10:11:12"})
    assert offset is not None and naive is not None
    assert offset["created_at"].utcoffset() == timedelta(hours=2)
    assert offset["created_at"].tzinfo == timezone(timedelta(hours=2))
    assert naive["created_at"] == datetime(2026, 12, 4, 10, 11, 12, tzinfo=UTC)


def test_what_it_is_unsure_of_is_left_to_the_schema_and_refused_there():
    for bad in ({**valid(), "email": ""}, {**valid(), "roles": ["Admin"]}, {"action": "created"}):
        assert load_created(bad) is None
        with pytest.raises(ValidationError):
            UserSyncData.load(bad)
