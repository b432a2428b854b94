"""Two clients behind a real nginx in front of the auth service, throttled each on its own.

nginx (Debian's package) listens on a free loopback port and forwards to the
auth service run by the Procfile's ``auth`` line (gunicorn, one worker) on a
fresh SQLite database and Redis prefix, with ``TRUSTED_PROXY_COUNT=1``. Both
clients reach nginx over loopback, one from 127.0.0.2 and one from 127.0.0.3;
nginx appends the address it saw to X-Forwarded-For
(``$proxy_add_x_forwarded_for``), as every reverse proxy and PaaS router does.
Client A guesses ada's password and hammers refresh, writing a new made-up
X-Forwarded-For into every request; it ends throttled and rate-limited all
the same, while client B (ada herself) logs in. Without the proxy count every
client would be nginx's 127.0.0.1, and B would be locked out with A.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from auth_app.tests.conftest import PASSWORD
from tests.e2e.processes import free_port, tail
from tests.support.servers import check_redis, run_id
from tests.test_web_line import migrate, start_line, stop, web_environ

RATE_LIMIT = 8  # per minute, per endpoint and address
MAX_FAILURES = 5
CLIENT_A = "127.0.0.2"
CLIENT_B = "127.0.0.3"
REGISTRAR = "127.0.0.4"
START_TIMEOUT = 30.0

NGINX_CONF = """\
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    log_format seen '$remote_addr "$http_x_forwarded_for" $request $status';
    access_log {tmp}/nginx-access.log seen;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """Debian's nginx, or a failure that says how to install it."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        pytest.fail(
            "nginx is not installed; this test runs a real one in front of the auth service. "
            "Install it with: apt-get install -y nginx",
            pytrace=False,
        )
    return found


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict


@dataclass
class Client:
    """An HTTP client that reaches nginx from its own loopback address."""

    source: str
    port: int

    def post(self, path: str, body: dict, forwarded: str | None = None) -> Answer:
        headers = {"Content-Type": "application/json"}
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=10, source_address=(self.source, 0)
        )
        try:
            connection.request("POST", path, json.dumps(body), headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            json.loads(raw) if raw.strip() else {},
        )

    def health(self) -> int:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=2, source_address=(self.source, 0)
        )
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status
        finally:
            connection.close()


def wait_until_up(client: Client, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert process.poll() is None, f"{what} exited:\n{tail(log)}"
        try:
            if client.health() == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, (
            f"{what} not up within {START_TIMEOUT:.0f}s:\n{tail(log)}"
        )
        time.sleep(0.1)


def check_loopback_sources() -> None:
    """Connecting from 127.0.0.2 and 127.0.0.3 must work (Linux routes all of 127/8 to lo)."""
    for source in (CLIENT_A, CLIENT_B, REGISTRAR):
        with socket.socket() as sock:
            try:
                sock.bind((source, 0))
            except OSError as error:
                pytest.fail(f"cannot bind a client to {source} ({error})", pytrace=False)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, procfile):
    """nginx on a free loopback port in front of the Procfile's auth service; its port."""
    nginx = nginx_binary()
    check_redis()
    check_loopback_sources()
    tmp = tmp_path_factory.mktemp("reverse_proxy")
    marker = run_id()
    env = web_environ(tmp, marker)
    migrate("auth", env)
    upstream, port = free_port(), free_port()
    env.update(
        AUTH_BIND=f"127.0.0.1:{upstream}",
        TRUSTED_PROXY_COUNT="1",
        RATELIMIT_ENABLED="true",
        RATELIMIT_AUTH=f"{RATE_LIMIT}/minute",
        LOGIN_MAX_FAILURES=str(MAX_FAILURES),
        WEB_THREADS="2",
    )
    app_log = tmp / "gunicorn.log"
    app = start_line(procfile["auth"], env, app_log)
    # As root, nginx's workers would switch to a user that cannot reach the test's files.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, port=port, upstream=upstream))
    nginx_log = tmp / "nginx-error.log"
    web = None
    try:
        wait_until_up(Client("127.0.0.1", upstream), app, app_log, "the auth service")
        web = subprocess.Popen(
            [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(nginx_log), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_up(Client("127.0.0.1", port), web, nginx_log, "nginx")
        yield port, tmp / "nginx-access.log"
    finally:
        if web is not None and web.poll() is None:
            web.send_signal(signal.SIGQUIT)  # nginx's graceful stop
            try:
                web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(web.pid, signal.SIGKILL)
        left = stop(app, marker)
    assert not left, f"still running after SIGTERM: {left}"


def tally(statuses: list[int]) -> str:
    """``[401, 401, 429]`` -> ``401 x2, 429 x1``."""
    return ", ".join(f"{status} x{count}" for status, count in Counter(statuses).items())


def test_two_clients_behind_nginx_are_throttled_separately(proxy):
    port, access_log = proxy
    a, b = Client(CLIENT_A, port), Client(CLIENT_B, port)
    registered = Client(REGISTRAR, port).post(
        "/api/v1/auth/register",
        {"email": "ada@example.com", "username": "ada", "password": PASSWORD},
    )
    assert registered.status == 201, registered.body

    # A guesses ada's password by username, claiming a new address every time.
    guesses = [
        a.post(
            "/api/v1/auth/login",
            {"username": "ada", "password": f"guess-{n}"},
            forwarded=f"203.0.113.{n}",
        )
        for n in range(MAX_FAILURES + 1)
    ]
    assert [g.status for g in guesses] == [401] * MAX_FAILURES + [429]
    throttled = a.post(
        "/api/v1/auth/login", {"email": "ada@example.com", "password": PASSWORD}, "192.0.2.1"
    )
    assert throttled.status == 429, throttled.body
    assert 0 < int(throttled.headers["retry-after"]) <= 900
    assert "failed logins" in throttled.body["message"]

    # ada, at her own address, is not held up by any of it.
    owner = b.post("/api/v1/auth/login", {"email": "ada@example.com", "password": PASSWORD})
    assert owner.status == 200, owner.body
    assert owner.body["token_type"] == "Bearer"

    # A's per-address limit on refresh: its own spoofed entries change nothing.
    refreshes = [
        a.post("/api/v1/auth/refresh", {"refresh_token": "junk"}, forwarded=f"198.51.100.{n}")
        for n in range(RATE_LIMIT + 2)
    ]
    assert [r.status for r in refreshes] == [401] * RATE_LIMIT + [429] * 2
    limited = refreshes[-1]
    assert "Too many requests" in limited.body["message"]
    assert 0 < int(limited.headers["retry-after"]) <= 60
    b_refresh = b.post("/api/v1/auth/refresh", {"refresh_token": "junk"})
    assert b_refresh.status == 401, b_refresh.body

    # nginx saw the two clients at their own addresses, with A's made-up header in front.
    seen = access_log.read_text()
    assert f'{CLIENT_A} "203.0.113.0"' in seen and f'{CLIENT_B} "-"' in seen

    print(
        "\nreverse proxy (nginx, TRUSTED_PROXY_COUNT=1, "
        f"LOGIN_MAX_FAILURES={MAX_FAILURES}, RATELIMIT_AUTH={RATE_LIMIT}/minute):\n"
        f"  client A {CLIENT_A}, a new spoofed X-Forwarded-For on every request: "
        f"login {tally([g.status for g in guesses])}, then the right password 429 "
        f"(Retry-After {throttled.headers['retry-after']} s); "
        f"refresh {tally([r.status for r in refreshes])} "
        f"(Retry-After {limited.headers['retry-after']} s)\n"
        f"  client B {CLIENT_B}: login with the right password {owner.status}; "
        f"refresh {b_refresh.status} (not limited)"
    )
