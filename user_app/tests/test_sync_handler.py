"""handle_user_sync on in-memory SQLite: what each action leaves in the user database."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import make_engine
from common.events import USER_SYNC, InvalidMessage
from tests.support.events import raw_envelope
from user_app.models import Base, OutboxEvent, Profile, Tombstone
from user_app.sync import handle_user_sync


@pytest.fixture
def session():
    engine = make_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def sync(action: str, user_id: str, **data):
    return raw_envelope(
        "user.sync", "auth_app", {"user_id": user_id, "action": action, **data}, "req-1"
    )


def handle(envelope, session):
    """Apply one message as the user worker does: accepted by the catalogue, then handled."""
    handle_user_sync([USER_SYNC.accept(envelope)], session)


def created(user_id: str, **overrides):
    data = {
        "email": "ada@example.com",
        "username": "ada",
        "roles": ["user"],
        "is_active": True,
        "created_at": "2026-11-26T06:00:00+00:00",
    }
    data.update(overrides)
    return sync("created", user_id, **data)


def test_created_makes_the_profile_and_answers_with_user_created(session):
    user_id = str(uuid.uuid4())
    envelope = created(user_id)
    handle(envelope, session)
    session.commit()
    profile = session.get(Profile, user_id)
    assert (profile.email, profile.username, profile.roles) == ("ada@example.com", "ada", ["user"])
    answer = session.scalars(select(OutboxEvent)).one()
    body = json.loads(answer.body)
    assert (answer.exchange, answer.routing_key) == ("auth_events", "user.created")
    assert body["type"] == "user.created"
    assert body["source"] == "user_app"
    assert body["correlation_id"] == envelope.id
    assert body["data"]["user_id"] == user_id
    assert "profile_created_at" in body["data"]


def test_deleted_removes_the_profile_and_a_late_created_does_not_bring_it_back(session):
    user_id = str(uuid.uuid4())
    first = created(user_id)
    handle(sync("deleted", user_id), session)
    handle(first, session)
    session.commit()
    assert session.get(Profile, user_id) is None
    assert session.get(Tombstone, user_id) is not None
    assert session.scalars(select(OutboxEvent)).all() == []


def test_sessions_revoked_sets_tokens_valid_after_and_keeps_the_latest(session):
    user_id = str(uuid.uuid4())
    handle(created(user_id), session)
    now = time.time()
    handle(sync("sessions_revoked", user_id, revoked_before=now), session)
    handle(sync("sessions_revoked", user_id, revoked_before=now - 100), session)
    session.commit()
    assert session.get(Profile, user_id).tokens_valid_after == pytest.approx(now)


@pytest.mark.parametrize(
    "envelope",
    [
        sync("exploded", str(uuid.uuid4())),
        sync("created", "not-a-uuid", email="a@b.c", username="abc"),
        created(str(uuid.uuid4()), email=None),
        created(str(uuid.uuid4()), roles="admin"),
        sync("sessions_revoked", str(uuid.uuid4()), revoked_before="yesterday"),
    ],
    ids=["unknown-action", "bad-user-id", "no-email", "roles-not-list", "bad-revoked-before"],
)
def test_invalid_data_is_refused_as_a_message_that_can_never_apply(session, envelope):
    with pytest.raises(InvalidMessage):
        handle(envelope, session)


def test_the_profile_is_as_old_as_the_account_even_when_made_first_from_a_token(session):
    from user_app.profiles import ensure_profile

    user_id = str(uuid.uuid4())
    claims = {"sub": user_id, "email": "ada@example.com", "username": "ada", "roles": ["user"]}
    ensure_profile(session, claims)
    session.flush()
    handle(created(user_id, created_at="2026-11-26T06:00:00+00:00"), session)
    session.commit()
    assert session.get(Profile, user_id).created_at.isoformat() == "2026-11-26T06:00:00+00:00"
