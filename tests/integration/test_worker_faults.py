"""Fault tests: broker restart, killed consumer, unreachable database.

The relays and workers run here as real processes (``python -m workers...``),
as the Procfile runs them. Each test counts what was sent, what was applied,
how many were applied twice and how many were dead-lettered.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.events import USER_QUEUE
from tests.integration.system import System, fresh_system, wait_until
from tests.support.broker import queue_depth
from tests.support.servers import (
    allow_connections,
)
from user_app.models import ProcessedMessage
from workers.broker import dead_letter_queue

pytestmark = pytest.mark.slow


@pytest.fixture
def system(tmp_path):
    with fresh_system("faults", tmp_path) as system:
        yield system


def start_all(system: System) -> dict[str, subprocess.Popen]:
    return {
        "auth_relay": system.spawn("workers.relay", "auth"),
        "user_relay": system.spawn("workers.relay", "user"),
        "user_worker": system.spawn("workers.user_worker"),
        "auth_worker": system.spawn("workers.auth_worker"),
    }


def register_many(system: System, count: int, workers: int = 4) -> list[str]:
    with ThreadPoolExecutor(workers) as pool:
        return [user["id"] for user in pool.map(lambda _: system.register(), range(count))]


def processed_count(system: System) -> int:
    with Session(system.user_engine) as session:
        return session.scalar(select(func.count()).select_from(ProcessedMessage))


def assert_exactly_once(system: System, user_ids: list[str]) -> None:
    """Every user has one profile, one user.created answer, and the account is provisioned."""
    count = len(user_ids)
    assert wait_until(lambda: system.profile_count() == count, timeout=180), (
        f"profiles: {system.profile_count()} of {count}"
    )
    assert wait_until(lambda: system.provisioned_count() == count, timeout=180), (
        f"provisioned: {system.provisioned_count()} of {count}"
    )
    answers = system.user_created_answers()
    assert sorted(answers) == sorted(user_ids), "a user.created answer is missing or doubled"
    assert processed_count(system) == count
    assert queue_depth(system.amqp_url, dead_letter_queue(USER_QUEUE)) == 0


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=120, capture_output=True)


def test_a_broker_restart_while_1000_users_register_loses_and_doubles_nothing(system):
    start_all(system)
    registered: list[str] = []
    done = threading.Event()

    def load():
        try:
            registered.extend(register_many(system, 1000))
        finally:
            done.set()

    loader = threading.Thread(target=load)
    loader.start()
    wait_until(lambda: system.profile_count() >= 150, timeout=60)
    try:
        rabbitmqctl("stop_app")
        time.sleep(2)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    loader.join(timeout=300)
    assert done.is_set() and len(registered) == 1000
    assert_exactly_once(system, registered)


def test_a_consumer_killed_mid_stream_and_restarted_applies_every_message_once(system):
    user_ids = register_many(system, 400)  # all 400 syncs wait in the auth outbox
    processes = start_all(system)
    assert wait_until(lambda: processed_count(system) >= 50, timeout=60)
    processes["user_worker"].send_signal(signal.SIGKILL)
    processes["user_worker"].wait(timeout=10)
    killed_at = processed_count(system)
    assert killed_at < 400, "the consumer finished before it could be killed"
    system.spawn("workers.user_worker")
    assert_exactly_once(system, user_ids)


def test_sigterm_stops_a_worker_with_exit_code_0_within_10_seconds(system):
    processes = start_all(system)
    user_ids = register_many(system, 20)
    assert_exactly_once(system, user_ids)
    started = time.monotonic()
    for process in processes.values():
        process.send_signal(signal.SIGTERM)
    for name, process in processes.items():
        assert process.wait(timeout=10) == 0, name
    assert time.monotonic() - started < 10


def test_the_user_database_unreachable_under_load_loses_nothing(system):
    start_all(system)
    registered: list[str] = []
    loader = threading.Thread(target=lambda: registered.extend(register_many(system, 300)))
    loader.start()
    wait_until(lambda: system.profile_count() >= 50, timeout=60)
    try:
        allow_connections(system.user_url, False)
        time.sleep(3)
    finally:
        allow_connections(system.user_url, True)
    loader.join(timeout=120)
    assert len(registered) == 300
    assert_exactly_once(system, registered)
