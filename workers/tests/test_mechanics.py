"""The relay and consume loop on their own, against the real RabbitMQ.

These use a small stand-in schema (an outbox, a processed-messages table and a
table the handler writes to), so they pin the delivery guarantees apart from
either app's handlers.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pika
import pytest
from sqlalchemy import String, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from common.db import make_engine, new_metadata
from common.events import USER_EVENTS, USER_QUEUE, InvalidMessage
from common.outbox import OutboxMixin, ProcessedMessageMixin, emit
from tests.support.broker import Running, broker_settings, connection_ports, drain, queue_depth
from tests.support.events import NUMBERED, raw_envelope
from tests.support.servers import broker_user
from workers.broker import connect, dead_letter_queue, declare_exchanges, declare_queue
from workers.consumer import Consumer
from workers.publisher import ConfirmingPublisher
from workers.relay import Held, Relay


class Base(DeclarativeBase):
    metadata = new_metadata()


class Outbox(OutboxMixin, Base):
    __tablename__ = "outbox"


class Processed(ProcessedMessageMixin, Base):
    __tablename__ = "processed_messages"


class Applied(Base):
    __tablename__ = "applied"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36))
    value: Mapped[str] = mapped_column(String(64))


@pytest.fixture
def engine(tmp_path):
    # A file, not in-memory SQLite: that shares one connection between every
    # thread, so the test's own reads would end the consumer's open transaction.
    engine = make_engine(f"sqlite:///{tmp_path / 'mechanics.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(postgres_url):
    engine = make_engine(postgres_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def write_events(engine, count: int, start: int = 0) -> list[str]:
    ids = []
    with Session(engine) as session, session.begin():
        for n in range(start, start + count):
            envelope = emit(session, Outbox, NUMBERED, {"n": n})
            ids.append(envelope.id)
    return ids


def publish_raw(url: str, body: bytes, message_id: str = "x", routing_key="user.sync") -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            USER_EVENTS,
            routing_key,
            body,
            pika.BasicProperties(message_id=message_id, delivery_mode=2),
            mandatory=True,
        )
    finally:
        connection.close()


def declare(url: str, queue: str = USER_QUEUE, **settings) -> None:
    connection = connect(broker_settings(url, **settings), "test")
    try:
        channel = connection.channel()
        declare_queue(channel, queue, broker_settings(url, **settings))
        channel.queue_purge(queue)
        channel.queue_purge(dead_letter_queue(queue))
    finally:
        connection.close()


def relay_once(engine, url) -> tuple[int, Held]:
    relay = Relay("test_relay", Outbox, engine, broker_settings(url))
    connection = connect(relay.settings, "test")
    try:
        declare_exchanges(connection.channel())
    finally:
        connection.close()
    publisher = ConfirmingPublisher(relay.settings, "test")
    try:
        return relay.publish_batch(publisher)
    finally:
        publisher.close()


def test_relay_publishes_rows_in_order_with_the_contract_properties(engine, amqp_url):
    declare(amqp_url)
    ids = write_events(engine, 5)
    sent, held = relay_once(engine, amqp_url)
    assert (sent, held) == (5, Held.NONE)
    messages = drain(amqp_url, USER_QUEUE, 5)
    assert [p.message_id for p, _ in messages] == ids
    properties, body = messages[0]
    assert properties.type == "user.sync"
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert properties.app_id == "auth_app"
    # The broker user the relay connects as: RabbitMQ accepts no other.
    assert properties.user_id == "guest"
    assert json.loads(body)["id"] == ids[0]
    with Session(engine) as session:
        pending = session.scalar(
            select(func.count()).select_from(Outbox).where(Outbox.published_at.is_(None))
        )
    assert pending == 0


def test_a_row_with_no_queue_bound_stays_pending_and_goes_out_later(engine, vhost_url):
    ids = write_events(engine, 2)
    sent, held = relay_once(engine, vhost_url)
    assert (sent, held) == (0, Held.UNROUTABLE)
    with Session(engine) as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.seq)).all()
        assert [r.published_at for r in rows] == [None, None]
        assert rows[0].attempts == 1
    declare(vhost_url)
    assert relay_once(engine, vhost_url) == (2, Held.NONE)
    assert [p.message_id for p, _ in drain(vhost_url, USER_QUEUE, 2)] == ids


def test_after_a_refusal_the_relay_tries_again_on_a_new_connection(engine, vhost_url):
    # A queue that refuses every message (basic.nack), where the rows' queue will be.
    connection = connect(broker_settings(vhost_url), "test")
    try:
        channel = connection.channel()
        declare_exchanges(channel)
        channel.queue_declare(
            "refusing", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        channel.queue_bind("refusing", USER_EVENTS, routing_key="user.sync")
    finally:
        connection.close()
    ids = write_events(engine, 2)
    relay = Relay("test_relay", Outbox, engine, broker_settings(vhost_url))
    with Running(relay):
        assert wait_until(lambda: len(connection_ports(vhost_url, "test_relay")) == 1)
        first = connection_ports(vhost_url, "test_relay")
        assert wait_until(lambda: attempts(engine) >= [1, 1])
        assert wait_until(lambda: connection_ports(vhost_url, "test_relay") not in ([], first))
        # The queue takes messages again: the rows go out, once each.
        connection = connect(broker_settings(vhost_url), "test")
        try:
            connection.channel().queue_delete("refusing")
        finally:
            connection.close()
        declare(vhost_url)
        got = drain(vhost_url, USER_QUEUE, 2, timeout=30)
    assert [properties.message_id for properties, _ in got] == ids
    assert queue_depth(vhost_url, USER_QUEUE) == 0


def attempts(engine) -> list[int]:
    with Session(engine) as session:
        return list(session.scalars(select(Outbox.attempts).order_by(Outbox.seq)))


def one_by_one(handler):
    """A consumer's handler from one that takes one message at a time."""

    def handle(envelopes, session):
        for envelope in envelopes:
            handler(envelope, session)

    return handle


