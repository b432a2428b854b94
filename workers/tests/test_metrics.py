"""What the consumers and relays count, against the real RabbitMQ and databases."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from common.db import backlog_reader, make_engine, utcnow
from common.events import USER_QUEUE
from common.outbox import emit
from tests.support.broker import Running
from tests.support.events import NUMBERED
from workers.relay import Held
from workers.tests.test_mechanics import (
    Base,
    Outbox,
    body,
    declare,
    make_consumer,
    publish_many,
    publish_raw,
    record,
    relay_once,
    wait_until,
)

QUEUE = {"queue": USER_QUEUE}


def value(name: str, **labels: str) -> float:
    """A sample of this process's metrics (0 before the first)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counts:
    """The consumer families of USER_QUEUE, as deltas from when this was made."""

    NAMES = (
        "worker_messages_applied_total",
        "worker_messages_retried_total",
        "worker_messages_dead_lettered_total",
        "worker_batch_size_count",
        "worker_batch_size_sum",
    )

    def __init__(self) -> None:
        self.start = {name: value(name, **QUEUE) for name in self.NAMES}

    def __getitem__(self, name: str) -> float:
        return value(name, **QUEUE) - self.start[name]


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'worker.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_applied_messages_are_counted_once_and_their_batches_measured(engine, amqp_url):
    declare(amqp_url)
    payloads = [body(n) for n in range(20)]
    counts = Counts()
    # Five redelivered ids: acked, not applied again, not counted again.
    publish_many(amqp_url, payloads + payloads[:5])
    with Running(make_consumer(engine, amqp_url, prefetch=50)):
        assert wait_until(lambda: counts["worker_batch_size_sum"] == 25)
    assert counts["worker_messages_applied_total"] == 20
    assert 1 <= counts["worker_batch_size_count"] <= 25
    assert counts["worker_messages_dead_lettered_total"] == 0


def test_dead_lettered_messages_are_counted(engine, amqp_url):
    declare(amqp_url)
    counts = Counts()
    publish_many(amqp_url, [("garbage", b"not json"), body(1, invalid=True), body(2)])
    with Running(make_consumer(engine, amqp_url, prefetch=10)):
        assert wait_until(lambda: counts["worker_messages_dead_lettered_total"] == 2)
        assert wait_until(lambda: counts["worker_messages_applied_total"] == 1)


def test_each_retry_is_counted_and_a_message_given_up_on_is_dead_lettered(engine, amqp_url):
    declare(amqp_url)
    counts = Counts()

    def broken(envelope, session):
        raise RuntimeError("bug")

    message_id, payload = body(1)
    publish_raw(amqp_url, payload, message_id)
    with Running(make_consumer(engine, amqp_url, broken, max_tries=3)):
        assert wait_until(lambda: counts["worker_messages_dead_lettered_total"] == 1)
    # Three tries: the first and two retries.
    assert counts["worker_messages_retried_total"] == 2
    assert counts["worker_messages_applied_total"] == 0


def test_a_transient_failure_is_counted_as_retries_then_applied(engine, amqp_url):
    declare(amqp_url)
    counts = Counts()
    failures = [OperationalError("select 1", {}, Exception("db down"))] * 2

    def flaky(envelope, session):
        if failures:
            raise failures.pop()
        record(envelope, session)

    message_id, payload = body(5)
    publish_raw(amqp_url, payload, message_id)
    with Running(make_consumer(engine, amqp_url, flaky)):
        assert wait_until(lambda: counts["worker_messages_applied_total"] == 1)
    assert counts["worker_messages_retried_total"] == 2


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_outbox_backlog_is_the_rows_pending_and_the_age_of_the_oldest(
    database, engine, postgres_url, amqp_url
):
    if database == "postgresql":
        engine = make_engine(postgres_url)
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.query(Outbox).delete()
    read = backlog_reader(engine, Outbox.created_at, Outbox.published_at.is_(None))
    assert read() == (0, 0.0)
    with Session(engine) as session, session.begin():
        for n in range(3):
            emit(session, Outbox, NUMBERED, {"n": n})
    with Session(engine) as session, session.begin():
        oldest = session.scalars(select(Outbox).order_by(Outbox.seq)).first()
        oldest.created_at = utcnow() - timedelta(minutes=5)
    pending, age = read()
    assert pending == 3
    assert 300 <= age < 3600

    declare(amqp_url)
    assert relay_once(engine, amqp_url) == (3, Held.NONE)
    assert read() == (0, 0.0)
    if database == "postgresql":
        engine.dispose()


def test_the_metrics_of_workers_and_relays_load_no_flask():
    # Worker memory is to shrink: serving metrics must not pull in the web stack.
    code = (
        "import sys, common.metrics, workers.relay, workers.auth_worker, workers.user_worker; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
