"""One rotation reaches every auth node: two real nodes on one database key store.

Two auth nodes run the Procfile's ``auth`` line under gunicorn (two workers
each) on free ports, with ``KEY_STORE=database`` on one fresh PostgreSQL
database; the user service runs its ``user`` line and verifies through
``AUTH_JWKS_URL`` (node A's JWKS). The operator's ``keys rotate`` then
reaches both nodes: both publish the same JWKS with the new key before either
signs with it, both sign with it within seconds, tokens of the old key keep
working at both services, and the user service accepts the new key's tokens
although it fetched the key set moments before. The timeline is printed
(``pytest -s``).
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ROOT
from tests.e2e.client import call
from tests.e2e.processes import MARKER, free_port, tail
from tests.support.servers import fresh_postgres_database, run_id
from tests.test_web_line import BIN, migrate, start_line, stop, wait_for_health, web_environ

pytestmark = pytest.mark.slow

PASSWORD = "rotating-Keys-4-nodes"
# How long both nodes may take to sign with the new key: its activation
# (KEY_CHECK_INTERVAL_SECONDS, 2 by default, plus 3) and some slack.
SWITCH_TIMEOUT = 15.0


@dataclass
class Web:
    """One web process of the test: its base URL, process and log."""

    name: str
    base: str
    process: subprocess.Popen
    log: Path
    marker: str


@dataclass
class Timeline:
    """Seconds after the rotation (its key's ``created_at``) at which each thing was first seen."""

    events: dict[str, float] = field(default_factory=dict)

    def saw(self, what: str, at: float) -> None:
        self.events.setdefault(what, at)

    def show(self, header: str) -> str:
        lines = [header]
        lines += [
            f"  t={at:+6.2f}s  {what}"
            for what, at in sorted(self.events.items(), key=lambda e: e[1])
        ]
        return "\n".join(lines)


def start(stack: ExitStack, procfile: dict, line: str, env: dict, name: str, tmp: Path) -> Web:
    """Start a Procfile line under a marker of its own (stopping one never touches another)."""
    marker = run_id()
    env = {**env, MARKER: marker}
    port = free_port()
    env["AUTH_BIND" if line == "auth" else "USER_BIND"] = f"127.0.0.1:{port}"
    log = tmp / f"{name}.log"
    web = Web(name, f"http://127.0.0.1:{port}", start_line(procfile[line], env, log), log, marker)
    stack.callback(lambda: stop(web.process, web.marker))
    return web


def login(node: Web, email: str) -> str:
    answer = call(
        "POST", f"{node.base}/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert answer.status == 200, (node.name, answer.json)
    return answer.json["access_token"]


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def kids(key_set: dict) -> list[str]:
    return [key["kid"] for key in key_set["keys"]]


def jwks(node: Web) -> dict:
    answer = call("GET", f"{node.base}/.well-known/jwks.json")
    assert answer.status == 200, (node.name, answer.status)
    return answer.json


def test_a_rotation_reaches_both_auth_nodes_and_the_user_service(tmp_path, procfile):
    env = web_environ(tmp_path, run_id())
    env.update(
        KEY_STORE="database",
        KEY_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
        RATELIMIT_ENABLED="false",
        WEB_CONCURRENCY="2",
        LOG_LEVEL="warning",
    )
    with fresh_postgres_database("key_rotation") as auth_db, ExitStack() as stack:
        env["AUTH_DATABASE_URL"] = auth_db
        migrate("auth", env)
        migrate("user", env)

        def keys(command: str) -> subprocess.CompletedProcess:
            flask = [str(BIN / "flask"), "--app", "auth_app", "keys", command]
            return subprocess.run(
                flask, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
            )

        generated = keys("generate")
        assert generated.returncode == 0, generated.stderr

        node_a = start(stack, procfile, "auth", env, "auth-a", tmp_path)
        node_b = start(stack, procfile, "auth", env, "auth-b", tmp_path)
        user_env = {**env, "AUTH_JWKS_URL": f"{node_a.base}/.well-known/jwks.json"}
        user = start(stack, procfile, "user", user_env, "user", tmp_path)
        for web in (node_a, node_b, user):
            health = wait_for_health(web.process, web.base)
            assert health is not None and health.status == 200, tail(web.log)

        name = f"rot_{uuid.uuid4().hex[:8]}"
        email = f"{name}@example.com"
        body = {"email": email, "username": name, "password": PASSWORD}
        assert call("POST", f"{node_a.base}/api/v1/auth/register", json=body).status == 201
        old_tokens = {node.name: login(node, email) for node in (node_a, node_b)}
        [first] = {kid_of(token) for token in old_tokens.values()}
        assert jwks(node_a) == jwks(node_b)
        # The user service fetches the key set now, moments before the rotation.
        for token in old_tokens.values():
            assert call("GET", f"{user.base}/api/v1/users/me", token=token).status == 200

        rotated = keys("rotate")
        returned = time.time()
        assert rotated.returncode == 0, rotated.stderr
        engine = create_engine(auth_db)
        with engine.connect() as connection:
            second, rotated_at = connection.execute(
                text("SELECT kid, created_at FROM signing_keys WHERE active")
            ).one()
        engine.dispose()
        assert rotated.stdout.startswith(f"Rotated signing key {first} -> {second}.")
        t0 = rotated_at.timestamp()
        timeline = Timeline({f"keys rotate committed ({first[:8]}... -> {second[:8]}...)": 0.0})
        timeline.saw("keys rotate command returned", returned - t0)

        new_tokens: dict[str, str] = {}
        matched: float | None = None
        deadline = time.monotonic() + SWITCH_TIMEOUT
        while len(new_tokens) < 2 and time.monotonic() < deadline:
            sets = [jwks(node_a), jwks(node_b)]
            if matched is None and sets[0] == sets[1] and second in kids(sets[0]):
                matched = time.time() - t0
                timeline.saw("both nodes publish the same JWKS, with the new key", matched)
            for node in (node_a, node_b):
                token = login(node, email)
                assert kid_of(token) in (first, second)
                if kid_of(token) == second and node.name not in new_tokens:
                    # Signing begins only once every node publishes the key.
                    assert matched is not None, timeline.show(f"{node.name} signed too early:")
                    timeline.saw(f"{node.name} first signs with the new key", time.time() - t0)
                    new_tokens[node.name] = token
            time.sleep(0.1)
        assert set(new_tokens) == {"auth-a", "auth-b"}, timeline.show("timeline so far:")

        final = jwks(node_a)
        assert final == jwks(node_b)
        assert kids(final) == [first, second]
        for node in (node_a, node_b):
            for token in (*old_tokens.values(), *new_tokens.values()):
                answer = call("GET", f"{node.base}/api/v1/auth/me", token=token)
                assert answer.status == 200, (node.name, answer.json)
        for token in old_tokens.values():
            assert call("GET", f"{user.base}/api/v1/users/me", token=token).status == 200
        for token in new_tokens.values():
            answer = call("GET", f"{user.base}/api/v1/users/me", token=token)
            assert answer.status == 200, answer.json
        timeline.saw("the user service accepts both nodes' new tokens", time.time() - t0)
        print(
            "\n" + timeline.show("key rotation timeline (KEY_CHECK_INTERVAL_SECONDS=2, default):")
        )
