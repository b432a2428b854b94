"""parse_envelope: what a consumer accepts, and what it refuses as never applicable."""

from __future__ import annotations

import json

import pytest

from common.events import InvalidMessage, parse_envelope
from tests.support.events import raw_envelope


def good() -> dict:
    return raw_envelope("user.sync", "auth_app", {"user_id": "x"}, "corr").to_dict()


def test_a_well_formed_envelope_round_trips():
    body = good()
    envelope = parse_envelope(json.dumps(body).encode())
    assert envelope.to_dict() == body


@pytest.mark.parametrize(
    "change",
    [
        {"type": ""},
        {"type": 7},
        {"version": True},
        {"version": "1"},
        {"occurred_at": 5},
        {"occurred_at": "yesterday"},
        {"source": "elsewhere"},
        {"correlation_id": 12},
        {"data": []},
        {"id": "not-a-uuid"},
    ],
)
def test_a_malformed_field_is_refused(change):
    with pytest.raises(InvalidMessage):
        parse_envelope(json.dumps({**good(), **change}))


def test_an_oversized_or_non_utf8_body_is_refused():
    with pytest.raises(InvalidMessage):
        parse_envelope(b"{" + b" " * (300 * 1024) + b"}")
    with pytest.raises(InvalidMessage):
        parse_envelope(b"\xff\xfe")


def test_a_missing_field_is_refused():
    body = good()
    del body["data"]
    with pytest.raises(InvalidMessage):
        parse_envelope(json.dumps(body))
