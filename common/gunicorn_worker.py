"""A gthread worker that slow clients cannot starve: ``common.gunicorn_worker.DeadlineWorker``.

Why: gunicorn 23's ``gthread`` worker waits in its event loop only for a
connection's *first* byte. It then hands the connection to a pool thread,
which reads the rest of the request head with a blocking socket and no
timeout (``TConn.init`` calls ``setblocking(True)``), and the arbiter's
``timeout`` does not help because the main loop keeps sending heartbeats.
A client that sends a request line one byte at a time (slowloris) therefore
holds a thread for as long as it likes, and ``workers x threads`` such
clients stop the service answering anyone. A connection that sends nothing
at all is never closed either.

What this worker changes, keeping the rest of gthread (keepalive, the
thread pool, graceful shutdown) as it is:

- The request head is read in the event loop, without a thread: a readable
  connection's bytes are buffered until the blank line that ends the head,
  or until the buffer is larger than gunicorn's own header limits allow
  (then gunicorn's parser answers 400/431 at once). Only then does a pool
  thread take it, with the buffered bytes handed to gunicorn's parser.
- A connection must deliver its whole head within ``WEB_READ_TIMEOUT``
  seconds (default 10) of being accepted or of its first byte after a
  keepalive pause. Otherwise it is answered ``408`` (if it had started) and
  closed. A silent connection is closed after the same time.
- In the pool thread, reading the body has the same overall deadline, and
  every ``recv`` waits at most for what is left of it. Past it the body
  reads as ended, so the app answers 400 (the client went away) rather than
  waiting, and the connection is closed after that answer; writing a
  response may take up to gunicorn's ``timeout``.

Alternatives considered: gevent/eventlet workers (a different concurrency
model for code written for threads, and monkey-patching of psycopg2,
redis-py and pika); only a per-``recv`` socket timeout (a client sending
one byte just before each timeout still holds a thread, and the queued
connections behind it wait); more threads (raises the number of sockets an
attacker needs, does not bound it). In production a buffering reverse proxy
(nginx, a cloud load balancer) in front still does this job best; this
worker keeps gunicorn safe when something reaches it directly.

Plain HTTP only: TLS is terminated by that proxy. With ``certfile`` set the
worker refuses to start, because it reads raw bytes before any TLS wrap.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from functools import partial

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

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


def head_limit(cfg) -> int:
    """The most head bytes gunicorn's parser would ever accept with these settings."""
    fields = cfg.limit_request_fields or 32768
    field_size = cfg.limit_request_field_size or 8190
    return cfg.limit_request_line + 4 + fields * (field_size + 2) + 4


class DeadlineReader:
    """The socket as gunicorn's parser reads it: each ``recv`` bounded by one deadline.

    Past the deadline it reads as end of stream, which gunicorn and
    Werkzeug already treat as a client that went away: no thread waits on.
    """

    def __init__(self, sock: socket.socket, write_timeout: float):
        self.sock = sock
        self.write_timeout = write_timeout
        self.deadline = 0.0
        self.expired = False

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes, or ``b""`` once the deadline has passed."""
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


class HeadConn(TConn):
    """A connection whose request head is read by the event loop before a thread sees it."""

    def __init__(self, cfg, sock, client, server):
        super().__init__(cfg, sock, client, server)
        self.head = bytearray()
        self.reader: DeadlineReader | None = None

    def init(self, body_timeout: float = DEFAULT_READ_TIMEOUT) -> None:
        """Hand the buffered head to gunicorn's parser; later reads get ``body_timeout``."""
        self.initialized = True
        self.sock.settimeout(self.cfg.timeout)
        if self.parser is None:
            self.reader = DeadlineReader(self.sock, self.cfg.timeout)
            self.parser = http.RequestParser(self.cfg, self.reader, self.client)
        self.reader.deadline = time.monotonic() + body_timeout
        self.reader.expired = False
        self.parser.unreader.unread(bytes(self.head))
        self.head.clear()


class DeadlineWorker(ThreadWorker):
    """gunicorn's gthread worker, with request heads read in the event loop under a deadline."""

    @classmethod
    def check_config(cls, cfg, log):
        """Stop the master with one line if ``WEB_READ_TIMEOUT`` is bad or TLS is asked for."""
        super().check_config(cfg, log)
        try:
            read_timeout()
            if cfg.is_ssl:
                raise ConfigError(
                    "certfile/keyfile: DeadlineWorker serves plain HTTP; "
                    "terminate TLS at the reverse proxy"
                )
        except ConfigError as error:
            fail(error)

    def init_process(self):
        """Read the deadline, then start gthread's pool and loop."""
        self.read_timeout = read_timeout()
        self.head_limit = head_limit(self.cfg)
        # Connections whose head is still arriving (a dict keeps insertion order).
        self._reading: dict[HeadConn, None] = {}
        super().init_process()

    def accept(self, server, listener):
        """Accept a connection; it has ``read_timeout`` seconds to send its request head."""
        try:
            sock, client = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        conn = HeadConn(self.cfg, sock, client, server)
        self.nr_conns += 1
        with self._lock:
            self._start_reading(conn)
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
            )

    def _start_reading(self, conn: HeadConn) -> None:
        conn.timeout = time.time() + self.read_timeout
        self._reading[conn] = None

    def on_client_socket_readable(self, conn, client):
        """Buffer what arrived; once the head is complete (or too big) give it to a thread."""
        with self._lock:
            if conn not in self._reading:
                # A kept-alive connection speaks again: its next head has a deadline too.
                try:
                    self._keep.remove(conn)
                except ValueError:
                    return  # closed by the keepalive sweep meanwhile
                self._start_reading(conn)
            outcome = self._read_available(conn)
            if outcome == "waiting":
                return
            self.poller.unregister(client)
            del self._reading[conn]
        if outcome == "gone":
            self.nr_conns -= 1
            conn.close()
            return
        self.enqueue_req(conn)

    def _read_available(self, conn: HeadConn) -> str:
        """Read without blocking: ``ready``, ``waiting`` for more, or ``gone``."""
        while True:
            try:
                data = conn.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return "waiting"
            except OSError:
                return "gone"
            if not data:
                return "gone"
            start = max(0, len(conn.head) - len(HEAD_END) + 1)
            conn.head += data
            if HEAD_END in conn.head[start:] or len(conn.head) > self.head_limit:
                return "ready"

    def enqueue_req(self, conn):
        """Give a connection whose head is in memory to a pool thread."""
        conn.init(self.read_timeout)
        future = self.tpool.submit(self.handle, conn)
        self._wrap_future(future, conn)

    def handle_request(self, req, conn):
        """Serve one request; a connection whose body ran out of time is not kept alive.

        The rest of that body may still arrive, and would be read as the next request.
        """
        keepalive = super().handle_request(req, conn)
        return keepalive and not conn.reader.expired

    def murder_keepalived(self):
        """Close idle keepalive connections (gthread's sweep) and heads past their deadline."""
        super().murder_keepalived()
        now = time.time()
        with self._lock:
            late = [conn for conn in self._reading if conn.timeout <= now]
            for conn in late:
                del self._reading[conn]
                self.poller.unregister(conn.sock)
        for conn in late:
            self.nr_conns -= 1
            if conn.head:
                self.log.info("closing %s: request head not received in time", conn.client[0])
                try:
                    conn.sock.send(REQUEST_TIMEOUT_ANSWER)
                except OSError:
                    pass  # it is being closed anyway
            conn.close()
