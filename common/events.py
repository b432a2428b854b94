"""The event envelope and the transactional outbox.

An event is written to the emitting app's ``outbox`` table in the same
transaction as the change that causes it (:func:`emit`); a relay publishes it
later with publisher confirms. Each app declares its own tables from the
mixins here so that its schema stays its own.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, String, Text, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from common.db import UTCDateTime, utcnow
from common.logging import request_id_var

ENVELOPE_VERSION = 1
USER_EVENTS = "user_events"
AUTH_EVENTS = "auth_events"
MAX_MESSAGE_BYTES = 256 * 1024
# Session.info key: the transaction and the channels it has notified already.
_NOTIFIED = "outbox_notified"


class InvalidMessage(Exception):
    """A message that can never be applied: bad JSON, unknown type, invalid data."""


@dataclass(frozen=True)
class Envelope:
    """A parsed, validated event."""

    id: str
    type: str
    version: int
    occurred_at: str
    source: str
    correlation_id: str | None
    data: dict

    def to_dict(self) -> dict:
        """The envelope as the JSON body of a message."""
        return {
            "id": self.id,
            "type": self.type,
            "version": self.version,
            "occurred_at": self.occurred_at,
            "source": self.source,
            "correlation_id": self.correlation_id,
            "data": self.data,
        }


def make_envelope(
    event_type: str, source: str, data: dict, correlation_id: str | None = None
) -> Envelope:
    """A new envelope with a fresh id, stamped now."""
    return Envelope(
        id=str(uuid.uuid4()),
        type=event_type,
        version=ENVELOPE_VERSION,
        occurred_at=utcnow().isoformat(),
        source=source,
        correlation_id=correlation_id,
        data=data,
    )


def parse_envelope(body: bytes | str) -> Envelope:
    """Validate a message body; raise InvalidMessage for anything malformed."""
    if isinstance(body, bytes | bytearray):
        if len(body) > MAX_MESSAGE_BYTES:
            raise InvalidMessage("message too large")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage("body is not UTF-8") from None
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidMessage("body is not JSON") from None
    if not isinstance(raw, dict):
        raise InvalidMessage("body is not a JSON object")
    try:
        message_id = str(uuid.UUID(str(raw["id"])))
        event_type = raw["type"]
        version = raw["version"]
        occurred_at = raw["occurred_at"]
        source = raw["source"]
        data = raw["data"]
    except (KeyError, ValueError, TypeError) as error:
        raise InvalidMessage(f"bad envelope: {error!r}") from None
    correlation_id = raw.get("correlation_id")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidMessage("bad envelope: type")
    if version != ENVELOPE_VERSION or isinstance(version, bool):
        raise InvalidMessage(f"unsupported version {version!r}")
    if not isinstance(occurred_at, str):
        raise InvalidMessage("bad envelope: occurred_at")
    try:
        datetime.fromisoformat(occurred_at)
    except ValueError:
        raise InvalidMessage("bad envelope: occurred_at") from None
    if source not in ("auth_app", "user_app"):
        raise InvalidMessage("bad envelope: source")
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise InvalidMessage("bad envelope: correlation_id")
    if not isinstance(data, dict):
        raise InvalidMessage("bad envelope: data")
    return Envelope(message_id, event_type, version, occurred_at, source, correlation_id, data)


class OutboxMixin:
    """Columns of an app's outbox table: one row per event, published in ``seq`` order."""

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    exchange: Mapped[str] = mapped_column(String(64))
    routing_key: Mapped[str] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ProcessedMessageMixin:
    """Columns of an app's processed-messages table: ids of messages already applied."""

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_type: Mapped[str] = mapped_column(String(128))
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def notify_channel(table_name: str) -> str:
    """The PostgreSQL LISTEN/NOTIFY channel that wakes the relay of an outbox table."""
    return f"{table_name}_new"


def emit(
    session: Session,
    outbox_model: type,
    *,
    exchange: str,
    event_type: str,
    source: str,
    data: dict,
    correlation_id: str | None = None,
) -> Envelope:
    """Write an event to the outbox in the caller's transaction (the caller commits).

    The correlation id defaults to the current request's id. On PostgreSQL a
    NOTIFY, delivered only at commit, wakes the relay at once.
    """
    if correlation_id is None:
        correlation_id = request_id_var.get()
    envelope = make_envelope(event_type, source, data, correlation_id)
    session.add(
        outbox_model(
            message_id=envelope.id,
            exchange=exchange,
            routing_key=event_type,
            body=json.dumps(envelope.to_dict(), separators=(",", ":")),
        )
    )
    if session.get_bind().dialect.name == "postgresql":
        _notify_once(session, notify_channel(outbox_model.__tablename__))
    return envelope


def _notify_once(session: Session, channel: str) -> None:
    # One NOTIFY per channel and transaction is enough (PostgreSQL folds
    # repeats anyway), and it goes straight to the connection: through
    # session.execute it would flush the rows pending so far, once per event.
    transaction = session.get_nested_transaction() or session.get_transaction()
    notified = session.info.get(_NOTIFIED)
    if notified is None or notified[0] is not transaction:
        notified = session.info[_NOTIFIED] = (transaction, set())
    if channel not in notified[1]:
        session.connection().execute(text(f"NOTIFY {channel}"))
        notified[1].add(channel)
