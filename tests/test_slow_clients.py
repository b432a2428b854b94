"""Slow clients and big inputs against the real gunicorn, configured by gunicorn.conf.py.

One auth service process (one worker of four threads, as few as a small
deployment has) on a fresh SQLite database. Hostile clients (a body over the
limit, a 10 MB header, forty slowloris connections, a silent connection, a
stalled body) each get a bounded answer, and a normal client is served the
whole time. The read deadline is shortened to keep the run quick.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gunicorn.config import Config

from bench.memory import children
from common.config import EXIT_CONFIG_ERROR
from common.gunicorn_worker import REQUEST_TIMEOUT_ANSWER, DeadlineReader, DeadlineWorker
from tests.conftest import ROOT
from tests.e2e.client import call
from tests.e2e.processes import free_port, tail
from tests.integration.system import wait_until
from tests.support.servers import run_id
from tests.test_web_line import BIN, migrate, stop, web_environ

READ_TIMEOUT = 2.0
THREADS = 4
SLOW_CLIENTS = 40
# Answers must come within this: a correctness bound, far above a normal answer's time.
PROMPT = 5.0
# A hostile connection must be gone by then: the deadline, the once-a-second sweep, slack.
DROPPED_WITHIN = READ_TIMEOUT + 5.0


@dataclass
class Server:
    """The running gunicorn: where it listens and where it logs."""

    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        """A raw TCP connection to it."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=PROMPT)

    def health(self) -> int:
        """The status of ``GET /health``, which must answer within ``PROMPT`` seconds."""
        return call("GET", f"{self.base}/health", timeout=PROMPT).status


def start(
    tmp: Path, read_timeout: float, workers: int = 1, threads: int = THREADS
) -> tuple[subprocess.Popen, Server, str]:
    """gunicorn -c gunicorn.conf.py 'auth_app:create_app()' on a free port, once it answers.

    Returns the process, where it listens, and the marker its processes carry.
    """
    marker = run_id()
    env = web_environ(tmp, marker)
    migrate("auth", env)
    port = free_port()
    env.update(
        WEB_CONCURRENCY=str(workers),
        WEB_THREADS=str(threads),
        WEB_READ_TIMEOUT=str(read_timeout),
    )
    log_path = tmp / "gunicorn.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "--config",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                "auth_app:create_app()",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Server(port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, tail(log_path)
            try:
                if running.health() == 200:
                    return process, running, marker
            except OSError:
                assert time.monotonic() < deadline, tail(log_path)
                time.sleep(0.1)
    except BaseException:
        stop(process, marker)
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The auth service under gunicorn with a short read deadline, stopped afterwards."""
    process, running, marker = start(tmp_path_factory.mktemp("slow_clients"), READ_TIMEOUT)
    try:
        yield running
    finally:
        stop(process, marker)


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer ends it too)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer."""
    return int(answer.split(b" ", 2)[1])


def test_a_body_over_the_limit_answers_413_with_a_json_message(server):
    big = b'{"email": "a@example.com", "pad": "' + b"x" * (100 * 1024) + b'"}'
    with server.connect() as sock:
        sock.sendall(
            b"POST /api/v1/auth/register HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(big)).encode() + b"\r\n\r\n" + big
        )
        answer = read_answer(sock)
    assert status_of(answer) == 413
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower()
    assert b'"message"' in body and b"large" in body.lower()


def test_a_10_mb_header_is_refused_at_once_and_others_are_still_served(server):
    header = b"X-Big: " + b"a" * (10 * 1024 * 1024) + b"\r\n"
    with server.connect() as sock:

        def send() -> None:
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n" + header + b"\r\n")
            except OSError:
                pass  # the server stopped reading: that is the point

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        assert server.health() == 200
        answer = read_answer(sock)
        sender.join(PROMPT)
    assert status_of(answer) in (400, 431), answer[:200]
    assert not sender.is_alive(), "the server kept reading the 10 MB header"
    assert server.health() == 200