def make_consumer(engine, url, handler=None, **settings):
    applied_handler = handler or record

    return Consumer(
        name="test_consumer",
        handlers={NUMBERED: one_by_one(applied_handler)},
        engine=engine,
        processed_model=Processed,
        settings=broker_settings(url, **settings),
    )


def record(envelope, session):
    if envelope.data.get("invalid"):
        raise InvalidMessage("invalid data")
    session.add(Applied(message_id=envelope.id, value=str(envelope.data.get("n"))))


def applied(engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Applied.value).order_by(Applied.id)))


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def body(n, **extra) -> tuple[str, bytes]:
    envelope = raw_envelope("user.sync", "auth_app", {"n": n, **extra})
    return envelope.id, json.dumps(envelope.to_dict()).encode()


def test_duplicate_delivery_of_one_message_id_is_applied_once(engine, amqp_url):
    declare(amqp_url)
    message_id, payload = body(1)
    for _ in range(3):
        publish_raw(amqp_url, payload, message_id)
    with Running(make_consumer(engine, amqp_url)):
        assert wait_until(lambda: queue_depth(amqp_url, USER_QUEUE) == 0)
        time.sleep(0.3)
    assert applied(engine) == ["1"]


@pytest.mark.parametrize(
    "poison",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": "nope"}',
        json.dumps({**raw_envelope("user.sync", "auth_app", {}).to_dict(), "version": 2}).encode(),
        json.dumps(raw_envelope("user.unknown", "auth_app", {}).to_dict()).encode(),
        json.dumps(raw_envelope("user.sync", "auth_app", {"invalid": True}).to_dict()).encode(),
        "\udcff".encode("utf-8", "surrogatepass"),
    ],
    ids=["bad-json", "array", "bad-envelope", "version-2", "unknown-type", "invalid-data", "utf8"],
)
def test_a_poison_message_is_dead_lettered_and_later_messages_still_apply(engine, amqp_url, poison):
    declare(amqp_url)
    good_id, good = body(7)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.basic_publish(USER_EVENTS, "user.unknown", b"")  # unbound key: dropped
    connection.close()
    # Unknown types are published under the bound key so they reach the queue.
    publish_raw(amqp_url, poison, "poison")
    publish_raw(amqp_url, good, good_id)
    with Running(make_consumer(engine, amqp_url)):
        assert wait_until(lambda: applied(engine) == ["7"])
        assert wait_until(lambda: queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 1)
    dead = drain(amqp_url, dead_letter_queue(USER_QUEUE), 1)
    assert dead[0][1] == poison


