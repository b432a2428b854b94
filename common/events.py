"""The catalogue of events: every type, where it travels and the shape of its data.

An event type is declared once here, with its routing key (which is also the
envelope's ``type``), its exchange, the queue that consumes it, the app that
publishes it and a marshmallow schema for its ``data``. Publishers write
events through :func:`common.outbox.emit` with the type; consumers accept a
message through :meth:`EventType.accept`, which loads its data with the same
schema; the workers derive their queue bindings from :func:`bindings`. Adding
an event is one entry in :data:`CATALOGUE` plus one handler in the consuming
app's ``sync`` module.

The envelope (:class:`Envelope`) is the message body: ``id, type, version,
occurred_at, source, correlation_id, data``. Its times are datetimes from the
moment it is parsed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from common.fields import (
    MAX_ROLES,
    ROLE_NAME,
    EpochSeconds,
    RoleName,
    StrictBoolean,
    UuidString,
    canonical_id,
)

ENVELOPE_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024

# The publishing apps, as the envelope's ``source`` and the AMQP ``app_id`` name them.
AUTH_APP = "auth_app"
USER_APP = "user_app"
SOURCES = (AUTH_APP, USER_APP)

# Topic exchanges, and the queue each consuming app reads.
USER_EVENTS = "user_events"
AUTH_EVENTS = "auth_events"
USER_QUEUE = "user_app.user_events"
AUTH_QUEUE = "auth_app.auth_events"


class InvalidMessage(ValueError):
    """A message that can never be applied: bad JSON, unknown type, invalid data."""


# -- payload schemas ------------------------------------------------------------


class _Payload(Schema):
    """A payload: fields a newer publisher adds are ignored, not refused."""

    class Meta:
        unknown = EXCLUDE


class PayloadSchema(Protocol):
    """What an event type needs of its data's schema: a marshmallow Schema, or :class:`ByField`."""

    def load(self, data: Any) -> Any:
        """The data, loaded; ValidationError if invalid."""

    def dump(self, data: Any) -> Any:
        """The data as it goes into a message body."""

    def validate(self, data: Any) -> dict[str, Any]:
        """The errors ``load`` would raise, by field (empty when none)."""


class ByField:
    """A payload whose shape depends on one of its fields (``user.sync``: its ``action``).

    Each shape is a plain marshmallow schema with its own required fields, so
    loading one checks exactly what that kind of message must carry.

    ``fast`` gives a shape a loader in plain Python for the messages that
    arrive by the thousand: it returns what the schema's ``load`` would, or
    None for anything it is not sure of, which the schema then loads (and
    refuses, with its own message, if invalid). A test holds each such
    loader to its schema.
    """

    def __init__(
        self,
        field: str,
        schemas: Mapping[str, Schema],
        fast: Mapping[str, Callable[[dict[str, Any]], dict[str, Any] | None]] | None = None,
    ) -> None:
        self.field = field
        self.schemas = dict(schemas)
        self.fast = dict(fast or {})

    def _schema(self, data: Any) -> Schema:
        if not isinstance(data, Mapping):
            raise ValidationError("Invalid input type.", "_schema")
        schema = self.schemas.get(str(data.get(self.field)))
        if schema is None:
            raise ValidationError(f"Must be one of: {', '.join(self.schemas)}.", self.field)
        return schema

    def load(self, data: Any) -> Any:
        """The data loaded by its shape's schema; ValidationError if invalid."""
        if type(data) is dict:
            shape = data.get(self.field)
            loader = self.fast.get(shape) if type(shape) is str else None
            if loader is not None and (loaded := loader(data)) is not None:
                return loaded
        return self._schema(data).load(data)

    def dump(self, data: Any) -> Any:
        """The data as its shape's schema writes it."""
        return self._schema(data).dump(data)

    def validate(self, data: Any) -> dict[str, Any]:
        """The errors ``load`` would raise, by field (empty when none)."""
        try:
            self.load(data)
        except ValidationError as error:
            messages: dict[str, Any] = error.normalized_messages()
            return messages
        return {}


class _SyncData(_Payload):
    user_id = UuidString(required=True)
    action = fields.String(required=True)


class UserSyncCreated(_SyncData):
    """``user.sync`` ``created``: the account, as the user service first sees it."""

    email = fields.String(required=True, validate=validate.Length(min=1, max=320))
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    roles = fields.List(RoleName(), validate=validate.Length(max=MAX_ROLES))
    is_active = StrictBoolean()
    email_verified = StrictBoolean()
    created_at = fields.AwareDateTime(default_timezone=UTC)


