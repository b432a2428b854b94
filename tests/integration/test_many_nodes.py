"""Many nodes behind a load balancer: two of every process, nginx in front of the web apps.

Two auth and two user web nodes (the Procfile's ``auth`` and ``user`` lines,
each on a port of its own, one gunicorn worker each) sit behind a real nginx
(Debian's package) that balances each service over its two nodes, with
``TRUSTED_PROXY_COUNT=1``. Two of each relay and consumer run beside them, as
on two machines. Both services' databases are fresh PostgreSQL ones, the
broker a fresh vhost; the signing key files are shared, as a volume or a
Secret would share them.

The story passes through the load balancer; one auth node killed under load
costs at most the requests it had in flight (nginx sends the rest to the
other node); and the competing relays and consumers deliver every event once.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from auth_app.tests.conftest import PASSWORD
from tests.e2e.client import call, poll
from tests.e2e.processes import MARKER, free_port, processes_with_marker, tail
from tests.support.servers import (
    REDIS_URL,
    check_redis,
    fresh_postgres_database,
    fresh_vhost,
    run_id,
    write_test_keys,
)
from tests.test_reverse_proxy import nginx_binary
from tests.test_web_line import BIN, migrate, start_line, wait_for_health
from user_app import models as users

pytestmark = pytest.mark.slow

NGINX_CONF = """\
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream auth {{ server 127.0.0.1:{auth1} max_fails=1 fail_timeout=30s;
                     server 127.0.0.1:{auth2} max_fails=1 fail_timeout=30s; }}
    upstream user {{ server 127.0.0.1:{user1} max_fails=1 fail_timeout=30s;
                     server 127.0.0.1:{user2} max_fails=1 fail_timeout=30s; }}
    # A node that refuses the connection: the request goes to the other one (it
    # was never sent). One that dies mid-request: 502, never resent (not idempotent).
    proxy_next_upstream error timeout;
    proxy_connect_timeout 2s;
    server {{
        listen 127.0.0.1:{auth_port};
        location / {{ proxy_pass http://auth;
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
    }}
    server {{
        listen 127.0.0.1:{user_port};
        location / {{ proxy_pass http://user;
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
    }}
}}
"""

WORKERS = ("auth_relay", "user_relay", "auth_worker", "user_worker")


class Cluster:
    """Every process of the system twice, and nginx; started and stopped together."""

    def __init__(self, tmp: Path, procfile: dict[str, str], env: dict[str, str]) -> None:
        self.tmp = tmp
        self.procfile = procfile
        self.env = env
        self.processes: dict[str, tuple[subprocess.Popen, str]] = {}
        self.ports = {name: free_port() for name in ("auth1", "auth2", "user1", "user2")}
        self.auth_port, self.user_port = free_port(), free_port()

    def start(self, name: str, line: str, **extra: str) -> subprocess.Popen:
        marker = run_id()
        env = {**self.env, MARKER: marker, **extra}
        process = start_line(self.procfile[line], env, self.tmp / f"{name}.log")
        self.processes[name] = (process, marker)
        return process

    def start_all(self) -> None:
        for name, port in self.ports.items():
            app = name[:-1]
            process = self.start(name, app, **{f"{app.upper()}_BIND": f"127.0.0.1:{port}"})
            health = wait_for_health(process, f"http://127.0.0.1:{port}")
            assert health is not None and health.status == 200, tail(self.tmp / f"{name}.log")
        for line in WORKERS:
            for node in (1, 2):
                self.start(f"{line}{node}", line)
        conf = self.tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user="user root;" if os.geteuid() == 0 else "",
                tmp=self.tmp,
                auth_port=self.auth_port,
                user_port=self.user_port,
                **self.ports,
            )
        )
        nginx = subprocess.Popen(
            [nginx_binary(), "-p", str(self.tmp), "-c", str(conf), "-e",
             str(self.tmp / "nginx-error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.processes["nginx"] = (nginx, "")
        for port in (self.auth_port, self.user_port):
            assert poll(lambda p=port: _health(p), bool, timeout=20), "nginx did not come up"

    def kill(self, name: str) -> None:
        """SIGKILL a node and everything it started: a machine gone at once."""
        process, marker = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        for pid in processes_with_marker(marker):
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for process, _marker in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, marker in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            for pid in processes_with_marker(marker) if marker else ():
                os.kill(pid, signal.SIGKILL)


def _health(port: int) -> bool:
    try:
        return call("GET", f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path, procfile):
    check_redis()
    private, public = write_test_keys(tmp_path)
    with (
        fresh_postgres_database("nodes_auth") as auth_db,
        fresh_postgres_database("nodes_user") as user_db,
        fresh_vhost("nodes") as amqp_url,
    ):
        prefix = f"test:nodes:{run_id()}:"
        env = {k: v for k, v in os.environ.items() if k not in ("APP", "PORT", "DATABASE_URL")}
        env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            AUTH_DATABASE_URL=auth_db,
            USER_DATABASE_URL=user_db,
            RABBITMQ_URL=amqp_url,
            REDIS_URL=REDIS_URL,
            AUTH_REDIS_KEY_PREFIX=prefix,
            RATELIMIT_KEY_PREFIX=prefix + "limiter",
            RATELIMIT_AUTH="10000/minute",
            PRIVATE_KEY_PATH=str(private),
            PUBLIC_KEY_PATH=str(public),
            BCRYPT_ROUNDS="4",
            WEB_CONCURRENCY="1",
            WEB_THREADS="4",
            TRUSTED_PROXY_COUNT="1",
            EMAIL_VERIFICATION="off",
            LOG_FORMAT="text",
            LOG_LEVEL="warning",
        )
        migrate("auth", env)
        migrate("user", env)
        nodes = Cluster(tmp_path, procfile, env)
        try:
            nodes.start_all()
            yield nodes
        finally:
            nodes.stop()


def post(port: int, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw) if raw.strip() else {}
    except ValueError:
        return response.status, {}  # nginx's own 502 page


def register(port: int, name: str) -> tuple[int, dict]:
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    return post(port, "/api/v1/auth/register", body)


def test_two_of_everything_behind_nginx_deliver_once_and_survive_a_node(cluster):
    auth, user = cluster.auth_port, cluster.user_port
    auth_url, user_url = f"http://127.0.0.1:{auth}", f"http://127.0.0.1:{user}"

    # The story, through the load balancer.
    status, ada = register(auth, f"ada{uuid.uuid4().hex[:6]}")
    assert status == 201, ada
    status, pair = post(auth, "/api/v1/auth/login", {"email": ada["email"], "password": PASSWORD})
    assert status == 200, pair
    me = poll(
        lambda: call("GET", f"{user_url}/api/v1/users/me", token=pair["access_token"]),
        lambda a: a.status == 200 and a.json["email"] == ada["email"],
    )
    assert me.status == 200
    sessions = call("GET", f"{auth_url}/api/v1/auth/sessions", token=pair["access_token"]).json
    assert sessions[0]["ip"] == "127.0.0.1"  # the client nginx saw, one hop from the right
    assert post(auth, "/api/v1/auth/logout", {}, pair["access_token"])[0] == 204
    refused = poll(
        lambda: call("GET", f"{user_url}/api/v1/users/me", token=pair["access_token"]),
        lambda a: a.status == 401,
    )
    assert refused.status == 401

    # Load through the balancer, and one auth node killed in the middle of it.
    statuses: list[int] = []
    names: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            name = f"n{uuid.uuid4().hex[:10]}"
            status, _body = register(auth, name)
            statuses.append(status)
            if status == 201:
                names.append(name)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    before_kill = len(statuses)
    cluster.kill("auth1")
    time.sleep(5)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    tally = Counter(statuses)
    failed = sum(count for status, count in tally.items() if status != 201)
    # At most what the killed node had in flight: one request per client thread.
    assert failed <= len(threads), tally
    assert set(tally) <= {201, 502}, tally
    after_kill = len(statuses) - before_kill

    # Every account the auth service holds reaches the user service exactly once:
    # each that answered 201, and any a killed request committed before its node
    # died (its client saw a 502, not knowing; at most one per such request).
    auth_engine = create_engine(cluster.env["AUTH_DATABASE_URL"])
    try:
        with auth_engine.connect() as connection:
            expected = connection.execute(text("SELECT count(*) FROM users")).scalar()
    finally:
        auth_engine.dispose()
    answered_201 = len(names) + 1  # and ada
    assert answered_201 <= expected <= answered_201 + failed
    engine = create_engine(cluster.env["USER_DATABASE_URL"])
    try:

        def profiles() -> int:
            with engine.connect() as connection:
                return connection.execute(select(func.count()).select_from(users.Profile)).scalar()

        assert poll(profiles, lambda n: n >= expected, timeout=60) == expected
        with engine.connect() as connection:
            answers = connection.execute(
                text("SELECT body FROM outbox WHERE routing_key = 'user.created'")
            ).scalars()
            answered = Counter(json.loads(body)["data"]["user_id"] for body in answers)
            duplicates = connection.execute(
                text("SELECT count(*) - count(DISTINCT message_id) FROM processed_messages")
            ).scalar()
    finally:
        engine.dispose()
    assert len(answered) == expected and set(answered.values()) == {1}
    assert duplicates == 0
    auth_engine = create_engine(cluster.env["AUTH_DATABASE_URL"])
    try:
        provisioned = poll(lambda: _provisioned(auth_engine), lambda n: n >= expected, timeout=60)
    finally:
        auth_engine.dispose()
    assert provisioned == expected
    print(
        f"\nmany nodes: {before_kill} registrations before auth1 was killed, {after_kill} after "
        f"({dict(tally)}); {failed} failed (at most the {len(threads)} in flight); "
        f"{expected} profiles, each user.created once, every account provisioned"
    )


def _provisioned(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT count(*) FROM users WHERE provisioned_at IS NOT NULL")
        ).scalar()
