"""The drain's ceiling: the same work as relay plus user worker, done bare.

The same ``user.sync`` ``created`` bodies the relay publishes, through the same
exchange of the same broker, into the same user database, with nothing of
ours in the way:

- publish: every message in flight at once with publisher confirms (one
  confirm-mode channel, the broker acking many at a time), persistent and
  mandatory, into a throwaway quorum queue bound to the real exchange under a
  routing key of its own (so the user worker's queue never sees them);
- consume: manual acks, a batch of ``prefetch`` messages at a time, the
  channel's window as wide as the worker's (two batches); per batch,
  the bodies parsed, one multi-row ``INSERT ... ON CONFLICT DO NOTHING`` for
  the profiles and one for the processed-message ids, one commit, one ack
  (``multiple``) for the batch.

The rate is the count over both phases, run one after the other: the drain
overlaps them (the relay publishes while the worker consumes), so it can in
principle beat this figure, but only if its own per-message cost is low.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika
import pika.spec
import psycopg2
import psycopg2.extras

from bench.pipeline import created_sync
from common.events import USER_EVENTS, USER_SYNC

#: The profile columns the bare consumer writes, as the worker's ``created`` does.
PROFILE_INSERT = (
    "INSERT INTO profiles (id, email, username, roles, is_active, email_verified,"
    " created_at, updated_at, synced_at) VALUES %s ON CONFLICT (id) DO NOTHING"
)
PROCESSED_INSERT = (
    "INSERT INTO processed_messages (message_id, message_type, processed_at) VALUES %s"
    " ON CONFLICT (message_id) DO NOTHING"
)


def sync_bodies(count: int) -> list[tuple[str, bytes]]:
    """``count`` ``user.sync`` created messages, ``(message id, body)``, as the relay sends them.

    Built the way :func:`common.outbox.emit_all` writes an outbox row's body.
    """
    now = datetime.now(UTC)
    messages = []
    for _ in range(count):
        envelope = USER_SYNC.make(created_sync(str(uuid.uuid4()), now, prefix="c"))
        body = json.dumps(envelope.to_dict(), separators=(",", ":")).encode()
        messages.append((envelope.id, body))
    return messages


def dsn(database_url: str) -> str:
    """A libpq DSN from a SQLAlchemy URL."""
    scheme, rest = database_url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else database_url


@dataclass(frozen=True)
class Ceiling:
    """One bare run: ``count`` messages, seconds publishing, seconds consuming and writing."""

    count: int
    publish_s: float
    consume_s: float

    @property
    def rate(self) -> float:
        """Messages per second over both phases."""
        return self.count / (self.publish_s + self.consume_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "count": self.count,
            "publish_s": round(self.publish_s, 3),
            "consume_s": round(self.consume_s, 3),
            "rate": round(self.rate, 1),
            "publish_rate": round(self.count / self.publish_s, 1),
            "consume_rate": round(self.count / self.consume_s, 1),
        }


def publish_pipelined(
    connection: pika.BlockingConnection,
    channel: Any,
    routing_key: str,
    messages: list[tuple[str, bytes]],
    sender: str,
) -> None:
    """Publish every message at once on a confirm-mode channel; return when all are confirmed."""
    impl = channel._impl  # the channel under BlockingChannel: no wait per message
    state = {"selected": False, "confirmed": 0, "nacked": 0, "returned": 0}
    pending: set[int] = set()

    def on_confirm(frame: Any) -> None:
        method = frame.method
        tags = (
            [tag for tag in pending if tag <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            pending.discard(tag)
        state["confirmed"] += len(tags)
        if isinstance(method, pika.spec.Basic.Nack):
            state["nacked"] += len(tags)

    def on_return(*_args: Any) -> None:
        state["returned"] += 1

    impl.add_on_return_callback(on_return)
    impl.confirm_delivery(on_confirm, callback=lambda _frame: state.update(selected=True))
    while not state["selected"]:
        connection.process_data_events(time_limit=0.002)
    for tag, (message_id, body) in enumerate(messages, start=1):
        properties = pika.BasicProperties(
            message_id=message_id,
            user_id=sender,
            type=USER_SYNC.routing_key,
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            app_id=USER_SYNC.source,
        )
        pending.add(tag)
        impl.basic_publish(USER_EVENTS, routing_key, body, properties, mandatory=True)
    while state["confirmed"] < len(messages):
        connection.process_data_events(time_limit=0.002)
    if state["nacked"] or state["returned"]:
        raise RuntimeError(f"the broker refused {state['nacked']} and returned {state['returned']}")


def _rows(bodies: list[bytes]) -> tuple[list[tuple], list[tuple]]:
    now = datetime.now(UTC)
    profiles, processed = [], []
    for body in bodies:
        envelope = json.loads(body)
        data = envelope["data"]
        profiles.append(
            (
                data["user_id"],
                data["email"].lower(),
                data["username"],
                json.dumps(data.get("roles", [])),
                data.get("is_active", True),
                data.get("email_verified", False),
                data.get("created_at") or now,
                now,
                envelope["occurred_at"],
            )
        )
        processed.append((envelope["id"], envelope["type"], now))
    return profiles, processed


def consume_and_write(
    connection: pika.BlockingConnection,
    channel: Any,
    queue: str,
    count: int,
    prefetch: int,
    database: Any,
    window: int,
) -> None:
    """Take ``count`` messages in batches of ``prefetch``; write, commit, then ack each batch.

    ``window`` is the channel's prefetch count, as the worker sets it (the
    next batch on its way while one is written).
    """
    channel.basic_qos(prefetch_count=window)
    received = 0
    batch: list[bytes] = []
    last_tag = 0
    for method, _properties, body in channel.consume(queue, inactivity_timeout=30):
        if method is None:
            raise RuntimeError(f"only {received} of {count} messages arrived")
        batch.append(body)
        last_tag = method.delivery_tag
        received += 1
        if len(batch) == prefetch or received == count:
            profiles, processed = _rows(batch)
            with database.cursor() as cursor:
                psycopg2.extras.execute_values(cursor, PROFILE_INSERT, profiles, page_size=prefetch)
                psycopg2.extras.execute_values(
                    cursor, PROCESSED_INSERT, processed, page_size=prefetch
                )
            database.commit()
            channel.basic_ack(last_tag, multiple=True)
            batch = []
        if received == count:
            break
    channel.cancel()


def drain_ceiling(
    amqp_url: str, database_url: str, count: int, *, prefetch: int, window: int
) -> Ceiling:
    """Publish ``count`` fresh sync messages bare, then consume and write them bare; time both."""
    messages = sync_bodies(count)
    parameters = pika.URLParameters(amqp_url)
    sender = str(parameters.credentials.username)
    connection = pika.BlockingConnection(parameters)
    database = psycopg2.connect(dsn(database_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(USER_EVENTS, exchange_type="topic", durable=True)
        queue = f"bench.drain_ceiling.{time.monotonic_ns()}"
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(queue, USER_EVENTS, routing_key=queue)
        # Publishing and consuming on channels of their own, as relay and worker do.
        publishing = connection.channel()
        started = time.perf_counter()
        publish_pipelined(connection, publishing, queue, messages, sender)
        published = time.perf_counter() - started
        started = time.perf_counter()
        consume_and_write(connection, channel, queue, count, prefetch, database, window)
        consumed = time.perf_counter() - started
        channel.queue_delete(queue)
    finally:
        database.close()
        connection.close()
    return Ceiling(count, published, consumed)


def prefill(database_url: str, count: int, chunk: int = 10_000) -> None:
    """Add ``count`` profiles and as many processed-message ids to the user database."""
    now = datetime.now(UTC)
    database = psycopg2.connect(dsn(database_url))
    try:
        with database.cursor() as cursor:
            for start in range(0, count, chunk):
                size = min(chunk, count - start)
                ids = [str(uuid.uuid4()) for _ in range(size)]
                psycopg2.extras.execute_values(
                    cursor,
                    PROFILE_INSERT,
                    [
                        (i, f"p{i[:8]}{i[-8:]}@example.com", "p" + i[:20].replace("-", ""))
                        + ('["user"]', True, False, now, now, now)
                        for i in ids
                    ],
                    page_size=1000,
                )
                psycopg2.extras.execute_values(
                    cursor,
                    PROCESSED_INSERT,
                    [(str(uuid.uuid4()), USER_SYNC.name, now) for _ in ids],
                    page_size=1000,
                )
                database.commit()
            cursor.execute("ANALYZE profiles")
            cursor.execute("ANALYZE processed_messages")
        database.commit()
    finally:
        database.close()


def empty_tables(database_url: str) -> None:
    """Remove every profile and processed-message id (between runs on empty tables)."""
    database = psycopg2.connect(dsn(database_url))
    try:
        with database.cursor() as cursor:
            cursor.execute("TRUNCATE profiles, processed_messages")
        database.commit()
    finally:
        database.close()
