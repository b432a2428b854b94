"""gthread with a deadline on request heads and bodies: ``common.gunicorn_worker.DeadlineWorker``.

Why stock ``gthread`` (gunicorn 27) is not enough. ``accept()`` hands every
new connection to a pool thread at once (``enqueue_req``). The thread waits
up to ``DEFAULT_WORKER_DATA_TIMEOUT`` (5 s, a constant, not a setting) for
a first byte, and only then gives a silent connection back to the event loop
(``_DEFER``), where it is closed after ``keepalive`` seconds. Once a byte has
come, ``handle()`` calls ``conn.sock.setblocking(True)`` and reads the
request head and body with no timeout at all; no setting bounds those reads
(``timeout`` watches the worker's heartbeat, which the event loop keeps
sending). So a client that sends its head a byte at a time holds a thread for
as long as it likes, ``threads`` such clients stop the worker answering
anyone, a stalled body is never answered, and every silent connection still
holds a thread for 5 seconds. ``tests/test_slow_clients.py`` fails on stock
gthread for exactly these three (slowloris, silent connection, stalled body).

What this worker changes, keeping the rest of gthread as it is:

- ``enqueue_req`` no longer gives a connection to a thread at once. The
  event loop reads its request head without blocking, and hands it to a
  thread only once the blank line that ends the head has arrived (or once
  the head is larger than gunicorn's limits allow, so that gunicorn's parser
  answers 400/431 at once).
- A connection must deliver its whole head within ``WEB_READ_TIMEOUT``
  seconds (default 10) of being accepted, or of its first byte after a
  keepalive pause. Otherwise it is answered ``408`` (if it had started) and
  closed; a silent connection is closed after the same time.
- When the worker stops (SIGTERM, or recycling after ``max_requests``), a
  connection whose head is still arriving gets what gthread gives a
  kept-alive one: ``STOP_KEEPALIVE_LINGER`` (2 s) more at most. A silent
  connection would otherwise hold the worker for the whole read deadline,
  past ``graceful_timeout``, and the master would kill it.
- In the thread the parser reads through ``DeadlineReader``: the body gets
  the same deadline over all its reads. Past it the body reads as ended, so
  the app answers 400 and the connection is not kept alive. Writing a
  response may take up to gunicorn's ``timeout``.

gunicorn documents no hook between accepting a connection and the thread
that parses it, so this subclass relies on these parts of
``gunicorn.workers.gthread`` (as of 27.0): ``ThreadWorker.enqueue_req``,
``murder_pending``, ``handle_request``, ``poller``, ``nr_conns``,
``STOP_KEEPALIVE_LINGER`` and ``alive``, and on a
``TConn``'s ``sock``, ``client``, ``parser`` (a parser set before
``TConn.init()`` is kept) and ``data_ready`` (skips the in-thread wait).
``tests/test_slow_clients.py`` runs it against the real gunicorn, so a
gunicorn release that changes them fails there.

In production a buffering reverse proxy (nginx, a cloud load balancer) in
front still does this job best; this worker keeps gunicorn safe when
something reaches it directly. Plain HTTP/1.1 only: it reads raw bytes
before any TLS wrap or HTTP/2 preface, so with ``certfile`` or
``http2_cleartext`` set it refuses to start.
"""

from __future__ import annotations

import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

from common.config import ConfigError, Env, fail

HEAD_END = b"\r\n\r\n"
RECV_SIZE = 65536
REQUEST_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)
DEFAULT_READ_TIMEOUT = 10.0


def read_timeout(env: Env | None = None) -> float:
    """Seconds a client has to send a request head, and then its body (``WEB_READ_TIMEOUT``)."""
    return (env or Env()).float("WEB_READ_TIMEOUT", DEFAULT_READ_TIMEOUT, minimum=0.1)


def head_limit(cfg: Any) -> int:
    """The most head bytes gunicorn's parser would ever accept with these settings."""
    fields: int = cfg.limit_request_fields or 32768
    field_size: int = cfg.limit_request_field_size or 8190
    line: int = cfg.limit_request_line
    return line + 4 + fields * (field_size + 2) + 4


