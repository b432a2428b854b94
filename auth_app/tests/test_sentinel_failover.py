"""A Redis Sentinel failover under traffic: 503s while it lasts, never a 500, no revocation lost.

A primary, a replica and three sentinels (quorum 2, a primary is down after
one second without an answer), each a redis-server of this test on a spare
loopback port; the auth service on a fresh PostgreSQL database, pointed at
them by ``REDIS_SENTINELS`` as an operator would. Threads log in, refresh,
read ``/me`` with a live token, probe revoked tokens and ask for readiness
the whole time. Right before the fault the replica is cut off from the
primary and tokens are revoked every way there is: revocations the replica
never receives. Then the primary is SIGKILLed, the sentinels promote the
replica, and the service must answer 503 meanwhile (never 500, never a
revoked token let through), refill the promoted replica from the database
before it answers a token check, and answer every request again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt
import pytest

from auth_app.tests.conftest import PASSWORD, Accounts, bearer
from tests.support.servers import RedisSentinelGroup, fresh_postgres_database

pytestmark = pytest.mark.slow

ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
# What each kind of request may answer at any moment, the failover included.
ALLOWED = {
    "login": {200, 503},
    "refresh": {200, 503},
    "me (live token)": {200, 503},
    "me (revoked tokens)": {401, 503},
    "ready": {200, 503},
}
# The answer each kind gives once Redis is back.
HEALTHY = {name: 401 if "revoked" in name else 200 for name in ALLOWED}
RECOVERED_AFTER = 5  # healthy answers in a row, per kind, after the new primary is named


@dataclass
class Traffic:
    """Requests of every kind in threads, each answer recorded with its time."""

    app: object
    started: float = field(default_factory=time.monotonic)
    answers: list[tuple[float, str, int]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self, name: str, request: Callable[[object], int]) -> None:
        def loop() -> None:
            client = self.app.test_client()  # type: ignore[attr-defined]
            while not self.stopping.is_set():
                status = request(client)
                self.answers.append((time.monotonic() - self.started, name, status))
                time.sleep(0.02)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def now(self) -> float:
        return time.monotonic() - self.started

    def wrong(self) -> list[tuple[float, str, int]]:
        """Every answer its kind may never give (a 500, a revoked token let through, ...)."""
        return [answer for answer in list(self.answers) if answer[2] not in ALLOWED[answer[1]]]

    def recovered_since(self, moment: float) -> bool:
        """Whether every kind has answered healthy RECOVERED_AFTER times in a row since then."""
        for name, healthy in HEALTHY.items():
            recent = [status for at, kind, status in self.answers if kind == name and at > moment]
            tail = recent[-RECOVERED_AFTER:]
            if len(tail) < RECOVERED_AFTER or any(status != healthy for status in tail):
                return False
        return True


@pytest.fixture
def deployment(tmp_path):
    group = RedisSentinelGroup(tmp_path)
    group.start()
    yield group
    group.stop()


@pytest.fixture
def postgres_url():
    with fresh_postgres_database("auth_sentinel") as url:
        yield url


def jti_of(tokens: dict) -> str:
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})["jti"]


def revoke_every_way(client, accounts: Accounts) -> list[dict]:
    """Tokens revoked by a logout, a logout-all and a replayed refresh token."""
    _, logged_out = accounts.register_and_login()
    assert (
        client.post("/api/v1/auth/logout", headers=bearer(logged_out["access_token"])).status_code
        == 204
    )
    _, all_out = accounts.register_and_login()
    assert (
        client.post("/api/v1/auth/logout-all", headers=bearer(all_out["access_token"])).status_code
        == 204
    )
    _, replayed = accounts.register_and_login()
    assert (
        client.post(REFRESH, json={"refresh_token": replayed["refresh_token"]}).status_code == 200
    )
    assert (
        client.post(REFRESH, json={"refresh_token": replayed["refresh_token"]}).status_code == 401
    )
    return [logged_out, all_out, replayed]


def test_a_failover_answers_503_while_it_lasts_and_lets_no_revoked_token_back(
    make_app, deployment, postgres_url, monkeypatch, capsys
):
    for name, value in deployment.environment().items():
        monkeypatch.setenv(name, value)
    app = make_app(
        DATABASE_URL=postgres_url,
        RATELIMIT_ENABLED=True,
        RATELIMIT_AUTH="100000/minute",
        REFRESH_REUSE_GRACE_SECONDS=0,
        LOG_LEVEL="critical",
    )
    client = app.test_client()
    accounts = Accounts(client)
    prefix = app.extensions["settings"].redis_key_prefix
    traffic_user = accounts.register()
    _, live = accounts.register_and_login()
    _, refreshing = accounts.register_and_login()
    revoked = revoke_every_way(client, accounts)  # before the fault: replicated
    refresh_token = [refreshing["refresh_token"]]

    def login(c) -> int:
        body = {"email": traffic_user["email"], "password": PASSWORD}
        return c.post(LOGIN, json=body).status_code

    def refresh(c) -> int:
        response = c.post(REFRESH, json={"refresh_token": refresh_token[0]})
        if response.status_code == 200:
            refresh_token[0] = response.json["refresh_token"]
        return response.status_code

    probe = [0]

    def revoked_token(c) -> int:
        probe[0] += 1
        tokens = revoked[probe[0] % len(revoked)]
        return c.get(ME, headers=bearer(tokens["access_token"])).status_code

    traffic = Traffic(app)
    traffic.run("login", login)
    traffic.run("refresh", refresh)
    traffic.run(
        "me (live token)", lambda c: c.get(ME, headers=bearer(live["access_token"])).status_code
    )
    traffic.run("me (revoked tokens)", revoked_token)
    traffic.run("ready", lambda c: c.get("/health/ready").status_code)
    try:
        time.sleep(1.0)
        old = deployment.primary()
        replica = next(node for node in deployment.nodes if node is not old)

        # Writes the replica never receives: revocations right before the fault.
        deployment.cut_replication()
        missed = revoke_every_way(client, accounts)
        missed_jti = f"{prefix}revoked:jti:{jti_of(missed[0])}"
        assert old.client().exists(missed_jti) == 1
        assert replica.client().exists(missed_jti) == 0
        revoked.extend(missed)

        fault_at = traffic.now()
        old.kill()
        deployment.wait_for_new_primary(old.port)
        promoted_at = traffic.now()
        deadline = time.monotonic() + 30
        while not traffic.recovered_since(promoted_at) and not traffic.wrong():
            assert time.monotonic() < deadline, "the service did not recover within 30 s"
            time.sleep(0.1)
        recovered_at = traffic.now()
    finally:
        traffic.stop()

    assert traffic.wrong() == []

    # Nothing revoked came back: every revoked token, the ones the replica missed
    # included, is refused by the new primary, which was refilled from the database.
    assert deployment.primary() is replica
    for tokens in revoked:
        assert client.get(ME, headers=bearer(tokens["access_token"])).status_code == 401
    assert replica.client().exists(missed_jti) == 1
    assert (
        replica.client().get(f"{prefix}revocations:filled")
        == replica.client().info("server")["run_id"].encode()
    )
    assert client.get(ME, headers=bearer(live["access_token"])).status_code == 200
    assert (
        client.post(LOGIN, json={"email": traffic_user["email"], "password": PASSWORD}).status_code
        == 200
    )

    unavailable = [(at, kind) for at, kind, status in traffic.answers if status == 503]
    by_kind = Counter(kind for _, kind in unavailable)
    with capsys.disabled():
        print("\nRedis Sentinel failover under traffic (seconds since traffic began)")
        print(f"  primary SIGKILLed             {fault_at:6.2f}")
        print(
            f"  sentinels named the replica   {promoted_at:6.2f}  (+{promoted_at - fault_at:.2f})"
        )
        if unavailable:
            first, last = unavailable[0][0], unavailable[-1][0]
            print(f"  first 503                     {first:6.2f}  (+{first - fault_at:.2f})")
            print(f"  last 503                      {last:6.2f}  (+{last - fault_at:.2f})")
        print(
            f"  every kind healthy again by   {recovered_at:6.2f}  (+{recovered_at - fault_at:.2f})"
        )
        print(
            f"  requests {len(traffic.answers)}, answered 503: {len(unavailable)} {dict(by_kind)}"
        )
        print("  answered 500: 0; revoked tokens accepted: 0")
        print(
            f"  lost: nothing; {len(missed)} revocations the replica never received are refused "
            "by it as the new primary"
        )
