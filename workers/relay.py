"""``python -m workers.relay auth|user``: publish one app's transactional outbox.

Rows go out in ``seq`` order with publisher confirms and ``mandatory``; a row is
marked published only after the broker confirmed it. A row the broker cannot
route (no queue bound yet) or refuses stays pending and is tried again with
backoff, holding back the rows behind it so their order is kept.

Several relays of one app may run at once on PostgreSQL: each batch is taken
with ``FOR UPDATE SKIP LOCKED``, so no row is published by two relays at the
same moment. On PostgreSQL a ``LISTEN`` on the outbox's channel wakes the relay
as soon as a transaction that wrote a row commits; on SQLite (one relay only)
it polls every 50 ms, a cheap indexed query.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import sys
from dataclasses import dataclass, field

import pika
from sqlalchemy import select as sql_select
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from common.config import Env, database_url, exit_on_config_error
from common.db import make_engine, utcnow
from common.events import notify_channel
from common.logging import configure_logging_from_env
from workers.broker import (
    CONNECTION_ERRORS,
    Stopper,
    close_quietly,
    connect,
    declare_exchanges,
    pause,
    run_forever,
)
from workers.settings import BrokerSettings

log = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)


@dataclass
class Relay:
    """Drain one outbox table to RabbitMQ."""

    name: str
    outbox_model: type
    engine: Engine
    settings: BrokerSettings
    batch_size: int = 200
    idle_poll: float = 0.05
    listen_timeout: float = 5.0
    stopper: Stopper = field(default_factory=Stopper)

    def __post_init__(self):
        self.postgres = self.engine.dialect.name == "postgresql"
        self._listener = None

    # -- publishing ----------------------------------------------------------
    def publish_batch(self, channel) -> tuple[int, bool]:
        """Publish up to ``batch_size`` pending rows; returns (sent, held back)."""
        held = False
        lost: BaseException | None = None
        model = self.outbox_model
        published: list[int] = []
        with Session(self.engine) as session, session.begin():
            query = (
                sql_select(
                    model.seq, model.message_id, model.exchange, model.routing_key, model.body
                )
                .where(model.published_at.is_(None))
                .order_by(model.seq)
                .limit(self.batch_size)
            )
            if self.postgres:
                query = query.with_for_update(skip_locked=True)
            for row in session.execute(query):
                try:
                    channel.basic_publish(
                        row.exchange,
                        row.routing_key,
                        row.body.encode(),
                        properties=_properties(row),
                        mandatory=True,
                    )
                except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
                    held = True
                    self._count_attempt(session, [row.seq])
                    log.warning(
                        "outbox %s %s not accepted by the broker (%s); will retry",
                        row.routing_key,
                        row.message_id,
                        type(error).__name__,
                    )
                    break
                except CONNECTION_ERRORS as error:
                    # Keep what was confirmed; this row goes out on the next connection.
                    lost = error
                    break
                published.append(row.seq)
            # One statement marks the whole batch, in the transaction holding its row locks.
            self._count_attempt(session, published, published_at=utcnow())
        if lost is not None:
            raise lost
        if published:
            log.info("published %d outbox rows", len(published))
        return len(published), held

    def _count_attempt(self, session: Session, seqs: list[int], **values) -> None:
        if seqs:
            model = self.outbox_model
            session.execute(
                update(model)
                .where(model.seq.in_(seqs))
                .values(attempts=model.attempts + 1, **values)
                .execution_options(synchronize_session=False)
            )

    # -- waiting -------------------------------------------------------------
    def _listen(self):
        if not self.postgres:
            return None
        if self._listener is None:
            raw = self.engine.raw_connection()
            connection = raw.driver_connection
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {notify_channel(self.outbox_model.__tablename__)}")
            self._listener = raw
        return self._listener.driver_connection

    def _drop_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):  # it is being thrown away
                self._listener.invalidate()
            self._listener = None

    def wait_for_rows(self, connection) -> None:
        """Block until a new outbox row may exist, servicing broker heartbeats."""
        try:
            listener = self._listen()
        except DB_ERRORS:
            listener = None
        if listener is None:
            connection.sleep(self.idle_poll)
            return
        try:
            ready, _, _ = select.select(
                [listener, self.stopper.wake_fd], [], [], self.listen_timeout
            )
            if listener in ready:
                listener.poll()
                listener.notifies.clear()
        except Exception as error:  # noqa: BLE001 - any listener failure: rebuild it later
            log.warning("outbox listener lost (%s)", type(error).__name__)
            self._drop_listener()
        connection.process_data_events(time_limit=0)

    # -- the loop ------------------------------------------------------------
    def _session(self) -> None:
        connection = connect(self.settings, self.name)
        try:
            channel = connection.channel()
            declare_exchanges(channel)
            channel.confirm_delivery()
            log.info("%s publishing", self.name)
            retry = 0.5
            while not self.stopper.stopping:
                try:
                    sent, held = self.publish_batch(channel)
                except DB_ERRORS as error:
                    log.warning("outbox database unavailable (%s); retrying", type(error).__name__)
                    self._drop_listener()
                    pause(connection, retry, self.stopper)
                    retry = min(10.0, retry * 2)
                    continue
                if held:
                    pause(connection, retry, self.stopper)
                    retry = min(10.0, retry * 2)
                    continue
                retry = 0.5
                if sent < self.batch_size:
                    self.wait_for_rows(connection)
        finally:
            close_quietly(connection)

    def run(self, *, install_signals: bool = True) -> int:
        """Publish until SIGTERM/SIGINT, reconnecting after any failure; returns 0."""
        if install_signals:
            self.stopper.install()
        try:
            run_forever(self.name, self._session, self.stopper)
        finally:
            self._drop_listener()
        log.info("%s stopped", self.name)
        return 0


def _properties(row) -> pika.BasicProperties:
    envelope = json.loads(row.body)
    return pika.BasicProperties(
        message_id=row.message_id,
        type=row.routing_key,
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        app_id=envelope.get("source"),
        correlation_id=envelope.get("correlation_id"),
    )


def outbox_model(app: str) -> type:
    """The outbox model of ``app`` (``auth`` or ``user``)."""
    if app == "auth":
        from auth_app.models import OutboxEvent
    else:
        from user_app.models import OutboxEvent
    return OutboxEvent


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m workers.relay auth|user``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("auth", "user"):
        print("usage: python -m workers.relay auth|user", file=sys.stderr)
        return 2
    app = argv[0]
    env = Env()
    configure_logging_from_env(env)
    engine = make_engine(database_url(env, app.upper(), app), pool_size=2, max_overflow=0)
    relay = Relay(f"{app}_relay", outbox_model(app), engine, BrokerSettings.from_env(env))
    return relay.run()


if __name__ == "__main__":
    sys.exit(main())
