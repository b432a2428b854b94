"""The consume loop every event worker runs: apply once, ack after commit.

A message is parsed, its handler runs in one database transaction that also
records the message id in the processed-messages table, and only after that
commit is it acked. A redelivered id is acked without being applied again.

Messages already waiting in the channel's buffer (up to the prefetch count) are
applied together, in order, in one transaction: one duplicate check and one
commit for the lot, one ack after it. If anything in that transaction fails,
it is rolled back and every message of the batch goes the one-by-one way
below, the failing one counting the failure as its first try.

Failures, by kind:
- permanent (bad JSON, unknown type or version, invalid data): rejected at once
  and so routed to ``<queue>.dead``;
- transient (database or Redis unreachable): retried in hand with capped
  backoff for as long as it takes; the message is never lost;
- anything else: retried up to ``max_tries`` times, then dead-lettered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.events import Envelope, InvalidMessage, parse_envelope
from common.logging import log_context
from workers.broker import Stopper, close_quietly, connect, declare_queue, pause, run_forever
from workers.settings import BrokerSettings

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, Session], None]
# Applies a run of same-type messages in order, as its handler would one by one.
BatchHandler = Callable[[list[Envelope], Session], None]

TRANSIENT_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


@dataclass
class Consumer:
    """Consume one queue and apply each message exactly once."""

    name: str
    queue: str
    handlers: dict[str, Handler]
    sessions: sessionmaker[Session]
    processed_model: type
    settings: BrokerSettings
    permanent_errors: tuple[type[BaseException], ...] = (InvalidMessage,)
    # Optional faster ways for batches; a type here also needs its one-by-one handler.
    batch_handlers: dict[str, BatchHandler] = field(default_factory=dict)
    stopper: Stopper = field(default_factory=Stopper)

    def __post_init__(self):
        missing = set(self.batch_handlers) - set(self.handlers)
        if missing:
            raise ValueError(f"batch handlers without a one-by-one handler: {sorted(missing)}")

    # -- applying ------------------------------------------------------------
    def apply(self, envelope: Envelope) -> str:
        """Run the handler and record the id in one transaction: ``applied`` or ``duplicate``."""
        handler = self.handlers.get(envelope.type)
        if handler is None:
            raise InvalidMessage(f"unknown message type {envelope.type!r}")
        try:
            with self.sessions() as session, session.begin():
                if session.get(self.processed_model, envelope.id) is not None:
                    return "duplicate"
                handler(envelope, session)
                session.add(
                    self.processed_model(message_id=envelope.id, message_type=envelope.type)
                )
        except IntegrityError:
            # Another consumer may have applied the same id at the same moment.
            with self.sessions() as session:
                if session.get(self.processed_model, envelope.id) is not None:
                    return "duplicate"
            raise
        return "applied"

    def apply_batch(
        self, envelopes: list[Envelope]
    ) -> tuple[list[str], int | None, BaseException | None]:
        """Apply ``envelopes`` in order in one transaction, recording every id.

        Returns ``(outcomes, None, None)`` once committed. On any failure the
        whole transaction is rolled back and ``([], index, error)`` returned,
        ``index`` being the envelope whose own handler raised (None when the
        failure came from a batch handler, the flush or the commit).
        """
        model = self.processed_model
        failed_at = None
        try:
            with self.sessions() as session, session.begin():
                ids = [envelope.id for envelope in envelopes]
                seen = set(
                    session.scalars(select(model.message_id).where(model.message_id.in_(ids)))
                )
                outcomes = []
                run: list[Envelope] = []
                for index, envelope in enumerate(envelopes):
                    if envelope.id in seen:
                        outcomes.append("duplicate")
                        continue
                    seen.add(envelope.id)
                    outcomes.append("applied")
                    session.add(model(message_id=envelope.id, message_type=envelope.type))
                    if envelope.type in self.batch_handlers:
                        if run and run[0].type != envelope.type:
                            self.batch_handlers[run[0].type](run, session)
                            run = []
                        run.append(envelope)
                        continue
                    if run:
                        self.batch_handlers[run[0].type](run, session)
                        run = []
                    failed_at = index
                    handler = self.handlers.get(envelope.type)
                    if handler is None:
                        raise InvalidMessage(f"unknown message type {envelope.type!r}")
                    handler(envelope, session)
                    failed_at = None
                if run:
                    self.batch_handlers[run[0].type](run, session)
        except Exception as error:  # noqa: BLE001 - every failure goes the one-by-one way
            return [], failed_at, error
        return outcomes, None, None

    # -- deliveries ----------------------------------------------------------
    def deliver_batch(self, connection, channel, deliveries) -> None:
        """Apply deliveries that arrived together, settling each of them."""
        parsed = []
        for method, properties, body in deliveries:
            envelope = self._parse(channel, method, properties, body)
            if envelope is not None:
                parsed.append((method.delivery_tag, properties, envelope))
        if len(parsed) < 2:
            for tag, properties, envelope in parsed:
                self._settle_alone(connection, channel, tag, properties, envelope)
            return
        outcomes, failed_at, error = self.apply_batch([envelope for _, _, envelope in parsed])
        if error is None:
            # Every earlier delivery on this channel is settled: one ack covers the batch.
            channel.basic_ack(parsed[-1][0], multiple=True)
            for (_, _, envelope), outcome in zip(parsed, outcomes, strict=True):
                with log_context(request_id=envelope.correlation_id or "-", message_id=envelope.id):
                    log.info("%s %s %s", envelope.type, envelope.id, outcome)
            return
        log.warning(
            "a batch of %d failed (%s); applying its messages one by one",
            len(parsed),
            type(error).__name__,
        )
        for position, (tag, properties, envelope) in enumerate(parsed):
            first_error = error if position == failed_at else None
            self._settle_alone(connection, channel, tag, properties, envelope, first_error)

    def _parse(self, channel, method, properties, body: bytes) -> Envelope | None:
        try:
            return parse_envelope(body)
        except InvalidMessage as error:
            log.error(
                "dead-lettering unparseable message %s: %s",
                getattr(properties, "message_id", None),
                error,
            )
            channel.basic_reject(method.delivery_tag, requeue=False)
            return None

    def _settle_alone(self, connection, channel, tag, properties, envelope, first_error=None):
        with log_context(request_id=envelope.correlation_id or "-", message_id=envelope.id):
            self._settle(connection, channel, tag, properties, envelope, first_error)

    def _settle(self, connection, channel, tag, properties, envelope, first_error=None) -> None:
        headers = getattr(properties, "headers", None) or {}
        tries = int(headers.get("x-delivery-count", 0) or 0)
        delay = 0.2
        while True:
            try:
                if first_error is not None:
                    # The batch already tried this one: that failure is its first try.
                    error, first_error = first_error, None
                    raise error
                outcome = self.apply(envelope)
            except self.permanent_errors as error:
                log.error("dead-lettering %s %s: %s", envelope.type, envelope.id, error)
                channel.basic_reject(tag, requeue=False)
                return
            except TRANSIENT_ERRORS as error:
                log.warning(
                    "%s %s: dependency unavailable (%s); retrying in %.1fs",
                    envelope.type,
                    envelope.id,
                    type(error).__name__,
                    delay,
                )
            except Exception:
                tries += 1
                log.exception("%s %s failed (try %d)", envelope.type, envelope.id, tries)
                if tries >= self.settings.max_tries:
                    log.error(
                        "dead-lettering %s %s after %d tries", envelope.type, envelope.id, tries
                    )
                    channel.basic_reject(tag, requeue=False)
                    return
            else:
                channel.basic_ack(tag)
                log.info("%s %s %s", envelope.type, envelope.id, outcome)
                return
            if self.stopper.stopping:
                # Not acked: the broker redelivers it to the next consumer.
                return
            pause(connection, delay, self.stopper)
            delay = min(10.0, delay * 2)

    # -- the loop ------------------------------------------------------------
    def _session(self) -> None:
        connection = connect(self.settings, self.name)
        try:
            channel = connection.channel()
            declare_queue(channel, self.queue, self.settings)
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            log.info("%s consuming %s", self.name, self.queue)
            deliveries = channel.consume(self.queue, inactivity_timeout=0.5)
            for method, properties, body in deliveries:
                if method is not None:
                    self.deliver_batch(
                        connection,
                        channel,
                        self._gather(connection, channel, deliveries, method, properties, body),
                    )
                if self.stopper.stopping:
                    break
            channel.cancel()
        finally:
            close_quietly(connection)

    def _gather(self, connection, channel, deliveries, *first) -> list:
        """The first delivery and those that have already arrived after it, up to the prefetch.

        Never waits for more: a lone message is applied at once.
        """
        batch = [first]
        while len(batch) < self.settings.prefetch:
            if not channel.get_waiting_message_count():
                # Read what the socket holds already, without blocking.
                connection.process_data_events(time_limit=0)
                if not channel.get_waiting_message_count():
                    break
            batch.append(next(deliveries))
        return batch

    def run(self, *, install_signals: bool = True) -> int:
        """Consume until SIGTERM/SIGINT, reconnecting after any failure; returns 0."""
        if install_signals:
            self.stopper.install()
        run_forever(self.name, self._session, self.stopper)
        log.info("%s stopped", self.name)
        return 0
