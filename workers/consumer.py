"""The consume loop every event worker runs: apply once, ack after commit.

Every message is parsed and its data loaded through its event type in the
catalogue (:mod:`common.events`). Messages are then applied by :meth:`Consumer.apply`,
the only way there is: a list of messages, in order, in one database transaction
that also records each message id in the processed-messages table, each run of
messages of one type handed to that type's handler at once. Only after that
commit are they acked. An id already recorded is acked without being applied
again.

The messages already waiting in the channel's buffer (up to the prefetch count)
are applied together: one duplicate check, one commit, one ack for the lot. A
lone message is a list of one. If a list of several fails, it is rolled back and
each of its messages is applied alone, the first that fails alone being charged
with the list's failed try.

Failures, by kind:
- permanent (bad JSON, unknown type or version, invalid data): rejected at once
  and so routed to ``<queue>.dead``;
- transient (database or Redis unreachable): retried in hand with capped
  backoff for as long as it takes; the message is never lost;
- anything else: retried up to ``max_tries`` times, then dead-lettered.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.db import dialect_insert
from common.events import Envelope, EventType, InvalidMessage, consumed_from, parse_envelope
from common.logging import log_context
from common.metrics import ConsumerRecorder
from common.outbox import ProcessedMessageModel
from workers.broker import Stopper, close_quietly, connect, declare_queue, pause, run_forever
from workers.settings import BrokerSettings

log = logging.getLogger(__name__)

#: Applies messages of one type, in order, in the caller's transaction.
Handler = Callable[[list[Envelope], Session], None]

#: Batches of ``prefetch`` messages the broker may have sent unacked to one consumer.
IN_FLIGHT_BATCHES = 2


def is_transient(error: BaseException) -> bool:
    """A database, or Redis, unreachable: no message's fault, retried.

    Redis's errors are looked up only where redis is loaded (the auth worker's
    revocation store): a process that never imported it cannot have raised
    one, and the user worker need not load redis (and what it pulls in) at all.
    """
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    redis_errors = sys.modules.get("redis.exceptions")
    return redis_errors is not None and isinstance(
        error, (redis_errors.ConnectionError, redis_errors.TimeoutError)
    )


class Delivery(NamedTuple):
    """A message taken from the queue and accepted by its event type."""

    tag: int
    properties: pika.BasicProperties
    envelope: Envelope


@dataclass
class Consumer:
    """Consume one queue and apply each message exactly once, in ``engine``'s database.

    ``handlers`` maps event types to the functions that apply them. The queue
    is the one the catalogue routes those types to, and the handlers must
    cover every type it routes there.

    A message is refused as one that can never apply when ``sender`` is set
    and its AMQP ``user_id`` (the broker user that published it, which
    RabbitMQ vouches for) is another, when it happened more than ``leeway``
    seconds in the future, or when ``check`` (the consuming app's own rule
    for its data) raises InvalidMessage.
    """

    name: str
    handlers: Mapping[EventType, Handler]
    engine: Engine
    processed_model: ProcessedMessageModel
    settings: BrokerSettings
    stopper: Stopper = field(default_factory=Stopper)
    leeway: float = 10.0
    sender: str | None = None
    check: Callable[[Envelope], None] | None = None
    queue: str = field(init=False)
    session_factory: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        queues = {event_type.queue for event_type in self.handlers}
        if len(queues) != 1:
            raise ValueError(f"handlers of event types of {len(queues)} queues; one queue each")
        self.queue = queues.pop()
        self._types = {event_type.name: event_type for event_type in self.handlers}
        routed = {event_type.name for event_type in consumed_from(self.queue)}
        if set(self._types) != routed:
            raise ValueError(
                f"{self.queue} receives {sorted(routed)}, handlers cover {sorted(self._types)}"
            )
        self._handlers = {event_type.name: handler for event_type, handler in self.handlers.items()}
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)
        self.metrics = ConsumerRecorder(self.queue)

    # -- applying ------------------------------------------------------------
    def accept(self, body: bytes, properties: Any = None) -> Envelope:
        """The message's envelope with its data loaded; InvalidMessage if it can never apply."""
        if self.sender is not None:
            sent_by = getattr(properties, "user_id", None)
            if sent_by != self.sender:
                raise InvalidMessage(f"sent by {sent_by!r}, not by {self.sender!r}")
        envelope = parse_envelope(body)
        event_type = self._types.get(envelope.type)
        if event_type is None:
            raise InvalidMessage(f"unknown message type {envelope.type!r}")
        if envelope.occurred_at.timestamp() > time.time() + self.leeway:
            raise InvalidMessage(f"occurred_at {envelope.occurred_at.isoformat()} is in the future")
        envelope = event_type.accept(envelope)
        if self.check is not None:
            self.check(envelope)
        return envelope

    def apply(self, envelopes: list[Envelope]) -> list[str]:
        """Apply the messages in order in one transaction: ``applied`` or ``duplicate`` each.

        Raises whatever a handler, the flush or the commit raised; nothing of
        the list is then applied.
        """
        ids = [envelope.id for envelope in envelopes]
        try:
            with self.session_factory() as session, session.begin():
                fresh = self._record(session, envelopes)
                outcomes = []
                run: list[Envelope] = []
                for envelope in envelopes:
                    if envelope.id not in fresh:
                        outcomes.append("duplicate")
                        continue
                    fresh.discard(envelope.id)  # a second copy in the list is a duplicate
                    outcomes.append("applied")
                    if run and run[0].type != envelope.type:
                        self._handlers[run[0].type](run, session)
                        run = []
                    run.append(envelope)
                if run:
                    self._handlers[run[0].type](run, session)
        except IntegrityError:
            # Another consumer may have applied the same ids at the same moment.
            with self.session_factory() as session:
                done = self._applied(session, ids)
            if done.issuperset(ids):
                return ["duplicate"] * len(ids)
            raise
        return outcomes

    def _applied(self, session: Session, ids: list[str]) -> set[str]:
        """Which of ``ids`` are recorded as applied already."""
        model = self.processed_model
        return set(session.scalars(select(model.message_id).where(model.message_id.in_(ids))))

    def _record(self, session: Session, envelopes: list[Envelope]) -> set[str]:
        """Record the ids of ``envelopes`` not recorded yet; returns those this call recorded.

        One multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: the
        duplicate check and the record in one round trip. An id another
        consumer is recording at the same moment waits for its transaction:
        recorded by it, it is not returned here (a duplicate); rolled back,
        it is recorded here.
        """
        table = self.processed_model.__table__
        rows = {e.id: {"message_id": e.id, "message_type": e.type} for e in envelopes}
        statement = dialect_insert(session)(table).on_conflict_do_nothing()
        return set(session.scalars(statement.returning(table.c.message_id), list(rows.values())))

    # -- deliveries ----------------------------------------------------------
    def deliver(
        self, connection: BlockingConnection, channel: BlockingChannel, messages: list
    ) -> None:
        """Apply messages that arrived together, settling (acking or rejecting) each of them."""
        deliveries = [
            delivery
            for delivery in (self._accept(channel, *message) for message in messages)
            if delivery is not None
        ]
        if not deliveries:
            return
        try:
            outcomes = self.apply([delivery.envelope for delivery in deliveries])
        except Exception as error:  # noqa: BLE001 - every failure is settled one by one
            if len(deliveries) == 1:
                self._settle_alone(connection, channel, deliveries[0], error)
                return
            log.warning(
                "a batch of %d failed (%s); applying its messages one by one",
                len(deliveries),
                type(error).__name__,
            )
            # A failure a database outage explains is no message's fault.
            owed = 0 if is_transient(error) else 1
            self.metrics.retried(len(deliveries))
            for delivery in deliveries:
                owed = self._settle_alone(connection, channel, delivery, owed=owed)
            return
        # Every earlier delivery on this channel is settled: one ack covers them all.
        channel.basic_ack(deliveries[-1].tag, multiple=True)
        self.metrics.applied(len(deliveries), outcomes.count("applied"))
        # Skipped whole when INFO is off: binding the ids costs more than the check.
        if log.isEnabledFor(logging.INFO):
            for delivery, outcome in zip(deliveries, outcomes, strict=True):
                self._log_outcome(delivery.envelope, outcome)

    def _accept(
        self, channel: BlockingChannel, method: Any, properties: Any, body: bytes
    ) -> Delivery | None:
        try:
            return Delivery(method.delivery_tag, properties, self.accept(body, properties))
        except InvalidMessage as error:
            log.error(
                "dead-lettering message %s: %s", getattr(properties, "message_id", None), error
            )
            channel.basic_reject(method.delivery_tag, requeue=False)
            self.metrics.dead_lettered()
            return None

    @staticmethod
    def _log_outcome(envelope: Envelope, outcome: str) -> None:
        with log_context(request_id=envelope.correlation_id or "-", message_id=envelope.id):
            log.info("%s %s %s", envelope.type, envelope.id, outcome)

    def _settle_alone(
        self,
        connection: BlockingConnection,
        channel: BlockingChannel,
        delivery: Delivery,
        error: BaseException | None = None,
        *,
        owed: int = 0,
    ) -> int:
        """Apply one message until it is applied, dead-lettered or a stop comes.

        ``error`` is the failure of a try already made of this message alone.
        ``owed`` tries (a failed batch's) are charged to it if it fails too;
        returns the tries still owed.
        """
        envelope = delivery.envelope
        headers = getattr(delivery.properties, "headers", None) or {}
        tries = int(headers.get("x-delivery-count", 0) or 0)
        delay = 0.2
        with log_context(request_id=envelope.correlation_id or "-", message_id=envelope.id):
            while True:
                if error is None:
                    try:
                        outcome = self.apply([envelope])[0]
                    except Exception as failure:  # noqa: BLE001 - sorted by kind below
                        error = failure
                    else:
                        channel.basic_ack(delivery.tag)
                        self.metrics.applied(1, int(outcome == "applied"))
                        log.info("%s %s %s", envelope.type, envelope.id, outcome)
                        return owed
                if isinstance(error, InvalidMessage):
                    log.error("dead-lettering %s %s: %s", envelope.type, envelope.id, error)
                    channel.basic_reject(delivery.tag, requeue=False)
                    self.metrics.dead_lettered()
                    return 0
                if is_transient(error):
                    log.warning(
                        "%s %s: dependency unavailable (%s); retrying in %.1fs",
                        envelope.type,
                        envelope.id,
                        type(error).__name__,
                        delay,
                    )
                else:
                    tries += 1 + owed
                    owed = 0
                    log.error(
                        "%s %s failed (try %d)", envelope.type, envelope.id, tries, exc_info=error
                    )
                    if tries >= self.settings.max_tries:
                        log.error(
                            "dead-lettering %s %s after %d tries", envelope.type, envelope.id, tries
                        )
                        channel.basic_reject(delivery.tag, requeue=False)
                        self.metrics.dead_lettered()
                        return 0
                error = None
                if self.stopper.stopping:
                    # Not acked: the broker redelivers it to the next consumer.
                    return owed
                self.metrics.retried()
                pause(connection, delay, self.stopper)
                delay = min(10.0, delay * 2)

    # -- the loop ------------------------------------------------------------
    def _serve_connection(self) -> None:
        connection = connect(self.settings, self.name)
        try:
            channel = connection.channel()
            declare_queue(channel, self.queue, self.settings)
            # Two batches in flight: the broker sends the next while this one is
            # applied and committed, instead of waiting for its ack to send more.
            channel.basic_qos(prefetch_count=self.settings.prefetch * IN_FLIGHT_BATCHES)
            log.info("%s consuming %s", self.name, self.queue)
            messages = channel.consume(self.queue, inactivity_timeout=0.5)
            for method, properties, body in messages:
                if method is not None:
                    self.deliver(
                        connection,
                        channel,
                        self._gather(connection, channel, messages, (method, properties, body)),
                    )
                if self.stopper.stopping:
                    break
            channel.cancel()
        finally:
            close_quietly(connection)

    def _gather(
        self,
        connection: BlockingConnection,
        channel: BlockingChannel,
        messages: Iterator,
        first: tuple,
    ) -> list:
        """The first message and those that have already arrived after it, up to the prefetch.

        The prefetch bounds a batch; the channel's own window is larger (the
        next batch arrives while one is applied), so more may be waiting.

        Never waits for more: a lone message is applied at once.
        """
        batch = [first]
        while len(batch) < self.settings.prefetch:
            if not channel.get_waiting_message_count():
                # Read what the socket holds already, without blocking.
                connection.process_data_events(time_limit=0)
                if not channel.get_waiting_message_count():
                    break
            batch.append(next(messages))
        return batch

    def run(self, *, install_signals: bool = True) -> int:
        """Consume until SIGTERM/SIGINT, reconnecting after any failure; returns 0."""
        if install_signals:
            self.stopper.install()
        run_forever(self.name, self._serve_connection, self.stopper)
        log.info("%s stopped", self.name)
        return 0
