"""The PostgreSQL primary dies under load and its standby is promoted: the services follow.

Both services' databases live on a primary and a synchronous streaming standby
the test starts (``tests/support/postgres_pair.py``), and every process names
them with one multi-host URL (``postgresql://postgres@h:p1,h:p2/db``). The auth
app (its test client) takes registrations from three threads; the relays and
consumers run as real processes. The primary is stopped at once, as a crash
would; a second later the standby is promoted, as a failover manager would.

Meanwhile registration answers 503, never 500. Afterwards registrations succeed
on the new primary, every one answered 201 has its account there and its
profile at the user service, ``user.created`` is answered once per account,
and the relays listen (``LISTEN``) on the new primary again: a registration
reaches the user service in well under the relays' 5-second poll.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from auth_app.models import User
from common.events import AUTH_QUEUE, USER_QUEUE
from tests.integration.system import PASSWORD, System, fresh_system, wait_until
from tests.integration.test_worker_faults import start_all
from tests.support.broker import queue_depth
from tests.support.postgres_pair import postgres_pair
from user_app.models import Profile
from workers.broker import dead_letter_queue

pytestmark = pytest.mark.slow

#: How long the database has no primary: a failover manager noticing and promoting.
NO_PRIMARY_SECONDS = 1.0


class Registrations:
    """Threads registering new users until stopped; every answer kept with its time."""

    def __init__(self, system: System, threads: int = 3) -> None:
        self.system = system
        self.answers: list[tuple[float, int, str | None, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Registrations:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            name = f"u{uuid.uuid4().hex[:12]}"
            response = self.system.auth.post(
                "/api/v1/auth/register",
                json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
            )
            body = response.get_json() or {}
            user_id = body.get("id") if response.status_code == 201 else None
            self.answers.append(
                (time.monotonic(), response.status_code, user_id, body.get("message", ""))
            )

    def created(self, after: float = 0.0) -> list[str]:
        """The ids of the users answered 201 (after ``after``, when given)."""
        return [user_id for at, status, user_id, _ in self.answers if status == 201 and at > after]


def ids(system: System, engine_of: str, model: type) -> set[str]:
    engine = system.auth_engine if engine_of == "auth" else system.user_engine
    with Session(engine) as session:
        return set(session.scalars(select(model.id)))


def listening(pair) -> dict[str, int]:
    """Sessions waiting on LISTEN at the new primary (the promoted standby), by database."""
    rows = pair.execute(
        pair.standby_port,
        "SELECT datname, count(*) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN %' GROUP BY datname",
    )
    return {name: count for name, count in rows[0]}


def seconds_to_profile(system: System) -> float:
    """Register one user; seconds until the user service has its profile."""
    started = time.monotonic()
    user_id = system.register()["id"]
    assert wait_until(lambda: system.profile(user_id) is not None, timeout=20, interval=0.01)
    return time.monotonic() - started


def test_a_primary_failover_under_load_answers_503_meanwhile_and_loses_nothing(tmp_path, capsys):
    timeline: list[str] = []
    began = time.monotonic()

    def note(line: str) -> None:
        timeline.append(f"{time.monotonic() - began:6.1f}s  {line}")

    with postgres_pair() as pair:
        urls = (pair.create_database("failover_auth"), pair.create_database("failover_user"))
        note(f"primary :{pair.primary_port} with synchronous standby :{pair.standby_port}")
        with fresh_system("pg_failover", tmp_path, database_urls=urls) as system:
            processes = start_all(system)
            with Registrations(system) as load:
                assert wait_until(lambda: system.profile_count() >= 100, timeout=90), (
                    "the pipeline did not start"
                )
                pair.stop_primary()
                note(f"primary stopped (immediate); {len(load.created())} registrations so far")
                time.sleep(NO_PRIMARY_SECONDS)
                pair.promote_standby()
                promoted_at = time.monotonic()
                note("standby promoted")
                assert wait_until(lambda: len(load.created(promoted_at)) >= 100, timeout=60), (
                    "registrations did not resume on the new primary"
                )
            statuses = Counter(status for _, status, _, _ in load.answers)
            refused = [(at, message) for at, status, _, message in load.answers if status == 503]
            first_201 = min(
                at for at, status, _, _ in load.answers if status == 201 and at > promoted_at
            )
            assert set(statuses) <= {201, 503}, f"answers other than 201 and 503: {statuses}"
            assert refused, "no request met the switch"
            assert all(message for _, message in refused)
            note(
                f"{len(refused)} registrations answered 503, the last at "
                f"{max(at for at, _ in refused) - began:.1f}s; first 201 after the promotion at "
                f"{first_201 - began:.1f}s; no other status"
            )

            created = set(load.created())
            assert created <= ids(system, "auth", User), "an account answered 201 is gone"
            assert wait_until(lambda: created <= ids(system, "user", Profile), timeout=60), (
                f"profiles missing: {len(created - ids(system, 'user', Profile))}"
            )
            accounts = ids(system, "auth", User)
            assert wait_until(lambda: system.provisioned_count() == len(accounts), timeout=60)
            answers = system.user_created_answers()
            assert len(answers) == len(set(answers)), "a user.created answered twice"
            assert set(answers) == accounts
            note(
                f"{len(created)} registrations answered 201: every account on the new primary, "
                f"every profile at the user service, user.created once each "
                f"({len(accounts) - len(created)} answered 503 yet committed, also complete)"
            )

            assert wait_until(
                lambda: {"failover_auth", "failover_user"} <= set(listening(pair)), timeout=30
            ), f"a relay does not LISTEN on the new primary: {listening(pair)}"
            latencies = [seconds_to_profile(system) for _ in range(5)]
            assert max(latencies) < 2.0, f"registration to profile: {latencies} (polling?)"
            note(
                "both relays LISTEN on the new primary; registration to profile in "
                + ", ".join(f"{latency * 1000:.0f}" for latency in latencies)
                + " ms"
            )
            for queue in (USER_QUEUE, AUTH_QUEUE):
                assert queue_depth(system.amqp_url, dead_letter_queue(queue)) == 0
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited"
            note("lost: nothing; dead-lettered: 0; every process still running")
    with capsys.disabled():
        print("\ndatabase failover timeline:\n" + "\n".join(timeline))
