"""The janitor on both services' PostgreSQL databases: old rows go, new ones stay, nothing waits.

``System`` (tests/integration/system.py) gives both apps, their fresh
databases and, for the load test, the relays and consumers in threads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from auth_app import models as auth
from common.db import utcnow
from tests.integration.system import PASSWORD, ROOT, System, fresh_system, wait_until
from user_app import models as users
from workers.janitor import Janitor, auth_sweeps, user_sweeps

WEEK = timedelta(days=7)


@pytest.fixture
def system(tmp_path):
    with fresh_system("janitor", tmp_path) as system:
        yield system


def count(engine, model, *where) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def a_user(system: System) -> str:
    with Session(system.auth_engine) as session, session.begin():
        user = auth.User(
            email=f"{uuid.uuid4().hex[:8]}@example.com",
            username=uuid.uuid4().hex[:8],
            username_key=uuid.uuid4().hex[:8],
            password_hash="x",
            roles=["user"],
        )
        session.add(user)
        session.flush()
        return user.id


def fill_auth(system: System, user_id: str) -> None:
    """Two rows of each kind the auth janitor sweeps: one past its keeping, one not."""
    now = utcnow()
    old, new = now - timedelta(days=400), now
    rows = []
    for age, mark in ((old, "old"), (new, "new")):
        sid = str(uuid.uuid4())
        rows += [
            (
                auth.LoginSession,
                {
                    "id": sid,
                    "user_id": user_id,
                    "created_at": age,
                    "expires_at": age + timedelta(days=90),
                    "last_used_at": age,
                    "amr": ["pwd"],
                },
            ),
            (
                auth.RefreshToken,
                {
                    "token_hash": uuid.uuid4().hex * 2,
                    "session_id": sid,
                    "issued_at": age,
                    "expires_at": age + timedelta(days=30),
                },
            ),
            (
                auth.RevokedToken,
                {"jti": f"{mark}-{uuid.uuid4()}", "expires_at": age + timedelta(minutes=15)},
            ),
            (
                auth.AccountToken,
                {
                    "token_hash": uuid.uuid4().hex * 2,
                    "user_id": user_id,
                    "purpose": f"p-{mark}",
                    "email": "a@example.com",
                    "created_at": age,
                    "expires_at": age + timedelta(minutes=30),
                    "requested": True,
                },
            ),
            (
                auth.MfaChallenge,
                {
                    "token_hash": uuid.uuid4().hex * 2,
                    "user_id": user_id,
                    "password_digest": "x",
                    "created_at": age,
                    "expires_at": age + timedelta(minutes=5),
                    "failures": 0,
                },
            ),
            (
                auth.Mail,
                {
                    "id": str(uuid.uuid4()),
                    "kind": "verify_email",
                    "sender": "a@example.com",
                    "recipient": "b@example.com",
                    "subject": "s",
                    "created_at": age,
                    "next_attempt_at": age,
                    "attempts": 1,
                    "sent_at": age,
                },
            ),
            (auth.SecurityEvent, {"type": "login_failed", "at": age}),
            (
                auth.OutboxEvent,
                {
                    "message_id": str(uuid.uuid4()),
                    "exchange": "user_events",
                    "routing_key": "user.sync",
                    "source": "auth_app",
                    "body": "{}",
                    "created_at": age,
                    "published_at": age,
                    "attempts": 1,
                },
            ),
            (
                auth.ProcessedMessage,
                {
                    "message_id": str(uuid.uuid4()),
                    "message_type": "user.created",
                    "processed_at": age,
                },
            ),
        ]
    with Session(system.auth_engine) as session, session.begin():
        for model, values in rows:
            session.execute(insert(model).values(**values))


def test_each_auth_table_loses_its_old_rows_and_keeps_the_new(system):
    fill_auth(system, a_user(system))
    # A mail not sent yet is never removed, however old.
    with Session(system.auth_engine) as session, session.begin():
        session.add(
            auth.Mail(
                kind="reset_password",
                sender="a@example.com",
                recipient="c@example.com",
                subject="s",
                text_body="t",
                created_at=utcnow() - timedelta(days=400),
                next_attempt_at=utcnow(),
            )
        )
    settings = system.auth_app.extensions["settings"]
    removed = Janitor(
        "auth_janitor", system.auth_engine, auth_sweeps(settings, WEEK), batch_size=1
    ).run_once()
    assert removed == {
        "refresh_tokens": 1,
        "login_sessions": 1,
        "revoked_tokens": 1,
        "account_tokens": 1,
        "mfa_challenges": 1,
        "mails": 1,
        "security_events": 1,
        "outbox": 1,
        "processed_messages": 1,
    }
    for model in (
        auth.LoginSession,
        auth.RefreshToken,
        auth.RevokedToken,
        auth.AccountToken,
        auth.MfaChallenge,
        auth.SecurityEvent,
        auth.OutboxEvent,
        auth.ProcessedMessage,
    ):
        assert count(system.auth_engine, model) == 1, model.__tablename__
    assert count(system.auth_engine, auth.Mail) == 2  # the new one and the unsent one
    # A second run finds nothing more.
    again = Janitor("auth_janitor", system.auth_engine, auth_sweeps(settings, WEEK)).run_once()
    assert set(again.values()) == {0}


def test_a_session_is_kept_while_a_token_of_it_may_live(system):
    user_id = a_user(system)
    now = utcnow()
    with Session(system.auth_engine) as session, session.begin():
        for minutes_ago in (5, 60):  # revoked 5 minutes ago: its tokens may live 10 more
            session.add(
                auth.LoginSession(
                    user_id=user_id,
                    created_at=now - timedelta(days=1),
                    expires_at=now + timedelta(days=89),
                    last_used_at=now - timedelta(days=1),
                    revoked_at=now - timedelta(minutes=minutes_ago),
                    amr=["pwd"],
                )
            )
    settings = system.auth_app.extensions["settings"]
    removed = Janitor("j", system.auth_engine, auth_sweeps(settings, WEEK)).run_once()
    assert removed["login_sessions"] == 1
    (kept,) = Session(system.auth_engine).scalars(select(auth.LoginSession.revoked_at))
    assert now - kept < timedelta(minutes=10)


def test_the_user_janitor_forgets_long_expired_revoked_sessions_and_old_ids(system):
    now = time.time()
    with Session(system.user_engine) as session, session.begin():
        session.add_all(
            [
                users.RevokedSession(
                    session_id=str(uuid.uuid4()), user_id="u", expires_at=now - 3600
                ),
                users.RevokedSession(
                    session_id=str(uuid.uuid4()), user_id="u", expires_at=now + 600
                ),
                users.ProcessedMessage(
                    message_id=str(uuid.uuid4()),
                    message_type="user.sync",
                    processed_at=utcnow() - timedelta(days=8),
                ),
                users.ProcessedMessage(
                    message_id=str(uuid.uuid4()), message_type="user.sync", processed_at=utcnow()
                ),
            ]
        )
    settings = system.user_app.extensions["settings"]
    removed = Janitor("user_janitor", system.user_engine, user_sweeps(settings, WEEK)).run_once()
    assert removed == {"revoked_sessions": 1, "outbox": 0, "processed_messages": 1}
    assert count(system.user_engine, users.RevokedSession) == 1
    assert count(system.user_engine, users.ProcessedMessage) == 1


def test_two_janitors_at_once_share_the_rows_and_remove_each_once(system):
    bulk_old_rows(system, 5_000)
    settings = system.auth_app.extensions["settings"]
    results: list[dict[str, int]] = []

    def sweep() -> None:
        janitor = Janitor("j", system.auth_engine, auth_sweeps(settings, WEEK), batch_size=100)
        results.append(janitor.run_once())

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sum(r["security_events"] for r in results) == 5_000
    assert sum(r["processed_messages"] for r in results) == 5_000
    assert count(system.auth_engine, auth.SecurityEvent) == 0


def bulk_old_rows(system: System, rows: int) -> None:
    """``rows`` old security events and ``rows`` old processed ids, with multi-row inserts."""
    old = utcnow() - timedelta(days=400)
    with system.auth_engine.begin() as connection:
        for start in range(0, rows, 10_000):
            size = min(10_000, rows - start)
            connection.execute(
                insert(auth.SecurityEvent), [{"type": "login_failed", "at": old}] * size
            )
            connection.execute(
                insert(auth.ProcessedMessage),
                [
                    {
                        "message_id": str(uuid.uuid4()),
                        "message_type": "user.created",
                        "processed_at": old,
                    }
                    for _ in range(size)
                ],
            )


@pytest.mark.slow
def test_logins_refreshes_and_consumption_go_on_during_a_purge_of_100000_rows(system, tmp_path):
    rows = 100_000
    bulk_old_rows(system, rows)
    env = {
        **system.environ(),
        "JANITOR_INTERVAL_SECONDS": "3600",
        "JANITOR_BATCH_SIZE": "1000",
        "LOG_LEVEL": "info",
    }
    log = tmp_path / "janitor.log"
    answers: list[int] = []
    registered: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        client = system.auth_app.test_client()
        while not stop.is_set():
            user = system.register()
            registered.append(user["id"])
            login = client.post(
                "/api/v1/auth/login", json={"email": user["email"], "password": PASSWORD}
            )
            answers.append(login.status_code)
            refreshed = client.post(
                "/api/v1/auth/refresh", json={"refresh_token": login.get_json()["refresh_token"]}
            )
            answers.append(refreshed.status_code)

    with ExitStack() as stack:
        system.threads(stack)
        load = threading.Thread(target=traffic)
        load.start()
        time.sleep(1.0)
        started = time.monotonic()
        with open(log, "wb") as out:
            janitor = subprocess.Popen(
                [sys.executable, "-m", "workers.janitor", "auth"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            assert wait_until(lambda: "auth_janitor removed" in log.read_text(), timeout=300), (
                log.read_text()
            )
            purge_seconds = time.monotonic() - started
        finally:
            janitor.send_signal(signal.SIGTERM)
            janitor.wait(timeout=30)
            stop.set()
            load.join(timeout=60)
        # Every registration made meanwhile reached the user service and came back.
        assert wait_until(lambda: system.provisioned_count() == len(registered), timeout=60)
    line = next(line for line in log.read_text().splitlines() if "auth_janitor removed" in line)
    assert f"security_events={rows}" in line and f"processed_messages={rows}" in line
    assert answers and set(answers) == {200}
    assert (
        count(
            system.auth_engine,
            auth.SecurityEvent,
            auth.SecurityEvent.at < utcnow() - timedelta(days=100),
        )
        == 0
    )
    print(
        f"\njanitor: {2 * rows} rows purged in {purge_seconds:.1f}s while {len(answers) // 2} "
        f"logins and as many refreshes answered 200 and {len(registered)} registrations "
        f"were consumed at both services; {line.split('removed', 1)[1].strip()}"
    )