def test_a_handler_that_keeps_failing_is_dead_lettered_after_max_tries(engine, amqp_url):
    declare(amqp_url)
    calls = []

    def broken(envelope, session):
        calls.append(envelope.id)
        raise RuntimeError("bug")

    message_id, payload = body(1)
    publish_raw(amqp_url, payload, message_id)
    with Running(make_consumer(engine, amqp_url, broken, max_tries=3)):
        assert wait_until(lambda: queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 1)
    assert len(calls) == 3


def test_a_transient_failure_is_retried_in_hand_and_applied_once(engine, amqp_url):
    declare(amqp_url)
    failures = [OperationalError("select 1", {}, Exception("db down"))] * 3

    def flaky(envelope, session):
        if failures:
            raise failures.pop()
        record(envelope, session)

    message_id, payload = body(42)
    publish_raw(amqp_url, payload, message_id)
    with Running(make_consumer(engine, amqp_url, flaky)):
        assert wait_until(lambda: applied(engine) == ["42"])
    assert queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 0
    assert queue_depth(amqp_url, USER_QUEUE) == 0


def test_relays_running_together_on_postgresql_publish_each_row_once(pg_engine, amqp_url):
    declare(amqp_url)
    ids = write_events(pg_engine, 600)
    relays = [
        Relay(f"relay{n}", Outbox, pg_engine, broker_settings(amqp_url), batch_size=50)
        for n in range(3)
    ]
    with Running(relays[0]), Running(relays[1]), Running(relays[2]):
        messages = drain(amqp_url, USER_QUEUE, 600)
    got = [p.message_id for p, _ in messages]
    assert sorted(got) == sorted(ids)
    assert len(set(got)) == 600


def test_relay_wakes_on_notify_and_publishes_a_new_row(pg_engine, amqp_url):
    declare(amqp_url)
    relay = Relay("relay", Outbox, pg_engine, broker_settings(amqp_url), listen_timeout=30)
    with Running(relay):
        time.sleep(0.5)  # let it go idle on LISTEN
        ids = write_events(pg_engine, 1)
        messages = drain(amqp_url, USER_QUEUE, 1, timeout=10)
    assert [p.message_id for p, _ in messages] == ids


def test_consumer_stops_when_asked_and_leaves_unapplied_messages_queued(engine, amqp_url):
    declare(amqp_url)
    started = threading.Event()

    def slow(envelope, session):
        started.set()
        time.sleep(0.5)
        record(envelope, session)

    for n in range(5):
        publish_raw(amqp_url, body(n)[1], f"m{n}")
    consumer = make_consumer(engine, amqp_url, slow, prefetch=1)
    with Running(consumer):
        assert started.wait(10)
    done = applied(engine)
    assert 1 <= len(done) < 5
    assert queue_depth(amqp_url, USER_QUEUE) == 5 - len(done)


