"""Publisher confirms with a whole batch in flight, on pika's SelectConnection.

pika's BlockingConnection waits for each confirm before it sends the next
message: one broker round trip per message, and for a quorum queue one Raft
commit and disk sync. The relay sends a batch of outbox rows at a time and only
needs to know, for each row, whether the broker took it; ``ConfirmingPublisher``
sends the whole batch, then waits once for the answers (the broker confirms
many messages with one ack).

Everything runs on the connection's own I/O loop, driven from the calling
thread: ``publish`` and ``wait`` run the loop until they have their answer,
so heartbeats are serviced while the relay waits for new rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import IOLoop

from workers.broker import connection_parameters
from workers.settings import BrokerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One message to publish; ``properties.message_id`` must be set and unique in a batch."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties


@dataclass(frozen=True)
class Confirmations:
    """The broker's answer on each message of a batch, in the batch's order.

    ``True``: confirmed and routed to a queue. ``False``: returned as
    unroutable, or refused (nack). ``None``: no answer, because the connection
    was lost first (``error`` says how); such a message may or may not have
    reached a queue.
    """

    outcomes: list[bool | None]
    error: BaseException | None = None
    #: The broker refused at least one message (basic.nack), as opposed to
    #: only returning unroutable ones.
    refused: bool = False


class ConfirmingPublisher:
    """One connection and one confirm-mode channel, publishing whole batches.

    Raises (from the constructor, ``publish`` or ``wait``) the pika connection
    or channel error that ended the connection; the caller opens a new one.
    """

    def __init__(self, settings: BrokerSettings, name: str, *, timeout: float = 30.0):
        self.timeout = timeout
        self._error: BaseException | None = None
        self._closing = False
        self._channel: Any = None
        self._ready = False
        self._wake = False
        self._unconfirmed: dict[int, int] = {}  # delivery tag -> index in the batch
        self._outcomes: list[bool | None] = []
        self._by_message_id: dict[str, int] = {}
        self._returned: set[int] = set()
        self._refused = False
        self._next_tag = 1
        # One I/O loop for every node tried and for the connection's whole life.
        self._ioloop = IOLoop()
        self._ioloop_open = True
        try:
            self.connection = self._open(connection_parameters(settings, name), timeout)
        except BaseException:
            self._ioloop.close()
            raise

    def _open(self, nodes: list[pika.URLParameters], timeout: float) -> pika.SelectConnection:
        """A connection, with its confirm-mode channel, to the first node that answers in turn.

        pika's SelectConnection takes one node; the nodes are tried here one
        after the other (as BlockingConnection does with a list). Raises the
        last node's error when none answers.
        """
        error: BaseException = pika.exceptions.AMQPConnectionError("no broker node")
        for parameters in nodes:
            self._error, self._closing, self._ready = None, False, False
            self.connection = pika.SelectConnection(
                parameters,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
                custom_ioloop=self._ioloop,
            )
            try:
                if self._run(lambda: self._ready, timeout):
                    return self.connection
                error = pika.exceptions.AMQPConnectionError(
                    f"{parameters.host}:{parameters.port} not ready within {timeout:.0f}s"
                )
            except (pika.exceptions.AMQPError, OSError) as failure:
                error = failure
            log.warning(
                "broker node %s:%s unavailable (%s)",
                parameters.host,
                parameters.port,
                type(error).__name__,
            )
            self._close_connection()
        raise error

    # -- the I/O loop --------------------------------------------------------
    def _run(
        self, done: Callable[[], bool], timeout: float | None, fds: Iterable[int] = ()
    ) -> bool:
        """Run the loop until ``done()``, an error, ``timeout`` seconds, or a readable fd."""
        loop = self.connection.ioloop
        self._wake = False
        timed_out: list[bool] = []
        timer = None

        def time_out() -> None:
            timed_out.append(True)
            loop.stop()

        if timeout is not None:
            timer = loop.call_later(timeout, time_out)
        watched = list(fds)
        for fd in watched:
            loop.add_handler(fd, self._on_fd_ready, loop.READ)
        try:
            while not (done() or self._error or self._wake or timed_out):
                loop.start()
        finally:
            for fd in watched:
                loop.remove_handler(fd)
            if timer is not None:
                loop.remove_timeout(timer)
        if self._error is not None:
            raise self._error
        return not timed_out

    def _on_fd_ready(self, _fd: int, _events: int) -> None:
        self._wake = True
        self.connection.ioloop.stop()

    def _stop_loop(self) -> None:
        self.connection.ioloop.stop()

    # -- connection and channel callbacks -------------------------------------
    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _fail(self, reason: object, kind: type[BaseException]) -> None:
        # The first failure is the one raised; a close this publisher asked for is none.
        if not self._closing and self._error is None:
            self._error = reason if isinstance(reason, BaseException) else kind(str(reason))
        self._stop_loop()

    def _on_open_error(self, _connection: Any, error: object) -> None:
        self._fail(error, pika.exceptions.AMQPConnectionError)

    def _on_closed(self, _connection: Any, reason: object) -> None:
        self._fail(reason, pika.exceptions.AMQPConnectionError)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirming)

    def _on_confirming(self, _frame: Any) -> None:
        self._ready = True
        self._stop_loop()

    def _on_channel_closed(self, _channel: Any, reason: object) -> None:
        self._fail(reason, pika.exceptions.AMQPChannelError)
        # The channel is gone; so is this publisher.
        if self.connection.is_open:
            self._closing = True
            self.connection.close()

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        # The broker returns an unroutable mandatory message before it acks it.
        index = self._by_message_id.get(getattr(properties, "message_id", None) or "")
        if index is not None:
            self._returned.add(index)
        log.debug("message returned: %s", method.reply_text)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        accepted = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = [tag for tag in self._unconfirmed if tag <= method.delivery_tag]
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            index = self._unconfirmed.pop(tag, None)
            if index is not None:
                self._outcomes[index] = accepted and index not in self._returned
                self._refused = self._refused or not accepted
        if not self._unconfirmed:
            self._stop_loop()

    # -- the API -------------------------------------------------------------
    def publish(self, messages: list[Message]) -> Confirmations:
        """Publish every message (persistent, mandatory), then wait for every answer.

        A lost connection is not raised here: the answers received before it
        are returned with the error, so the caller can keep what was confirmed.
        """
        self._outcomes = [None] * len(messages)
        self._returned = set()
        self._refused = False
        self._by_message_id = {}
        self._unconfirmed = {}
        try:
            for index, message in enumerate(messages):
                self._by_message_id[message.properties.message_id] = index
                self._channel.basic_publish(
                    message.exchange,
                    message.routing_key,
                    message.body,
                    properties=message.properties,
                    mandatory=True,
                )
                self._unconfirmed[self._next_tag] = index
                self._next_tag += 1
            if not self._run(lambda: not self._unconfirmed, self.timeout):
                raise pika.exceptions.AMQPConnectionError(
                    f"no publisher confirm within {self.timeout:.0f}s"
                )
        except (pika.exceptions.AMQPError, OSError) as error:
            self._close_connection()
            return Confirmations(list(self._outcomes), error, self._refused)
        return Confirmations(list(self._outcomes), refused=self._refused)

    def wait(self, fds: Iterable[int], timeout: float) -> bool:
        """Serve the connection until one of ``fds`` is readable or ``timeout`` passes.

        Returns True if an fd woke it. Raises the error that ends the connection.
        """
        self._run(lambda: False, timeout, fds)
        return self._wake

    def _close_connection(self) -> None:
        """Close the connection (if still open), waiting a little for the broker."""
        self._closing = True
        # An error that ended it was reported already; wait for the close itself, so
        # nothing of this connection is left on the I/O loop the next attempt uses.
        self._error = None
        try:
            if not (self.connection.is_closing or self.connection.is_closed):
                self.connection.close()  # while opening too: that abandons the attempt
            if not self.connection.is_closed:
                self._run(lambda: self.connection.is_closed, 5.0)
        except (pika.exceptions.AMQPError, OSError):
            log.debug("publisher connection already closed")

    def close(self) -> None:
        """Close the connection (if still open) and release the I/O loop; idempotent."""
        if self._ioloop_open:
            self._close_connection()
            self._ioloop.close()
            self._ioloop_open = False
