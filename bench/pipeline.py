"""The event pipeline: draining a full outbox, and one registration's way to a profile."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from auth_app.models import OutboxEvent as AuthOutbox
from bench.system import PASSWORD, BenchError
from common.db import utcnow
from common.events import USER_SYNC
from common.outbox import OutboxModel, emit
from user_app.models import Profile


def created_sync(user_id: str, now: datetime, prefix: str = "b") -> dict:
    """The data of a ``user.sync`` ``created`` event for a new user ``user_id``."""
    name = prefix + user_id.replace("-", "")[:20]
    return {
        "user_id": user_id,
        "action": "created",
        "email": f"{name}@example.com",
        "username": name,
        "roles": ["user"],
        "is_active": True,
        "created_at": now,
    }


def fill_outbox(engine: Engine, count: int) -> list[str]:
    """Write ``count`` ``user.sync`` created events to the auth outbox in one transaction.

    Committing once makes every row visible to the relay at the same instant,
    as if they had been waiting there. Returns the user ids.
    """
    ids = [str(uuid.uuid4()) for _ in range(count)]
    now = utcnow()
    with Session(engine) as session, session.begin():
        for user_id in ids:
            emit(session, AuthOutbox, USER_SYNC, created_sync(user_id, now))
    return ids


def count_profiles(engine: Engine) -> int:
    """How many profiles the user database holds."""
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Profile)) or 0


def has_profile(engine: Engine, user_id: str) -> bool:
    """Whether the user database holds ``user_id``'s profile."""
    with Session(engine) as session:
        return session.get(Profile, user_id) is not None


def count_unpublished(engine: Engine, model: OutboxModel = AuthOutbox) -> int:
    """How many rows of an outbox (the auth service's unless told) wait for their relay."""
    with Session(engine) as session:
        return (
            session.scalar(
                select(func.count()).select_from(model).where(model.published_at.is_(None))
            )
            or 0
        )


def wait_for_outbox(engine: Engine, model: OutboxModel, timeout: float = 600.0) -> None:
    """Wait until every row of an outbox is published."""
    deadline = time.monotonic() + timeout
    while count_unpublished(engine, model):
        if time.monotonic() > deadline:
            raise BenchError(f"{model.__tablename__} not published within {timeout:.0f}s")
        time.sleep(0.05)


def wait_for_profile(engine: Engine, user_id: str, timeout: float) -> None:
    """Wait until the user worker has created ``user_id``'s profile."""
    deadline = time.monotonic() + timeout
    while True:
        if has_profile(engine, user_id):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"no profile for a registration after {timeout:.0f}s: is the loop up?")
        time.sleep(0.05)


@dataclass(frozen=True)
class Drain:
    """One drain of ``count`` rows: when the relay finished, when the last profile existed."""

    count: int
    published_s: float
    profiles_s: float

    @property
    def rate(self) -> float:
        """End-to-end messages per second."""
        return self.count / self.profiles_s

    def to_dict(self) -> dict:
        """JSON-ready figures."""
        return {
            "count": self.count,
            "relay_done_s": round(self.published_s, 3),
            "profiles_done_s": round(self.profiles_s, 3),
            "rate": round(self.rate, 1),
            "relay_rate": round(self.count / self.published_s, 1),
        }


def drain(
    auth_engine: Engine,
    user_engine: Engine,
    count: int,
    timeout: float = 600.0,
    filled: Callable[[], object] = lambda: None,
) -> Drain:
    """Fill the outbox with ``count`` rows (relay and user worker running) and time the drain.

    ``filled`` is called once the rows are committed, as the timing starts.
    """
    before = count_profiles(user_engine)
    last = fill_outbox(auth_engine, count)[-1]
    filled()
    started = time.perf_counter()
    published_s = None
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if published_s is None and count_unpublished(auth_engine) == 0:
            published_s = time.perf_counter() - started
        # The rows go out and apply in order: the last one's profile is looked
        # up by key, and only then all are counted (a count of a big table every
        # 50 ms would cost the database more than the drain it measures).
        if has_profile(user_engine, last) and count_profiles(user_engine) - before >= count:
            elapsed = time.perf_counter() - started
            return Drain(count, published_s or elapsed, elapsed)
        time.sleep(0.05)
    raise BenchError(f"the pipeline did not drain {count} rows in {timeout:.0f}s")


