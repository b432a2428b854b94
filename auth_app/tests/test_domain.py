"""Domain functions the auth worker calls, and the stores, without HTTP."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy.orm import sessionmaker

from auth_app import accounts, login_sessions
from auth_app.models import Base, LoginSession, User
from auth_app.passwords import PasswordHasher
from auth_app.revocation import (
    MAX_CUTOFF_AHEAD,
    RevocationStore,
    issued_at,
    issued_before_cutoff,
)
from auth_app.tests.conftest import PASSWORD, bearer
from common.db import make_engine, utcnow
from common.events import USER_UPDATED
from tests.support.events import raw_envelope

MAX_AGE = timedelta(days=90)
ROLES = ("user", "admin")


@pytest.fixture
def store(redis_client, redis_prefix):
    return RevocationStore(
        redis_client, f"{redis_prefix}{uuid.uuid4().hex[:8]}:", access_ttl=900, leeway=10
    )


@pytest.fixture
def db():
    engine = make_engine("sqlite://")
    Base.metadata.create_all(engine)
    session = sessionmaker(engine, expire_on_commit=False)()
    yield session
    session.close()
    engine.dispose()


def new_account(db, name: str) -> User:
    account = accounts.register(
        db,
        PasswordHasher(4, "pepper"),
        email=f"{name}@Example.com",
        username=name,
        password=PASSWORD,
        min_length=8,
    )
    db.commit()
    return account


@pytest.fixture
def user(db):
    return new_account(db, "Worker")


def test_mark_provisioned_sets_the_time_once(db, user):
    first = utcnow()
    accounts.mark_provisioned(db, {user.id: first})
    accounts.mark_provisioned(db, {user.id: first + timedelta(seconds=5)})
    db.expire_all()
    assert db.get(User, user.id).provisioned_at == first
    # An account that is gone: nothing to mark, and no error.
    accounts.mark_provisioned(db, {str(uuid.uuid4()): first})


def test_mark_many_provisioned_sets_each_time_once(db, user):
    other = new_account(db, "other")
    first = utcnow()
    accounts.mark_provisioned(db, {user.id: first})
    db.commit()
    later = first + timedelta(seconds=5)
    accounts.mark_provisioned(db, {user.id: later, other.id: later, str(uuid.uuid4()): later})
    db.commit()
    db.expire_all()
    assert db.get(User, user.id).provisioned_at == first
    assert db.get(User, other.id).provisioned_at == later


def change(db, store, user_id, changes, at):
    return accounts.apply_admin_changes(db, store, user_id, changes, at, ROLES)


def test_admin_changes_apply_in_order_and_stale_ones_are_ignored(db, store, user):
    now = utcnow()
    assert change(db, store, user.id, {"roles": ["admin", "user"]}, now)
    assert db.get(User, user.id).roles == ["admin", "user"]
    older = now - timedelta(seconds=1)
    assert not change(db, store, user.id, {"roles": ["user"]}, older)
    assert not change(db, store, user.id, {"roles": ["user"]}, now)
    assert db.get(User, user.id).roles == ["admin", "user"]


def test_deactivation_revokes_sessions_and_tokens(db, store, user):
    family, _ = login_sessions.start(db, user.id, utcnow(), timedelta(days=1), MAX_AGE)
    sid = family.id
    issued = int(time.time())
    later = utcnow() + timedelta(seconds=1)
    assert change(db, store, user.id, {"is_active": False}, later)
    assert db.get(User, user.id).is_active is False
    assert db.get(LoginSession, sid).revoked_at is not None
    claims = {"jti": "j", "sid": sid, "sub": user.id, "iat": issued}
    assert issued_before_cutoff(claims, db.get(User, user.id))
    assert change(db, store, user.id, {"is_active": True}, later + timedelta(seconds=1))
    assert db.get(User, user.id).is_active is True


def admin_change(user_id: str, changes: dict):
    """A ``user.updated`` message as the auth worker accepts it through the catalogue."""
    return USER_UPDATED.accept(
        raw_envelope(USER_UPDATED, "user_app", {"user_id": user_id, "changes": changes})
    )


def test_admin_changes_that_can_never_apply_raise(db, store, user):
    with pytest.raises(ValueError):
        admin_change(user.id, {"is_active": "yes"})
    with pytest.raises(ValueError):
        admin_change(user.id, {"roles": "admin"})
    with pytest.raises(ValueError):
        admin_change(user.id, {"roles": ["Admin!"]})


def test_admin_change_for_an_unknown_user_is_a_no_op(db, store):
    assert not change(db, store, "missing", {"roles": ["user"]}, utcnow())


def test_deletion_from_the_user_service_removes_without_an_echo(db, store, user):
    login_sessions.start(db, user.id, utcnow(), timedelta(days=1), MAX_AGE)
    db.commit()
    events_before = db.execute(Base.metadata.tables["outbox"].select()).all()
    assert accounts.delete_account_from_user_service(db, user.id) is True
    db.commit()
    assert db.get(User, user.id) is None
    assert db.execute(Base.metadata.tables["outbox"].select()).all() == events_before
    assert accounts.delete_account_from_user_service(db, user.id) is False


def test_a_stale_read_loses_the_conditional_rotation(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'race.db'}")
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    setup = factory()
    owner = User(
        email="r@example.com", username="r", username_key="r", password_hash="x", roles=["user"]
    )
    setup.add(owner)
    setup.flush()
    _, token = login_sessions.start(setup, owner.id, utcnow(), timedelta(days=1), MAX_AGE)
    setup.commit()
    slow, fast = factory(), factory()
    assert login_sessions.find(slow, token)[0].rotated_at is None  # read before the other rotates
    login_sessions.rotate(fast, token, utcnow(), timedelta(days=1))
    fast.commit()
    with pytest.raises(login_sessions.RefreshTokenReused):
        login_sessions.rotate(slow, token, utcnow(), timedelta(days=1))
    for session in (setup, slow, fast):
        session.close()
    engine.dispose()


def test_revocations_in_one_second_each_kill_tokens_issued_between(db, store, user):
    first = store.revoke_user(db, user)
    issued = issued_at(user)
    assert issued == first
    second = store.revoke_user(db, user)
    assert second > issued
    assert issued_before_cutoff({"jti": "a", "sid": None, "iat": issued}, user)
    assert not issued_before_cutoff({"jti": "b", "sid": None, "iat": issued_at(user)}, user)


def test_a_burst_of_revocations_never_pushes_the_cutoff_past_the_leeway(db, store, user):
    previous = 0
    for _ in range(8):
        cutoff = store.revoke_user(db, user)
        # Each one kills the tokens issued after the one before...
        assert cutoff > previous
        previous = cutoff
        # ... and the next token's iat is within reach of the clock.
        assert issued_at(user) - time.time() <= MAX_CUTOFF_AHEAD


def test_password_change_right_after_logout_all_kills_the_login_between(client, accounts):
    user, tokens = accounts.register_and_login()
    assert (
        client.post("/api/v1/auth/logout-all", headers=bearer(tokens["access_token"])).status_code
        == 204
    )
    between = accounts.login(user["email"])
    changed = client.post(
        "/api/v1/auth/password",
        headers=bearer(between["access_token"]),
        json={"current_password": PASSWORD, "new_password": "Fresh-Horse-Staple-4"},
    )
    assert changed.status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(between["access_token"])).status_code == 401
    assert (
        client.get("/api/v1/auth/me", headers=bearer(changed.json["access_token"])).status_code
        == 200
    )


def test_hasher_treats_a_malformed_hash_as_wrong_and_stale():
    hasher = PasswordHasher(4, "pepper")
    assert hasher.verify(PASSWORD, "not-a-bcrypt-hash") is False
    assert hasher.needs_rehash("garbage") is True
