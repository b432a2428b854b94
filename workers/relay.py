"""``python -m workers.relay auth|user``: publish one app's transactional outbox.

Rows go out in ``seq`` order with publisher confirms and ``mandatory``, a batch
at a time with every message of it in flight at once (workers/publisher.py); a
row is marked published only after the broker confirmed it. A row the broker
cannot route (no queue bound yet) or refuses stays pending and is tried again
with backoff; rows behind it that the broker took are not sent twice, so such a
row can arrive after them (consumers are built for late events). After a
refusal (basic.nack) the next try goes out on a new connection: on RabbitMQ
3.10 a channel that first published to a quorum queue while it was electing a
new leader (its old leader's node just died) can go on refusing every publish
to it for as long as that node is down, while a newer channel's are taken.

Several relays of one app may run at once on PostgreSQL: each batch is taken
with ``FOR UPDATE SKIP LOCKED``, so no row is published by two relays at the
same moment. On PostgreSQL a ``LISTEN`` on the outbox's channel wakes the relay
as soon as a transaction that wrote a row commits; on SQLite (one relay only)
it polls every 50 ms, a cheap indexed query.
"""

from __future__ import annotations

import enum
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
from prometheus_client import REGISTRY
from sqlalchemy import select as sql_select
from sqlalchemy import update
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from auth_app.config import load_settings as load_auth_settings
from auth_app.models import OutboxEvent as AuthOutbox
from common.config import WebSettings, exit_on_config_error
from common.db import backlog_reader, make_engine, utcnow
from common.metrics import OutboxBacklog
from common.outbox import OutboxModel, notify_channel
from user_app.config import load_settings as load_user_settings
from user_app.models import OutboxEvent as UserOutbox
from workers.broker import (
    Stopper,
    broker_user,
    close_quietly,
    connect,
    declare_exchanges,
    run_forever,
)
from workers.listener import Listener
from workers.publisher import ConfirmingPublisher, Message
from workers.settings import BrokerSettings, start_worker

log = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)


class Held(enum.Enum):
    """Why rows of a batch stay pending (falsy when none does)."""

    NONE = 0
    #: Returned: no queue is bound to their routing key yet.
    UNROUTABLE = 1
    #: Refused (basic.nack): the queue could not take them on this channel.
    REFUSED = 2

    def __bool__(self) -> bool:
        return self is not Held.NONE