def _text(longest: int) -> Callable[[Any], str | None]:
    return lambda value: value if type(value) is str and 0 < len(value) <= longest else None


def _boolean(value: Any) -> bool | None:
    return value if type(value) is bool else None


def _role_names(value: Any) -> list[str] | None:
    if type(value) is not list or len(value) > MAX_ROLES:
        return None
    if not all(type(name) is str and ROLE_NAME.fullmatch(name) for name in value):
        return None
    return list(value)


def _aware_datetime(value: Any) -> datetime | None:
    if type(value) is not str:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


#: What :class:`UserSyncCreated` does with each of its fields, in plain Python:
#: the loaded value, or None where the field would refuse it or might.
_CREATED_FIELDS: dict[str, Callable[[Any], Any]] = {
    "user_id": canonical_id,
    "action": lambda value: value if type(value) is str else None,
    "email": _text(320),
    "username": _text(64),
    "roles": _role_names,
    "is_active": _boolean,
    "email_verified": _boolean,
    "created_at": _aware_datetime,
}
_CREATED_REQUIRED = frozenset({"user_id", "action", "email", "username"})


def load_created(data: dict[str, Any]) -> dict[str, Any] | None:
    """``UserSyncCreated().load(data)`` for a valid message; None for anything else.

    A registration sends one of these: the user worker takes thousands a
    second, and marshmallow spent 27-46 us on each (5 us here).
    """
    loaded = {}
    for name, value in data.items():
        load = _CREATED_FIELDS.get(name)
        if load is None:
            continue  # a field a newer publisher added: ignored, as the schema does
        if (loaded_value := load(value)) is None:
            return None
        loaded[name] = loaded_value
    return loaded if _CREATED_REQUIRED <= loaded.keys() else None


class AccountChanges(Schema):
    """What changed of an account at the auth service: any of its one-truth fields."""

    class Meta:
        # A change of anything else cannot be applied by the user service.
        unknown = RAISE

    email = fields.String(validate=validate.Length(min=1, max=320))
    email_verified = StrictBoolean()
    roles = fields.List(RoleName(), validate=validate.Length(max=MAX_ROLES))
    is_active = StrictBoolean()

    @validates_schema
    def _not_empty(self, data: dict, **_kwargs: Any) -> None:
        if not data:
            raise ValidationError("changes must name at least one field")


class UserSyncUpdated(_SyncData):
    """``user.sync`` ``updated``: roles, activity or email changed, at the envelope's time."""

    changes = fields.Nested(AccountChanges, required=True)


class UserSyncDeleted(_SyncData):
    """``user.sync`` ``deleted``: the account is gone."""


class UserSyncSessionsRevoked(_SyncData):
    """``user.sync`` ``sessions_revoked``: the user's tokens issued before the cut-off are dead."""

    revoked_before = EpochSeconds(required=True)


class UserSyncSessionRevoked(_SyncData):
    """``user.sync`` ``session_revoked``: one login session ended.

    Its access tokens (``sid`` claim) are dead; they could live until ``expires_at``.
    """

    session_id = UuidString(required=True)
    expires_at = EpochSeconds(required=True)


#: ``user.sync``: what the auth service tells the user service about an account, by ``action``.
UserSyncData = ByField(
    "action",
    {
        "created": UserSyncCreated(),
        "updated": UserSyncUpdated(),
        "deleted": UserSyncDeleted(),
        "sessions_revoked": UserSyncSessionsRevoked(),
        "session_revoked": UserSyncSessionRevoked(),
    },
    fast={"created": load_created},
)


class UserCreatedData(_Payload):
    """``user.created``: the user service holds a profile for the account."""

    user_id = UuidString(required=True)
    profile_created_at = fields.AwareDateTime(required=True, default_timezone=UTC)


class AdminChanges(Schema):
    """What an administrator changed at the user service: ``is_active`` and/or ``roles``."""

    class Meta:
        # A change of anything else cannot be applied by the auth service.
        unknown = RAISE

    is_active = StrictBoolean()
    roles = fields.List(RoleName(), validate=validate.Length(max=MAX_ROLES))

    @validates_schema
    def _not_empty(self, data: dict, **_kwargs: Any) -> None:
        if not data:
            raise ValidationError("changes must name is_active and/or roles")


