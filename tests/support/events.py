"""Envelopes as a test writes them: any type and data, checked by nothing before they are sent.

The catalogue's :meth:`common.events.EventType.make` refuses data its consumer
would refuse; tests that send exactly such messages build them here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, fields

from common.events import (
    AUTH_APP,
    CATALOGUE,
    ENVELOPE_VERSION,
    USER_EVENTS,
    USER_QUEUE,
    Envelope,
    EventType,
    parse_envelope,
)


def raw_envelope(
    event_type: str | EventType,
    source: str,
    data: dict[str, Any],
    correlation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """An envelope of ``event_type`` with ``data`` as given, a fresh id, stamped now."""
    name = event_type.name if isinstance(event_type, EventType) else event_type
    return Envelope(
        id=str(uuid.uuid4()),
        type=name,
        version=ENVELOPE_VERSION,
        occurred_at=occurred_at or datetime.now(UTC),
        source=source,
        correlation_id=correlation_id,
        data=data,
    )


class NumberedData(Schema):
    """The stand-in payload of delivery tests: a number, and a flag a handler refuses."""

    class Meta:
        unknown = EXCLUDE

    n = fields.Integer()
    invalid = fields.Boolean()


#: A stand-in for ``user.sync`` on the same route, with a payload of its own, for tests
#: that pin the delivery guarantees apart from either app's handlers.
NUMBERED = EventType("user.sync", USER_EVENTS, USER_QUEUE, AUTH_APP, NumberedData())


def accepted(body: str | bytes) -> Envelope:
    """A message body as a consumer takes it: parsed, and its data loaded by its event type."""
    envelope = parse_envelope(body)
    return CATALOGUE[envelope.type].accept(envelope)