def _post_json(connection: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, dict]:
    connection.request(
        "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def register_latencies(
    auth_base: str, user_engine: Engine, auth_engine: Engine, samples: int, timeout: float = 10.0
) -> tuple[list[float], list[float]]:
    """Register ``samples`` users one at a time; per user, the seconds from the 201 until

    the profile exists at the user service, and until the auth service has its
    ``provisioned_at`` (the whole loop back). Polled every millisecond over one
    connection per database.
    """
    parts = urlsplit(auth_base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    to_profile: list[float] = []
    to_provisioned: list[float] = []
    profile_query = text("SELECT 1 FROM profiles WHERE id = :id")
    provisioned_query = text("SELECT provisioned_at IS NOT NULL FROM users WHERE id = :id")
    with user_engine.connect() as user_db, auth_engine.connect() as auth_db:
        user_db.execution_options(isolation_level="AUTOCOMMIT")
        auth_db.execution_options(isolation_level="AUTOCOMMIT")
        for _ in range(samples):
            name = "r" + uuid.uuid4().hex[:16]
            status, body = _post_json(
                connection,
                "/api/v1/auth/register",
                {"email": f"{name}@example.com", "username": name, "password": PASSWORD},
            )
            if status != 201:
                raise BenchError(f"register answered {status}: {body}")
            started = time.perf_counter()
            deadline = started + timeout
            while user_db.execute(profile_query, {"id": body["id"]}).first() is None:
                if time.perf_counter() > deadline:
                    raise BenchError("a registration never reached the user service")
                time.sleep(0.001)
            to_profile.append(time.perf_counter() - started)
            while not auth_db.execute(provisioned_query, {"id": body["id"]}).scalar():
                if time.perf_counter() > deadline:
                    raise BenchError("a registration was never marked provisioned")
                time.sleep(0.001)
            to_provisioned.append(time.perf_counter() - started)
    connection.close()
    return to_profile, to_provisioned


def login(auth_base: str, email: str) -> dict:
    """A token pair for ``email`` (asserts success)."""
    parts = urlsplit(auth_base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        status, body = _post_json(
            connection, "/api/v1/auth/login", {"email": email, "password": PASSWORD}
        )
    finally:
        connection.close()
    if status != 200:
        raise BenchError(f"login answered {status}: {body}")
    return body


def register(auth_base: str, name: str) -> dict:
    """Register ``name`` (asserts 201); returns the user object."""
    parts = urlsplit(auth_base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        status, body = _post_json(
            connection,
            "/api/v1/auth/register",
            {"email": f"{name}@example.com", "username": name, "password": PASSWORD},
        )
    finally:
        connection.close()
    if status != 201:
        raise BenchError(f"register answered {status}: {body}")
    return body


def _status(connection: http.client.HTTPConnection, method: str, path: str, token: str) -> int:
    connection.request(method, path, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    response.read()
    return response.status


def logout_latencies(
    auth_base: str, user_base: str, email: str, samples: int, timeout: float = 10.0
) -> list[float]:
    """Log in and out ``samples`` times; per logout, the seconds from its 204 until the
    user service refuses the logged-out token (its ``session_revoked`` consumed).

    Polled every millisecond over one kept-alive connection.
    """
    auth_parts, user_parts = urlsplit(auth_base), urlsplit(user_base)
    auth = http.client.HTTPConnection(auth_parts.hostname, auth_parts.port, timeout=30)
    user = http.client.HTTPConnection(user_parts.hostname, user_parts.port, timeout=30)
    latencies: list[float] = []
    try:
        for _ in range(samples):
            status, pair = _post_json(
                auth, "/api/v1/auth/login", {"email": email, "password": PASSWORD}
            )
            if status != 200:
                raise BenchError(f"login answered {status}: {pair}")
            token = pair["access_token"]
            if _status(user, "GET", "/api/v1/users/me", token) != 200:
                raise BenchError("a fresh token was refused at the user service")
            if (answer := _status(auth, "POST", "/api/v1/auth/logout", token)) != 204:
                raise BenchError(f"logout answered {answer}")
            started = time.perf_counter()
            while _status(user, "GET", "/api/v1/users/me", token) != 401:
                if time.perf_counter() - started > timeout:
                    raise BenchError("a logout never reached the user service")
                time.sleep(0.001)
            latencies.append(time.perf_counter() - started)
    finally:
        auth.close()
        user.close()
    return latencies