@dataclass
class SlowClients:
    """Connections that send a request head one byte at a time and never finish it."""

    port: int
    count: int
    interval: float = 0.25
    sockets: list[socket.socket] = field(default_factory=list)
    # socket index -> what the server sent before it closed the connection
    closed: dict[int, bytes] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __enter__(self):
        self.sockets = [
            socket.create_connection(("127.0.0.1", self.port), timeout=PROMPT)
            for _ in range(self.count)
        ]
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(PROMPT)
        for sock in self.sockets:
            sock.close()

    def _drip(self) -> None:
        head = b"GET /health HTTP/1.1\r\nHost: test\r\n" + b"X-Pad: slow\r\n" * 10000
        position = 0
        while not self.stopping.is_set() and len(self.closed) < self.count:
            for index, sock in enumerate(self.sockets):
                if index in self.closed:
                    continue
                readable, _, _ = select.select([sock], [], [], 0)
                try:
                    if readable:
                        self.closed[index] = read_answer(sock)
                        continue
                    sock.send(head[position : position + 1])
                except OSError:
                    self.closed[index] = b""
            position += 1
            time.sleep(self.interval)

    def open_count(self) -> int:
        """How many the server has not closed yet."""
        return self.count - len(self.closed)


def test_slowloris_connections_neither_starve_others_nor_stay_open(server):
    with SlowClients(server.port, SLOW_CLIENTS) as slow:
        time.sleep(0.6)  # every connection has sent its first bytes
        statuses = [server.health() for _ in range(3)]
        open_meanwhile = slow.open_count()
        deadline = time.monotonic() + DROPPED_WITHIN
        while slow.open_count() and time.monotonic() < deadline:
            time.sleep(0.1)
        dropped = dict(slow.closed)
    assert statuses == [200, 200, 200]
    # More slow connections were open than the worker has threads, yet it answered.
    assert open_meanwhile > THREADS
    assert len(dropped) == SLOW_CLIENTS, f"{SLOW_CLIENTS - len(dropped)} still open"
    assert {status_of(answer) for answer in dropped.values() if answer} <= {408}
    assert server.health() == 200


def test_a_connection_that_sends_nothing_is_closed(server):
    with server.connect() as sock:
        sock.settimeout(DROPPED_WITHIN)
        assert read_answer(sock) == b""


def test_a_stalled_body_is_answered_with_a_client_error_and_frees_its_thread(server):
    body = b'{"email": "stalled@example.com", "username": "stalled", "password": "x'
    with server.connect() as sock:
        sock.settimeout(DROPPED_WITHIN)
        sock.sendall(
            b"POST /api/v1/auth/register HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + body
        )
        assert server.health() == 200
        answer = read_answer(sock)
    assert 400 <= status_of(answer) < 500, answer[:300]
    assert server.health() == 200


def test_a_bad_read_timeout_stops_gunicorn_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("WEB_READ_TIMEOUT", "soon")
    with pytest.raises(SystemExit) as stopped:
        DeadlineWorker.check_config(Config(), logging.getLogger("test"))
    assert stopped.value.code == EXIT_CONFIG_ERROR
    assert "WEB_READ_TIMEOUT must be a number" in capsys.readouterr().err


def test_the_worker_refuses_tls_because_the_proxy_terminates_it(monkeypatch, capsys):
    monkeypatch.delenv("WEB_READ_TIMEOUT", raising=False)
    config = Config()
    config.set("certfile", "server.pem")
    with pytest.raises(SystemExit):
        DeadlineWorker.check_config(config, logging.getLogger("test"))
    assert "terminate TLS at the reverse proxy" in capsys.readouterr().err


def test_a_kept_alive_connection_is_served_again(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=PROMPT)
    try:
        for _ in range(3):
            connection.request("GET", "/health")
            answer = connection.getresponse()
            assert (answer.status, answer.read()) == (200, b'{"status":"ok"}\n')
    finally:
        connection.close()


def test_pipelined_requests_are_each_answered(server):
    with server.connect() as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        answer = read_answer(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:300]


def test_the_worker_refuses_h2c_because_it_reads_http_1_heads(monkeypatch, capsys):
    monkeypatch.delenv("WEB_READ_TIMEOUT", raising=False)
    config = Config()
    config.set("http2_cleartext", "upgrade")
    with pytest.raises(SystemExit):
        DeadlineWorker.check_config(config, logging.getLogger("test"))
    assert "serves plain HTTP/1.1" in capsys.readouterr().err


def test_a_client_that_leaves_halfway_through_its_head_frees_the_server(server):
    for _ in range(2 * THREADS):
        with server.connect() as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: te")
    assert server.health() == 200


def test_the_body_reader_reads_as_ended_once_its_deadline_passes():
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        reader = DeadlineReader(server_side, write_timeout=1.0)
        reader.deadline = time.monotonic() + 0.2
        client_side.sendall(b"part")
        assert reader.recv(100) == b"part"
        assert reader.recv(100) == b""  # nothing more came before the deadline
        assert reader.expired
        client_side.sendall(b"late")
        assert reader.recv(100) == b""  # past the deadline, even with data waiting
        assert server_side.gettimeout() == 1.0  # writes keep their own bound


