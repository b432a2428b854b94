"""RabbitMQ connections and the topology every worker declares on start.

Exchanges, queues and their bindings come from the event catalogue
(:mod:`common.events`), so both relays and both consumers agree on them.
Declaring is idempotent: every process declares what it needs, in any order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from common.config import split_broker_urls
from common.events import bindings
from workers.settings import BrokerSettings

log = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = "dead_letters"

#: Errors after which the connection is gone and a new one must be opened.
CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionClosedByBroker,
    ConnectionError,
    OSError,
)


def dead_letter_queue(queue: str) -> str:
    """The name of ``queue``'s dead-letter queue."""
    return f"{queue}.dead"


def node_parameters(url: str) -> list[pika.URLParameters]:
    """Connection parameters of each node a broker URL lists (one, or several comma-separated)."""
    return [pika.URLParameters(node) for node in split_broker_urls(url)]


def connection_parameters(settings: BrokerSettings, name: str) -> list[pika.URLParameters]:
    """Each broker node's connection parameters, in the URL's order, with heartbeats and a name.

    One attempt per node, each with a short timeout: a node that is down is
    passed over quickly for the next, and when none answers the caller's
    backoff decides when to go round again.
    """
    nodes = node_parameters(settings.url)
    for params in nodes:
        params.heartbeat = settings.heartbeat
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.client_properties = {"connection_name": name}
    return nodes


def broker_user(settings: BrokerSettings) -> str:
    """The broker user the worker connects as (every node's: they are one cluster)."""
    return str(node_parameters(settings.url)[0].credentials.username)


def connect(settings: BrokerSettings, name: str) -> pika.BlockingConnection:
    """A blocking connection with heartbeats to the first node that answers, in the URL's order."""
    return pika.BlockingConnection(connection_parameters(settings, name))


def declare_exchanges(channel: BlockingChannel) -> None:
    """The catalogue's durable topic exchanges and the dead-letter exchange."""
    for exchange in sorted({exchange for exchange, _keys in bindings().values()}):
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="direct", durable=True)


def declare_queue(channel: BlockingChannel, queue: str, settings: BrokerSettings) -> None:
    """``queue`` bound to its exchange, with its dead-letter queue; idempotent."""
    declare_exchanges(channel)
    base = {"x-queue-type": settings.queue_type}
    dead = dead_letter_queue(queue)
    channel.queue_declare(dead, durable=True, arguments=dict(base))
    channel.queue_bind(dead, DEAD_LETTER_EXCHANGE, routing_key=queue)
    arguments: dict[str, Any] = dict(
        base,
        **{"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": queue},
    )
    if settings.queue_type == "quorum":
        # A message that crashes the worker process itself is still bounded:
        # the broker dead-letters it after this many deliveries.
        arguments["x-delivery-limit"] = settings.max_tries
    channel.queue_declare(queue, durable=True, arguments=arguments)
    exchange, routing_keys = bindings()[queue]
    for routing_key in routing_keys:
        channel.queue_bind(queue, exchange, routing_key=routing_key)


class Stopper:
    """SIGTERM/SIGINT set a flag; loops finish the message in hand, then return.

    A pipe is written on stop too, so a loop blocked in ``select`` (the relay
    waiting for a NOTIFY) wakes at once.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.wake_fd, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def install(self) -> None:
        """Catch SIGTERM and SIGINT (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("signal %s received: finishing the message in hand, then stopping", signum)
        self.stop()

    def stop(self) -> None:
        """Ask every loop using this stopper to finish."""
        self.event.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self.event.is_set()

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is asked for."""
        self.event.wait(seconds)


def run_forever(
    name: str, serve_connection: Callable[[], None], stopper: Stopper, *, cap: float = 30.0
) -> None:
    """Run ``serve_connection()`` again after each broker failure, with capped backoff.

    ``serve_connection`` opens a broker connection, works on it and returns
    normally only when a stop was asked for. The delay doubles from 0.5 s up
    to ``cap`` and resets after a connection that served a while.
    """
    delay = 0.5
    while not stopper.stopping:
        started = time.monotonic()
        try:
            serve_connection()
        except CONNECTION_ERRORS as error:
            log.warning("%s: connection lost (%s); reconnecting", name, type(error).__name__)
        if stopper.stopping:
            break
        if time.monotonic() - started > 30:
            delay = 0.5
        stopper.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
        delay = min(cap, delay * 2)


def pause(connection: pika.BlockingConnection, seconds: float, stopper: Stopper) -> None:
    """Wait while keeping the connection's heartbeats going; wake early on stop."""
    deadline = time.monotonic() + seconds
    while not stopper.stopping:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        connection.sleep(min(left, 0.25))


def close_quietly(connection: Any) -> None:
    """Close a connection that may already be broken."""
    try:
        if connection.is_open:
            connection.close()
    except (pika.exceptions.AMQPError, OSError):
        log.debug("connection already closed")
