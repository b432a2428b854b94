"""A batch of user.sync messages leaves the user database exactly as one by one would.

Random mixes of created, deleted and sessions_revoked messages over a few users,
on top of a random history (profiles, tombstones, pending revocations), are
applied one by one (each a list of one) to one database and as one list to another;
every profile, tombstone, pending revocation and user.created answer must match.
Run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import make_engine
from tests.support.servers import fresh_postgres_database
from user_app.models import Base, OutboxEvent, PendingRevocation, Profile, Tombstone
from user_app.sync import handle_user_sync
from user_app.tests.messages import envelope as accepted

START = datetime(2026, 11, 1, tzinfo=UTC)


def random_messages(rng: random.Random, users: list[str], count: int, clock: list[int]):
    messages = []
    for _ in range(count):
        user_id = rng.choice(users)
        action = rng.choices(["created", "deleted", "sessions_revoked"], [6, 1, 2])[0]
        data: dict = {"user_id": user_id.upper() if rng.random() < 0.1 else user_id}
        if action == "created":
            name = f"u{rng.randrange(1000)}"
            data |= {
                "email": f"{name}@Example.com",
                "username": name,
                "roles": rng.choice([["user"], ["user", "admin"]]),
                "is_active": rng.random() < 0.8,
                "created_at": (START + timedelta(minutes=rng.randrange(60))).isoformat(),
            }
        elif action == "sessions_revoked":
            data["revoked_before"] = 1_800_000_000 + rng.randrange(100)
        data["action"] = action
        clock[0] += rng.choice([0, 1, 5])  # equal times happen: two events in one second
        messages.append(accepted(data, START + timedelta(seconds=clock[0]), "req"))
    return messages


def state(session: Session) -> dict:
    profiles = [
        (
            p.id,
            p.email,
            p.username,
            list(p.roles),
            p.is_active,
            p.created_at,
            p.tokens_valid_after,
            p.synced_at,
        )
        for p in session.scalars(select(Profile).order_by(Profile.id))
    ]
    tombstones = sorted(session.scalars(select(Tombstone.user_id)))
    pending = sorted(
        session.execute(select(PendingRevocation.user_id, PendingRevocation.revoked_before)).all()
    )
    answers = sorted(
        (body["data"]["user_id"], body["data"]["profile_created_at"], body["correlation_id"])
        for body in (json.loads(b) for b in session.scalars(select(OutboxEvent.body)))
    )
    return {"profiles": profiles, "tombstones": tombstones, "pending": pending, "answers": answers}


def compare(one_engine, batch_engine, seed: int) -> None:
    rng = random.Random(seed)
    users = [str(uuid.uuid4()) for _ in range(25)]
    clock = [0]
    history = random_messages(rng, users, 20, clock)
    batch = random_messages(rng, users, 40, clock)
    for engine in (one_engine, batch_engine):
        with Session(engine) as session, session.begin():
            for envelope in history:
                handle_user_sync([envelope], session)
    with Session(one_engine) as session, session.begin():
        for envelope in batch:
            handle_user_sync([envelope], session)
    with Session(batch_engine) as session, session.begin():
        handle_user_sync(batch, session)
    with Session(one_engine) as one, Session(batch_engine) as batched:
        expected, got = state(one), state(batched)
    assert got == expected
    # Each mix has both kinds: users created once in the batch, applied
    # together, and users with several messages, applied one by one.
    seen = Counter(e.data["user_id"].lower() for e in batch)
    once = [e for e in batch if seen[e.data["user_id"].lower()] == 1]
    assert any(e.data["action"] == "created" for e in once)
    assert any(count > 1 for count in seen.values())


@pytest.mark.parametrize("seed", range(12))
def test_batches_match_one_by_one_on_sqlite(seed):
    engines = [make_engine("sqlite://") for _ in range(2)]
    for engine in engines:
        Base.metadata.create_all(engine)
    try:
        compare(*engines, seed)
    finally:
        for engine in engines:
            engine.dispose()


@pytest.fixture(scope="module")
def postgres_pair():
    with fresh_postgres_database("batch_one") as one, fresh_postgres_database("batch_two") as two:
        engines = [make_engine(one), make_engine(two)]
        yield engines
        for engine in engines:
            engine.dispose()


@pytest.mark.parametrize("seed", range(6))
def test_batches_match_one_by_one_on_postgresql(postgres_pair, seed):
    for engine in postgres_pair:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
    compare(*postgres_pair, seed)
