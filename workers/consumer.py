"""The consume loop every event worker runs: apply once, ack after commit.

A message is parsed, its handler runs in one database transaction that also
records the message id in the processed-messages table, and only after that
commit is it acked. A redelivered id is acked without being applied again.

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
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.events import Envelope, InvalidMessage, parse_envelope
from common.logging import log_context
from workers.broker import Stopper, close_quietly, connect, declare_queue, pause, run_forever
from workers.settings import BrokerSettings

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, Session], None]

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
    stopper: Stopper = field(default_factory=Stopper)

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

    # -- one delivery --------------------------------------------------------
    def deliver(self, connection, channel, method, properties, body: bytes) -> None:
        """Apply one delivery and settle it (ack, or reject to the dead-letter queue)."""
        tag = method.delivery_tag
        try:
            envelope = parse_envelope(body)
        except InvalidMessage as error:
            log.error(
                "dead-lettering unparseable message %s: %s",
                getattr(properties, "message_id", None),
                error,
            )
            channel.basic_reject(tag, requeue=False)
            return
        with log_context(request_id=envelope.correlation_id or "-", message_id=envelope.id):
            self._settle(connection, channel, tag, properties, envelope)

    def _settle(self, connection, channel, tag, properties, envelope: Envelope) -> None:
        headers = getattr(properties, "headers", None) or {}
        tries = int(headers.get("x-delivery-count", 0) or 0)
        delay = 0.2
        while True:
            try:
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
            for method, properties, body in channel.consume(self.queue, inactivity_timeout=0.5):
                if method is not None:
                    self.deliver(connection, channel, method, properties, body)
                if self.stopper.stopping:
                    break
            channel.cancel()
        finally:
            close_quietly(connection)

    def run(self, *, install_signals: bool = True) -> int:
        """Consume until SIGTERM/SIGINT, reconnecting after any failure; returns 0."""
        if install_signals:
            self.stopper.install()
        run_forever(self.name, self._session, self.stopper)
        log.info("%s stopped", self.name)
        return 0
