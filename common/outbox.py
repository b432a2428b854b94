"""The two tables behind "at least once, applied exactly once", and writing to the first.

An event is written to the emitting app's ``outbox`` table in the same
transaction as the change that causes it (:func:`emit`); a relay publishes it
later with publisher confirms, taking the message's AMQP properties from the
row's columns. A consuming app records every message id it has applied in its
``processed_messages`` table, in the transaction that applied it. Each app
declares its own tables from the mixins here, so that its schema stays its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, Text, insert, text
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column

from common.db import UTCDateTime, notify_at_commit, utcnow
from common.events import Envelope, EventType
from common.logging import request_id_var

#: An app's outbox model: a mapped class with :class:`OutboxMixin`'s columns.
OutboxModel = type[Any]
#: An app's processed-messages model: a mapped class with :class:`ProcessedMessageMixin`'s.
ProcessedMessageModel = type[Any]


#: The rows a relay still has to publish; the partial index on ``seq`` holds only
#: them, so finding the next batch costs the same beside a million published rows.
PENDING = "published_at IS NULL"


class OutboxMixin:
    """Columns of an app's outbox table: one row per event, published in ``seq`` order."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        pending = text(PENDING)
        return (Index("ix_outbox_pending", "seq", postgresql_where=pending, sqlite_where=pending),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    exchange: Mapped[str] = mapped_column(String(64))
    # The event type's name, which is also the envelope's ``type``.
    routing_key: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(32))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ProcessedMessageMixin:
    """Columns of an app's processed-messages table: ids of messages already applied."""

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_type: Mapped[str] = mapped_column(String(128))
    # Indexed for the janitor, which removes the old ones in batches.
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


def notify_channel(table_name: str) -> str:
    """The PostgreSQL LISTEN/NOTIFY channel that wakes the relay of an outbox table."""
    return f"{table_name}_new"


def emit(
    session: Session,
    outbox_model: OutboxModel,
    event_type: EventType,
    data: Mapping[str, Any],
    correlation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Write one event to the outbox in the caller's transaction: :func:`emit_all` of one."""
    events = [(data, correlation_id)]
    return emit_all(session, outbox_model, event_type, events, occurred_at=occurred_at)[0]


def emit_all(
    session: Session,
    outbox_model: OutboxModel,
    event_type: EventType,
    events: Sequence[tuple[Mapping[str, Any], str | None]],
    *,
    occurred_at: datetime | None = None,
) -> list[Envelope]:
    """Write events of one type, ``(data, correlation_id)`` each, to the outbox, in order.

    In the caller's transaction (the caller commits), with one multi-row
    insert. Each ``data`` goes through the event type's schema, so nothing is
    written that its consumer would refuse (ValueError). A correlation id of
    None becomes the current request's id. ``occurred_at`` is when the events
    happened, now unless told otherwise (a change reported by the side it
    reached last keeps the time it was made). On PostgreSQL a NOTIFY,
    delivered only at commit, wakes the relay at once.
    """
    request_id = request_id_var.get()
    envelopes = [
        event_type.make(data, request_id if correlation_id is None else correlation_id, occurred_at)
        for data, correlation_id in events
    ]
    if not envelopes:
        return envelopes
    now = utcnow()
    # The table, not the mapped class: a plain Core executemany, no ORM bulk machinery.
    session.execute(
        insert(outbox_model.__table__),
        [
            {
                "message_id": envelope.id,
                "exchange": event_type.exchange,
                "routing_key": event_type.routing_key,
                "source": envelope.source,
                "correlation_id": envelope.correlation_id,
                "body": json.dumps(envelope.to_dict(), separators=(",", ":")),
                "created_at": now,
                "attempts": 0,
            }
            for envelope in envelopes
        ],
    )
    notify_at_commit(session, notify_channel(outbox_model.__tablename__))
    return envelopes