class DeadlineReader:
    """The socket as gunicorn's parser reads it: a buffered head first, then reads under a deadline.

    Past the deadline it reads as end of stream, which gunicorn and
    Werkzeug already treat as a client that went away: no thread waits on.
    """

    def __init__(self, sock: socket.socket, write_timeout: float | None) -> None:
        self.sock = sock
        self.write_timeout = write_timeout
        self.head = b""
        self.deadline = 0.0
        self.expired = False

    def start(self, head: bytes, seconds: float) -> None:
        """A new request: ``head`` is read first, then the socket until ``seconds`` from now."""
        self.head = head
        self.deadline = time.monotonic() + seconds
        self.expired = False

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes, or ``b""`` once the deadline has passed."""
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            return b""
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(size)
        except TimeoutError:
            self.expired = True
            return b""
        finally:
            # Writes use the socket too: give them their own, longer bound.
            self.sock.settimeout(self.write_timeout)


class DeadlineWorker(ThreadWorker):
    """gunicorn's gthread worker, with request heads read in the event loop under a deadline."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Stop the master with one line if ``WEB_READ_TIMEOUT`` is bad or TLS/h2c is asked for."""
        super().check_config(cfg, log)
        try:
            read_timeout()
            if cfg.is_ssl or cfg.http2_cleartext != "off":
                raise ConfigError(
                    "certfile/keyfile/http2_cleartext: DeadlineWorker serves plain HTTP/1.1; "
                    "terminate TLS at the reverse proxy"
                )
        except ConfigError as error:
            fail(error)

    def init_process(self) -> None:
        """Read the deadline, then start gthread's pool and loop."""
        self.read_timeout = read_timeout()
        self.head_limit = head_limit(self.cfg)
        # Connections whose head is still arriving: conn -> (bytes so far, deadline).
        self._heads: dict[Any, tuple[bytearray, float]] = {}
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        """Read the connection's next request head in the event loop before a thread takes it."""
        if conn.parser is not None and conn.parser.unreader.buf.getvalue():
            # Pipelined: the next request is already read (gthread's own test).
            self._hand_over(conn, b"")
            return
        conn.sock.setblocking(False)
        self._heads[conn] = (bytearray(), time.monotonic() + self.read_timeout)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))

    def _on_head_bytes(self, conn: Any, sock: socket.socket) -> None:
        """Buffer what arrived; once the head is complete (or too big) give it to a thread."""
        head = self._heads[conn][0]
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return  # waiting for more
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return
            start = max(0, len(head) - len(HEAD_END) + 1)
            head += data
            if HEAD_END in head[start:] or len(head) > self.head_limit:
                break
        self.poller.unregister(sock)
        del self._heads[conn]
        self._hand_over(conn, bytes(head))

    def _hand_over(self, conn: Any, head: bytes) -> None:
        """Give a connection whose head is in memory to a pool thread, its body under a deadline."""
        if conn.parser is None:
            # timeout 0 means none in gunicorn, but non-blocking to a socket.
            write_timeout = self.cfg.timeout or None
            conn.deadline_reader = DeadlineReader(conn.sock, write_timeout)
            conn.parser = http.get_parser(self.cfg, conn.deadline_reader, conn.client)
        conn.deadline_reader.start(head, self.read_timeout)
        conn.data_ready = True
        super().enqueue_req(conn)

    def _drop(self, conn: Any, answer: bytes = b"") -> None:
        self.poller.unregister(conn.sock)
        del self._heads[conn]
        self.nr_conns -= 1
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass  # it is being closed anyway
        conn.close()

    def handle_request(self, req: Any, conn: Any) -> bool:
        """Serve one request; a connection whose body ran out of time is not kept alive.

        The rest of that body may still arrive, and would be read as the next request.
        """
        keepalive: bool = super().handle_request(req, conn)
        return keepalive and not conn.deadline_reader.expired

    def murder_pending(self) -> None:
        """gthread's sweep, then close connections whose head is past its deadline.

        gthread calls it once a second, and on every pass of its stopping loop.
        """
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:
            linger = now + STOP_KEEPALIVE_LINGER
            for conn, (head, deadline) in self._heads.items():
                if deadline > linger:
                    self._heads[conn] = (head, linger)
        for conn, (head, deadline) in list(self._heads.items()):
            if deadline <= now:
                if head:
                    self.log.info("closing %s: request head not received in time", conn.client[0])
                self._drop(conn, REQUEST_TIMEOUT_ANSWER if head else b"")