def publish_many(url: str, payloads: list[tuple[str, bytes]]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message_id, payload in payloads:
            channel.basic_publish(
                USER_EVENTS,
                "user.sync",
                payload,
                pika.BasicProperties(message_id=message_id, delivery_mode=2),
                mandatory=True,
            )
    finally:
        connection.close()


def test_a_queue_backlog_is_applied_in_batches_in_order_once_each(engine, amqp_url):
    declare(amqp_url)
    commits = []
    event.listen(engine, "commit", lambda connection: commits.append(1))
    payloads = [body(n) for n in range(200)]
    # Redelivered ids inside the backlog: applied once, acked all the same.
    publish_many(amqp_url, payloads + payloads[:5])
    with Running(make_consumer(engine, amqp_url, prefetch=50)):
        assert wait_until(lambda: queue_depth(amqp_url, USER_QUEUE) == 0)
        time.sleep(0.3)
    assert applied(engine) == [str(n) for n in range(200)]
    # Messages waiting together share a transaction.
    assert len(commits) < 100
    assert queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 0


def test_one_failing_message_in_a_batch_does_not_hold_back_the_others(engine, amqp_url):
    declare(amqp_url)
    calls = []

    def fails_on_13(envelope, session):
        calls.append(envelope.data["n"])
        if envelope.data["n"] == 13:
            raise RuntimeError("bug")
        record(envelope, session)

    publish_many(amqp_url, [body(n) for n in range(30)])
    with Running(make_consumer(engine, amqp_url, fails_on_13, prefetch=30, max_tries=3)):
        assert wait_until(lambda: queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 1)
        assert wait_until(lambda: len(applied(engine)) == 29)
    assert applied(engine) == [str(n) for n in range(30) if n != 13]
    # The try inside the batch counts: max_tries calls in all, no more.
    assert calls.count(13) == 3
    dead = drain(amqp_url, dead_letter_queue(USER_QUEUE), 1)
    assert json.loads(dead[0][1])["data"] == {"n": 13}


def test_a_poison_message_in_a_batch_is_dead_lettered_alone(engine, amqp_url):
    declare(amqp_url)
    payloads = [body(n) for n in range(10)]
    payloads[4] = body(4, invalid=True)
    payloads[6] = ("garbage", b"not json")
    publish_many(amqp_url, payloads)
    with Running(make_consumer(engine, amqp_url, prefetch=10)):
        assert wait_until(lambda: queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 2)
        assert wait_until(lambda: len(applied(engine)) == 8)
    assert applied(engine) == ["0", "1", "2", "3", "5", "7", "8", "9"]


# -- trusted senders and times --------------------------------------------------------


def publish_as(url: str, payload: tuple[str, bytes], user_id: str | None) -> None:
    """Publish one message, its AMQP user_id set as given (or left out)."""
    message_id, body = payload
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(message_id=message_id, delivery_mode=2, user_id=user_id)
        channel.basic_publish(USER_EVENTS, "user.sync", body, properties, mandatory=True)
    finally:
        connection.close()


def test_rabbitmq_refuses_a_user_id_other_than_the_connections_own(amqp_url):
    declare(amqp_url)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        publish_as(amqp_url, body(1), user_id="auth-service")
    assert refused.value.reply_code == 406


def test_only_the_expected_sender_is_applied(engine, amqp_url):
    declare(amqp_url)
    with broker_user(amqp_url, "intruder") as intruder_url:
        publish_as(
            intruder_url, body(1), user_id=pika.URLParameters(intruder_url).credentials.username
        )
    publish_as(amqp_url, body(2), user_id=None)
    publish_as(amqp_url, body(3), user_id="guest")
    consumer = make_consumer(engine, amqp_url)
    consumer.sender = "guest"
    with Running(consumer):
        assert wait_until(lambda: queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 2)
        assert wait_until(lambda: applied(engine) == ["3"])
    assert applied(engine) == ["3"]


def test_a_message_from_the_future_is_dead_lettered_and_the_next_applies(engine, amqp_url):
    declare(amqp_url)
    future = raw_envelope(
        NUMBERED, "auth_app", {"n": 1}, occurred_at=datetime(9999, 1, 1, tzinfo=UTC)
    )
    publish_raw(amqp_url, json.dumps(future.to_dict()).encode(), future.id)
    message_id, payload = body(2)
    publish_raw(amqp_url, payload, message_id)
    with Running(make_consumer(engine, amqp_url)):
        assert wait_until(lambda: queue_depth(amqp_url, dead_letter_queue(USER_QUEUE)) == 1)
        assert wait_until(lambda: applied(engine) == ["2"])
    dead = drain(amqp_url, dead_letter_queue(USER_QUEUE), 1)
    assert json.loads(dead[0][1])["id"] == future.id
