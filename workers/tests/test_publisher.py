"""ConfirmingPublisher against the real RabbitMQ: every message of a batch gets its answer."""

from __future__ import annotations

import os
import time
import uuid

import pika
import pytest

from tests.support.broker import broker_settings, drain
from workers.publisher import ConfirmingPublisher, Message


def message(exchange: str, routing_key: str, body: bytes = b"{}") -> Message:
    return Message(
        exchange,
        routing_key,
        body,
        pika.BasicProperties(message_id=str(uuid.uuid4()), delivery_mode=2),
    )


@pytest.fixture
def broker(vhost_url):
    """An exchange with one bound queue (key ``bound``) and a queue that takes one message."""
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    channel.exchange_declare("ex", exchange_type="topic", durable=True)
    channel.queue_declare("q", durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind("q", "ex", routing_key="bound")
    channel.queue_declare(
        "full",
        durable=True,
        arguments={"x-queue-type": "classic", "x-max-length": 1, "x-overflow": "reject-publish"},
    )
    connection.close()
    publisher = ConfirmingPublisher(broker_settings(vhost_url), "test")
    yield vhost_url, publisher
    publisher.close()


def test_a_batch_in_flight_is_confirmed_message_by_message_in_order(broker):
    url, publisher = broker
    batch = [message("ex", "bound", str(n).encode()) for n in range(500)]
    answer = publisher.publish(batch)
    assert answer.outcomes == [True] * 500 and answer.error is None
    got = drain(url, "q", 500)
    assert [body for _, body in got] == [str(n).encode() for n in range(500)]
    # The channel goes on: a second batch is answered on its own.
    assert publisher.publish([message("ex", "bound")]).outcomes == [True]


def test_unroutable_and_refused_messages_are_told_apart_from_accepted_ones(broker):
    _, publisher = broker
    assert publisher.publish([message("", "full")]).outcomes == [True]  # now it is full
    batch = [
        message("ex", "bound"),
        message("ex", "nowhere"),  # no queue bound: returned
        message("", "full"),  # full, overflow reject-publish: nacked
        message("ex", "bound"),
    ]
    answer = publisher.publish(batch)
    assert answer.outcomes == [True, False, False, True]
    assert answer.error is None and answer.refused
    # Only returned, none refused: the broker took what it could route.
    answer = publisher.publish([message("ex", "nowhere"), message("ex", "bound")])
    assert answer.outcomes == [False, True] and not answer.refused


def test_a_lost_connection_returns_what_was_confirmed_and_the_error(broker):
    _, publisher = broker
    publisher.connection.close()
    answer = publisher.publish([message("ex", "bound")])
    assert answer.outcomes == [None]
    assert isinstance(answer.error, pika.exceptions.AMQPError)


def test_wait_returns_when_an_fd_is_readable_or_the_time_is_up(broker):
    _, publisher = broker
    read, write = os.pipe()
    try:
        started = time.monotonic()
        assert publisher.wait([read], 0.2) is False
        assert time.monotonic() - started >= 0.2
        os.write(write, b"x")
        assert publisher.wait([read], 30) is True
    finally:
        os.close(read)
        os.close(write)
    # The connection stayed usable across the waits.
    assert publisher.publish([message("ex", "bound")]).outcomes == [True]
