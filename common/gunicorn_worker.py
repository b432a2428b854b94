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
- A worker already busy with ``threads`` connections or more (idle
  kept-alive ones do not count) leaves a new one for ``ACCEPT_YIELD``
  (10 ms) to a less busy worker. If it is still queued after that, the
  worker takes it and up to ``threads`` more before it yields again. All
  workers wait on one listening socket and the kernel wakes them all, so
  whichever ran first used to take every queued connection: a client that
  opens its connections at once (a reverse proxy's keepalive pool, a load
  generator) often found them all on one worker, held to one core by the
  GIL, while the others idled. A new connection now waits 10 ms at most,
  and only when every worker is busy; with one worker nothing changes.
- That spreads connections as they open, but a worker that was recycled
  (``max_requests``) comes back to find its clients reconnected to the
  others while it was away. So a worker busy with more than twice its
  ``threads`` connections answers one request every ``SHED_INTERVAL``
  (100 ms) with ``Connection: close``; the client reconnects, and the
  yield above gives the new connection to a less busy worker.
- In the thread the parser reads through ``DeadlineReader``: the body gets
  the same deadline over all its reads. Past it the body reads as ended, so
  the app answers 400 and the connection is not kept alive. Writing a
  response may take up to gunicorn's ``timeout``.

gunicorn documents no hook between accepting a connection and the thread
that parses it, so this subclass relies on these parts of
``gunicorn.workers.gthread`` (as of 27.0): ``ThreadWorker.enqueue_req``,
``murder_pending``, ``handle_request``, ``accept``, ``set_accept_enabled``,
``wait_for_and_dispatch_events``, ``_accepting``, ``poller``, ``nr_conns``,
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
#: How long a busy worker leaves a new connection to a less busy one.
ACCEPT_YIELD = 0.01
#: How often a worker busy with over twice its threads' connections closes one.
SHED_INTERVAL = 0.1


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
        # While busy: not watching the listener until _yield_until; then,
        # if a connection was still queued (_resumed), taking connections
        # until _take_until or _take_limit busy ones.
        self._yield_until = 0.0
        self._resumed = False
        self._take_until = 0.0
        self._take_limit = 0
        self._last_shed = 0.0
        super().init_process()

    def busy(self) -> int:
        """Connections this worker is working on: all it holds but the idle kept-alive ones."""
        busy: int = self.nr_conns - len(self.keepalived_conns)
        return busy

    def accept(self, listener: Any) -> None:
        """Take a new connection, unless this worker is busy and another may not be."""
        busy = self.busy()
        if self.cfg.workers > 1 and busy >= self.cfg.threads:
            now = time.monotonic()
            if self._resumed:
                # A yield has just ended with a connection queued. If this
                # worker gets it, no other wanted it: take up to ``threads``
                # more without yielding for a while.
                before = self.nr_conns
                super().accept(listener)
                if self.nr_conns > before:
                    self._take_until = now + ACCEPT_YIELD
                    self._take_limit = busy + 1 + self.cfg.threads
                return
            if now >= self._take_until or busy >= self._take_limit:
                self._yield_until = now + ACCEPT_YIELD
                super().set_accept_enabled(False)
                return
        super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        """gthread's switch, which stays off while this worker, still busy, yields."""
        if enabled and self._yield_until and self.alive:
            if time.monotonic() < self._yield_until and self.busy() >= self.cfg.threads:
                return
            self._yield_until = 0.0
            self._resumed = True
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's wait: cut short to listen again once a yield is over, not at all just after."""
        if self.alive:
            if self._resumed:
                # Only what is queued already counts as left by the others.
                timeout = 0.0
            elif (remaining := self._yield_until - time.monotonic()) > 0:
                # Past it, the loop listens again unless worker_connections
                # are all taken: then there is nothing to wake up early for.
                timeout = min(timeout, remaining)
        super().wait_for_and_dispatch_events(timeout)
        self._resumed = False

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
        A worker far busier than its threads closes a connection now and then (see above).
        """
        if self.cfg.workers > 1 and self.busy() > 2 * self.cfg.threads:
            now = time.monotonic()
            # Request threads share _last_shed without a lock: two of them racing
            # here close two connections in one interval, which does no harm.
            if now - self._last_shed >= SHED_INTERVAL:
                self._last_shed = now
                req.must_close = True  # answered with "Connection: close"
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