class UserUpdatedData(_Payload):
    """``user.updated``: an administrator changed a user at the user service."""

    user_id = UuidString(required=True)
    changes = fields.Nested(AdminChanges, required=True)


class UserDeletedData(_Payload):
    """``user.deleted``: an administrator deleted a user at the user service."""

    user_id = UuidString(required=True)


# -- the catalogue --------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """One event as it travels: the message body, its ``data`` loaded once accepted."""

    id: str
    type: str
    version: int
    occurred_at: datetime
    source: str
    correlation_id: str | None
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The envelope as the JSON object of a message body (``data`` as given)."""
        return {
            "id": self.id,
            "type": self.type,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat(),
            "source": self.source,
            "correlation_id": self.correlation_id,
            "data": self.data,
        }


@dataclass(frozen=True, eq=False)
class EventType:
    """One kind of event: its name (= routing key), route, publisher and data schema."""

    name: str
    exchange: str
    queue: str
    source: str
    schema: PayloadSchema

    @property
    def routing_key(self) -> str:
        """The routing key it is published with: its name."""
        return self.name

    def dump(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` as it goes into a message body; ValueError if its consumer would refuse it."""
        body: dict[str, Any] = self.schema.dump(data)
        errors = self.schema.validate(body)
        if errors:
            raise ValueError(f"invalid {self.name} data: {errors}")
        return body

    def accept(self, envelope: Envelope) -> Envelope:
        """The envelope with its data loaded; InvalidMessage if not of this type, or invalid."""
        if envelope.type != self.name:
            raise InvalidMessage(f"a {envelope.type!r} message is not a {self.name!r}")
        try:
            data = self.schema.load(envelope.data)
        except ValidationError as error:
            raise InvalidMessage(f"invalid data: {error.messages}") from None
        return replace(envelope, data=data)

    def make(
        self,
        data: Mapping[str, Any],
        correlation_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Envelope:
        """A new envelope of this type with a fresh id, stamped now unless told otherwise."""
        return Envelope(
            id=str(uuid.uuid4()),
            type=self.name,
            version=ENVELOPE_VERSION,
            occurred_at=occurred_at or datetime.now(UTC),
            source=self.source,
            correlation_id=correlation_id,
            data=self.dump(data),
        )


USER_SYNC = EventType("user.sync", USER_EVENTS, USER_QUEUE, AUTH_APP, UserSyncData)
USER_CREATED = EventType("user.created", AUTH_EVENTS, AUTH_QUEUE, USER_APP, UserCreatedData())
USER_UPDATED = EventType("user.updated", AUTH_EVENTS, AUTH_QUEUE, USER_APP, UserUpdatedData())
USER_DELETED = EventType("user.deleted", AUTH_EVENTS, AUTH_QUEUE, USER_APP, UserDeletedData())

#: Every event type, by name.
CATALOGUE: dict[str, EventType] = {
    event.name: event for event in (USER_SYNC, USER_CREATED, USER_UPDATED, USER_DELETED)
}


def consumed_from(queue: str) -> list[EventType]:
    """The event types that ``queue`` receives."""
    return [event for event in CATALOGUE.values() if event.queue == queue]


def bindings() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each consuming queue with its exchange and the routing keys bound to it."""
    queues: dict[str, tuple[str, tuple[str, ...]]] = {}
    for event in CATALOGUE.values():
        exchange, keys = queues.get(event.queue, (event.exchange, ()))
        if exchange != event.exchange:
            raise ValueError(f"queue {event.queue} would be bound to two exchanges")
        queues[event.queue] = (exchange, (*keys, event.routing_key))
    return queues


# -- the envelope on the wire ---------------------------------------------------


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_envelope(body: bytes | str) -> Envelope:
    """An envelope of the right shape, its data not yet loaded; InvalidMessage otherwise."""
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
        occurred = _aware(datetime.fromisoformat(occurred_at))
    except ValueError:
        raise InvalidMessage("bad envelope: occurred_at") from None
    if source not in SOURCES:
        raise InvalidMessage("bad envelope: source")
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise InvalidMessage("bad envelope: correlation_id")
    if not isinstance(data, dict):
        raise InvalidMessage("bad envelope: data")
    return Envelope(message_id, event_type, version, occurred, source, correlation_id, data)