@dataclass
class Relay:
    """Drain one outbox table to RabbitMQ."""

    name: str
    outbox_model: OutboxModel
    engine: Engine
    settings: BrokerSettings
    batch_size: int = 200
    idle_poll: float = 0.05
    listen_timeout: float = 5.0
    stopper: Stopper = field(default_factory=Stopper)

    def __post_init__(self) -> None:
        self.postgres = self.engine.dialect.name == "postgresql"
        self.listener = Listener(self.engine, notify_channel(self.outbox_model.__tablename__))
        # RabbitMQ refuses a user_id other than the connection's own user:
        # consumers can trust it to name who published.
        self.sender = broker_user(self.settings)

    # -- publishing ----------------------------------------------------------
    def publish_batch(self, publisher: ConfirmingPublisher) -> tuple[int, Held]:
        """Publish up to ``batch_size`` pending rows; returns (sent, why any row is held).

        The whole batch is in flight at once; each row the broker confirmed
        is marked published, in the transaction that holds the rows' locks.
        A row the broker returned or refused stays pending for the next try.
        """
        model = self.outbox_model
        with Session(self.engine) as session, session.begin():
            query = (
                sql_select(
                    model.seq,
                    model.message_id,
                    model.exchange,
                    model.routing_key,
                    model.source,
                    model.correlation_id,
                    model.body,
                )
                .where(model.published_at.is_(None))
                .order_by(model.seq)
                .limit(self.batch_size)
            )
            if self.postgres:
                query = query.with_for_update(skip_locked=True)
            rows = session.execute(query).all()
            if not rows:
                return 0, Held.NONE
            answer = publisher.publish(
                [
                    Message(
                        row.exchange,
                        row.routing_key,
                        row.body.encode(),
                        _properties(row, self.sender),
                    )
                    for row in rows
                ]
            )
            published = [row.seq for row, ok in zip(rows, answer.outcomes, strict=True) if ok]
            kept = [row for row, ok in zip(rows, answer.outcomes, strict=True) if ok is False]
            # One statement marks the whole batch, in the transaction holding its row locks.
            self._count_attempt(session, published, published_at=utcnow())
            self._count_attempt(session, [row.seq for row in kept])
        if kept:
            log.warning(
                "%d outbox rows not accepted by the broker (%s; first: %s %s); will retry",
                len(kept),
                "refused" if answer.refused else "no queue bound",
                kept[0].routing_key,
                kept[0].message_id,
            )
        if published:
            log.info("published %d outbox rows", len(published))
        if answer.error is not None:
            # Kept what was confirmed; the rest goes out on the next connection.
            raise answer.error
        if answer.refused:
            return len(published), Held.REFUSED
        return len(published), Held.UNROUTABLE if kept else Held.NONE

    def _count_attempt(self, session: Session, seqs: list[int], **values: Any) -> None:
        if seqs:
            model = self.outbox_model
            session.execute(
                update(model)
                .where(model.seq.in_(seqs))
                .values(attempts=model.attempts + 1, **values)
                .execution_options(synchronize_session=False)
            )

    # -- waiting -------------------------------------------------------------
    def wait_for_rows(self, publisher: ConfirmingPublisher) -> None:
        """Block until a new outbox row may exist, servicing the broker connection."""
        # A commit notified while the last batch went out, or the LISTEN is new
        # (after a failover, on the new primary): look for rows first.
        if self.listener.take():
            return
        fd = self.listener.fileno()
        if fd is None:
            publisher.wait([self.stopper.wake_fd], self.idle_poll)
            return
        publisher.wait([fd, self.stopper.wake_fd], self.listen_timeout)
        self.listener.take()

    def _pause(self, publisher: ConfirmingPublisher, seconds: float) -> None:
        publisher.wait([self.stopper.wake_fd], seconds)

    # -- the loop ------------------------------------------------------------
    def _serve_connection(self) -> None:
        # Exchanges first, on a short blocking connection; then the publisher's own.
        connection = connect(self.settings, self.name)
        try:
            declare_exchanges(connection.channel())
        finally:
            close_quietly(connection)
        publisher = ConfirmingPublisher(self.settings, self.name)
        try:
            log.info("%s publishing", self.name)
            retry = 0.5
            while not self.stopper.stopping:
                try:
                    sent, held = self.publish_batch(publisher)
                except DB_ERRORS as error:
                    log.warning("outbox database unavailable (%s); retrying", type(error).__name__)
                    self.listener.drop()
                    self._pause(publisher, retry)
                    retry = min(10.0, retry * 2)
                    continue
                if held:
                    self._pause(publisher, retry)
                    retry = min(10.0, retry * 2)
                    if held is Held.REFUSED:
                        log.info("%s: publishing on a new connection after a refusal", self.name)
                        publisher.close()
                        publisher = ConfirmingPublisher(self.settings, self.name)
                    continue
                retry = 0.5
                if sent < self.batch_size:
                    self.wait_for_rows(publisher)
        finally:
            publisher.close()

    def run(self, *, install_signals: bool = True) -> int:
        """Publish until SIGTERM/SIGINT, reconnecting after any failure; returns 0."""
        if install_signals:
            self.stopper.install()
        try:
            run_forever(self.name, self._serve_connection, self.stopper)
        finally:
            self.listener.drop()
        log.info("%s stopped", self.name)
        return 0


def _properties(row: Row, sender: str) -> pika.BasicProperties:
    """The AMQP properties of an outbox row (from its columns), published as ``sender``."""
    return pika.BasicProperties(
        message_id=row.message_id,
        user_id=sender,
        type=row.routing_key,
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        app_id=row.source,
        correlation_id=row.correlation_id,
    )


#: Each service's outbox and settings, by the name ``python -m workers.relay`` takes.
OUTBOXES: dict[str, tuple[OutboxModel, Callable[..., WebSettings]]] = {
    "auth": (AuthOutbox, load_auth_settings),
    "user": (UserOutbox, load_user_settings),
}


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m workers.relay auth|user``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in OUTBOXES:
        print("usage: python -m workers.relay auth|user", file=sys.stderr)
        return 2
    app = argv[0]
    outbox, load_settings = OUTBOXES[app]
    broker, settings, engine = start_worker(load_settings, max_overflow=0)
    metrics_engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    read = backlog_reader(metrics_engine, outbox.created_at, outbox.published_at.is_(None))
    REGISTRY.register(OutboxBacklog(app, read))
    return Relay(f"{app}_relay", outbox, engine, broker).run()


if __name__ == "__main__":
    sys.exit(main())