def test_connections_still_sending_their_head_do_not_hold_a_stopping_worker(tmp_path):
    # A read deadline far past graceful_timeout (10 s): before the worker
    # capped them at stop, these two held it until the master killed it.
    process, running, marker = start(tmp_path, read_timeout=120)
    silent = running.connect()
    halfway = running.connect()
    halfway.sendall(b"GET /health HTTP/1.1\r\nHost: te")
    try:
        assert running.health() == 200
        process.send_signal(signal.SIGTERM)
        for sock in (silent, halfway):
            sock.settimeout(DROPPED_WITHIN)
            assert read_answer(sock) in (b"", REQUEST_TIMEOUT_ANSWER)
        process.wait(timeout=60)
    finally:
        silent.close()
        halfway.close()
        left = stop(process, marker)
    log = running.log.read_text()
    assert process.returncode == 0, tail(running.log)
    assert "Worker exiting" in log, tail(running.log)
    assert "SIGKILL" not in log, tail(running.log)
    assert left == {}


def holder(sock: socket.socket, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of the TCP connection ``sock``, if one does yet."""
    port = sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port:  # the server side: its peer is us
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def owner(sock: socket.socket, pids: list[int]) -> int:
    """Which of ``pids`` holds the server side of ``sock``; it must be one of them."""
    pid = holder(sock, pids)
    assert pid is not None, f"no worker of {pids} holds the connection from {sock.getsockname()}"
    return pid


def two_workers(process: subprocess.Popen, running: Server) -> list[int]:
    """The pids of gunicorn's two workers, once both have started."""
    assert wait_until(lambda: len(children(process.pid)) >= 2), tail(running.log)
    return children(process.pid)


def taken_by(socks: list[socket.socket], pid: int) -> None:
    """Wait until worker ``pid`` has accepted each of ``socks``."""
    taken = wait_until(lambda: all(holder(sock, [pid]) == pid for sock in socks), PROMPT)
    assert taken, f"worker {pid} did not take them"


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Worker ``pid`` stopped (SIGSTOP) for the block: it accepts nothing meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def busy_connections(running: Server, count: int, worker: int) -> list[socket.socket]:
    """``count`` connections that keep ``worker`` busy, each with part of its head sent.

    Only ``worker`` may be accepting while they open.
    """
    socks = [running.connect() for _ in range(count)]
    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
    taken_by(socks, worker)
    return socks


def get_kept_alive(sock: socket.socket) -> bytes:
    """``GET /health`` on ``sock``; the answer's head and body, the connection left open."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    return answer


def test_a_busy_worker_leaves_new_connections_to_an_idle_one(tmp_path):
    # Both workers wait on one listening socket and the kernel wakes both;
    # whichever ran first took the connection, so a client opening a few at
    # once often found them all on one worker while the other idled.
    process, running, marker = start(tmp_path, read_timeout=60, workers=2, threads=2)
    held, new = [], []
    try:
        first, second = two_workers(process, running)
        # With the second stopped, the first takes as many connections as it
        # has threads, each still sending its head: it is busy.
        with stopped(second):
            held = busy_connections(running, 2, first)
        # The next connections go to the idle worker, though both are woken.
        for _ in range(2):
            new.append(running.connect())
            get_kept_alive(new[-1])
        assert [owner(sock, [first, second]) for sock in new] == [second, second]
    finally:
        for sock in held + new:
            sock.close()
        assert stop(process, marker) == {}


def test_a_worker_with_more_than_its_share_hands_connections_back(tmp_path):
    # A recycled worker comes back to find every client on the others: a
    # worker busy with over twice its threads' connections closes one now
    # and then, and the client's new connection goes to the idle worker.
    process, running, marker = start(tmp_path, read_timeout=60, workers=2, threads=1)
    held, crowded, again = [], None, None
    try:
        first, second = two_workers(process, running)
        with stopped(second):
            held = busy_connections(running, 2, first)
            # No one else to take it: after its yield the first takes this one too.
            crowded = running.connect()
            answer = get_kept_alive(crowded)
            assert owner(crowded, [first]) == first
        assert b"\r\nconnection: close\r\n" in answer.lower(), answer
        again = running.connect()
        get_kept_alive(again)
        assert owner(again, [first, second]) == second
    finally:
        for sock in [*held, crowded, again]:
            if sock is not None:
                sock.close()
        assert stop(process, marker) == {}
