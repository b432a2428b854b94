"""The auth service's database goes away while its relay runs, then comes back.

The relay runs as the Procfile runs it (``python -m workers.relay auth``).
The database refuses new connections and its open ones are cut
(``ALLOW_CONNECTIONS false`` and ``pg_terminate_backend``), as a failover
or a restart does. Meanwhile registration answers 503 and the relay keeps
running; once the database is back, every outbox row, written before or
after the outage, reaches the queue exactly once, with no restart.
"""

from __future__ import annotations

import json
import signal
import time

import pika
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth_app.models import OutboxEvent
from common.events import USER_QUEUE
from tests.integration.system import PASSWORD, System, fresh_system, wait_until
from tests.support.broker import drain, queue_depth
from tests.support.servers import (
    allow_connections,
    run_id,
)
from workers.broker import declare_queue

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 3.0


@pytest.fixture
def system(tmp_path):
    with fresh_system("relay_outage", tmp_path) as system:
        yield system


def bind_user_queue(system: System) -> None:
    """The user worker's queue, so the relay's messages are routed and kept for counting."""
    connection = pika.BlockingConnection(pika.URLParameters(system.amqp_url))
    try:
        declare_queue(connection.channel(), USER_QUEUE, system.settings())
    finally:
        connection.close()


def pending_rows(system: System) -> int:
    """Outbox rows of the auth service not yet confirmed by the broker."""
    with Session(system.auth_engine) as session:
        return session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        )


def outbox_ids(system: System) -> set[str]:
    with Session(system.auth_engine) as session:
        return set(session.scalars(select(OutboxEvent.message_id)))


def test_the_auth_database_gone_and_back_under_the_relay_publishes_every_row_once(system):
    bind_user_queue(system)
    relay = system.spawn("workers.relay", "auth")
    before = [system.register()["id"] for _ in range(5)]

    try:
        allow_connections(system.auth_url, False)
        name = f"u{run_id()}"
        refused = system.auth.post(
            "/api/v1/auth/register",
            json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
        )
        time.sleep(OUTAGE_SECONDS)  # the relay meets the outage and keeps retrying
        assert relay.poll() is None, "the relay exited during the outage"
    finally:
        allow_connections(system.auth_url, True)
    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json()["message"]

    after = [system.register()["id"] for _ in range(5)]
    system.auth_engine.dispose()  # its pooled connections were cut too
    assert wait_until(lambda: pending_rows(system) == 0, timeout=20), "rows left unpublished"
    assert relay.poll() is None, "the relay exited after the outage"

    expected = outbox_ids(system)
    assert len(expected) == 10
    messages = drain(system.amqp_url, USER_QUEUE, expected=len(expected), timeout=10)
    published = [properties.message_id for properties, _ in messages]
    assert sorted(published) == sorted(expected), "a row was lost or published twice"
    assert queue_depth(system.amqp_url, USER_QUEUE) == 0, "a row was published twice"
    assert {json.loads(body)["data"]["user_id"] for _, body in messages} == set(before + after)

    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0
