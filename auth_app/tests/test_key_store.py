"""The database key store: sealed keys, generate and rotate, and the rings every node reads it with.

Each test runs on SQLite and on a fresh PostgreSQL database; the races of two
rotations at once run on PostgreSQL, where several nodes share the store.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import event, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from auth_app.key_store import (
    UNKNOWN_KID_CHECK_SECONDS,
    ConcurrentChange,
    DatabaseKeyRing,
    KeySealer,
    NoSigningKey,
    SealedKeyError,
    commit_with_retry,
    generate,
    rotate,
)
from auth_app.models import SigningKey
from common.config import ConfigError
from common.db import make_engine
from common.keys import load_public_key, thumbprint
from tests.support.servers import allow_connections, fresh_postgres_database

SEALER = KeySealer(os.urandom(32))
OTHER_SEALER = KeySealer(os.urandom(32))
# Tokens of a retired key live this long after its last signature, unless a test says otherwise.
RETAIN = 900.0


@pytest.fixture(scope="module")
def postgres_url():
    with fresh_postgres_database("key_store") as url:
        yield url


def empty_store(url: str):
    """An engine on ``url`` with an empty signing_keys table."""
    engine = make_engine(url)
    SigningKey.metadata.create_all(engine, tables=[SigningKey.__table__])
    with engine.begin() as connection:
        connection.execute(SigningKey.__table__.delete())
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """An empty store on SQLite or PostgreSQL."""
    if request.param == "sqlite":
        engine = empty_store(f"sqlite:///{tmp_path / 'auth.db'}")
    else:
        engine = empty_store(request.getfixturevalue("postgres_url"))
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine):
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def shared(postgres_url):
    """Sessions of an empty PostgreSQL store: where several nodes write at once."""
    engine = empty_store(postgres_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def make_first_key(sessions) -> str:
    with sessions() as session:
        kid, made = commit_with_retry(session, lambda s: generate(s, SEALER))
    assert made
    return kid


def rotate_now(sessions, sealer: KeySealer = SEALER, retired_for: float = 3600) -> tuple[str, str]:
    with sessions() as session:
        old, new, _ = commit_with_retry(
            session, lambda s: rotate(s, sealer, retired_for=timedelta(seconds=retired_for))
        )
    return old, new


def rows(sessions) -> list[SigningKey]:
    with sessions() as session:
        return list(session.scalars(select(SigningKey).order_by(SigningKey.id)))


def ring(sessions, sealer: KeySealer = SEALER, **timing: float) -> DatabaseKeyRing:
    """A node's key ring; a key signs at once and the store is checked once a minute unless told."""
    timing = {"retain_seconds": RETAIN, "activation_seconds": 0.0, "check_interval": 60.0, **timing}
    return DatabaseKeyRing(sessions, sealer, **timing)


def signed_kid(keys: DatabaseKeyRing) -> str:
    """The kid in the header of a token the ring signs now."""
    kid, private = keys.signing_key()
    token = jwt.encode({"sub": "x"}, private, algorithm="RS256", headers={"kid": kid})
    return jwt.get_unverified_header(token)["kid"]


def kids(jwks: dict) -> list[str]:
    return [key["kid"] for key in jwks["keys"]]


# -- generate and rotate ----------------------------------------------------------
def test_generate_makes_one_active_key_and_then_nothing_more(sessions):
    kid = make_first_key(sessions)
    with sessions() as session:
        assert generate(session, SEALER) == (kid, False)
    [row] = rows(sessions)
    assert (row.kid, row.active, row.retired_at) == (kid, True, None)
    assert row.kid == thumbprint(load_public_key(row.public_key.encode(), "stored"))


def test_rotate_retires_the_active_key_and_makes_a_new_one_active(sessions):
    first = make_first_key(sessions)
    old, new = rotate_now(sessions)
    assert old == first and new != first
    retired, active = rows(sessions)
    assert (retired.kid, retired.active) == (first, False)
    assert retired.retired_at is not None and retired.retired_at == active.created_at
    assert (active.kid, active.active, active.retired_at) == (new, True, None)


def test_rotate_without_a_key_says_there_is_none(sessions):
    with sessions() as session, pytest.raises(NoSigningKey):
        rotate(session, SEALER, retired_for=timedelta(hours=1))


def test_rotate_deletes_keys_retired_longer_than_their_tokens_live(sessions):
    first = make_first_key(sessions)
    _, second = rotate_now(sessions)
    _, third = rotate_now(sessions, retired_for=0)
    # The first key was retired before this rotation, the second by it.
    assert [(row.kid, row.active) for row in rows(sessions)] == [(second, False), (third, True)]
    assert first not in {row.kid for row in rows(sessions)}


def test_the_database_refuses_a_second_active_key(sessions):
    make_first_key(sessions)
    [row] = rows(sessions)
    with sessions() as session, pytest.raises(IntegrityError):
        session.add(
            SigningKey(kid="another", public_key=row.public_key, private_key="x", active=True)
        )
        session.flush()


def test_the_database_refuses_a_retired_key_without_its_retirement_time(sessions):
    make_first_key(sessions)
    with sessions() as session, pytest.raises(IntegrityError):
        session.execute(update(SigningKey).values(active=False))
        session.flush()


# -- sealing ------------------------------------------------------------------------
def test_private_keys_are_stored_sealed_and_open_only_under_their_key(sessions):
    kid = make_first_key(sessions)
    [row] = rows(sessions)
    sealed = base64.b64decode(row.private_key)
    private = SEALER.open(kid, row.private_key)
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert "PRIVATE KEY" not in row.private_key
    assert der[64:96] not in sealed
    assert thumbprint(private.public_key()) == kid
    with pytest.raises(SealedKeyError):
        OTHER_SEALER.open(kid, row.private_key)


def test_a_key_sealed_for_one_kid_does_not_open_as_another(sessions):
    make_first_key(sessions)
    _, second = rotate_now(sessions)
    retired, _ = rows(sessions)
    with pytest.raises(SealedKeyError):
        SEALER.open(second, retired.private_key)
    # Moved onto the active row, the old sealed key stops every node from loading.
    with sessions.begin() as session:
        session.execute(
            update(SigningKey)
            .where(SigningKey.kid == second)
            .values(private_key=retired.private_key)
        )
    with pytest.raises(ConfigError, match=f"^KEY_ENCRYPTION_KEY: signing key {second} does not"):
        ring(sessions).load()


def test_a_wrong_key_encryption_key_refuses_to_load(sessions):
    make_first_key(sessions)
    with pytest.raises(ConfigError) as error:
        ring(sessions, OTHER_SEALER).load()
    assert str(error.value).startswith("KEY_ENCRYPTION_KEY: signing key")
    assert "every auth node needs the one that sealed it" in str(error.value)


def test_a_wrong_key_encryption_key_cannot_rotate(sessions):
    first = make_first_key(sessions)
    with sessions() as session, pytest.raises(SealedKeyError):
        rotate(session, OTHER_SEALER, retired_for=timedelta(hours=1))
    assert [(row.kid, row.active) for row in rows(sessions)] == [(first, True)]


def test_the_sealer_never_shows_its_key():
    raw = os.urandom(32)
    assert repr(raw) not in repr(KeySealer(raw))
    assert base64.b64encode(raw).decode() not in repr(KeySealer(raw))


# -- the rings of the nodes -----------------------------------------------------------
def test_nodes_starting_on_an_empty_store_make_one_first_key(sessions):
    nodes = [ring(sessions), ring(sessions)]
    for node in nodes:
        node.load()
    [row] = rows(sessions)
    assert [signed_kid(node) for node in nodes] == [row.kid, row.kid]


def test_a_node_with_another_key_encryption_key_does_not_make_a_key_of_its_own(sessions):
    kid = make_first_key(sessions)
    with pytest.raises(ConfigError, match="^KEY_ENCRYPTION_KEY"):
        ring(sessions, OTHER_SEALER).load()
    assert [row.kid for row in rows(sessions)] == [kid]


def test_a_ring_signs_with_the_active_key_and_publishes_it(sessions):
    kid = make_first_key(sessions)
    keys = ring(sessions)
    assert signed_kid(keys) == kid
    assert kids(keys.jwks()) == [kid]
    assert keys.get(kid) is not None
    assert keys.get("unknown") is None


def test_a_ring_asks_the_store_at_most_once_per_check_interval(sessions, engine):
    make_first_key(sessions)
    keys = ring(sessions, check_interval=60)
    keys.load()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for _ in range(200):
        keys.signing_key()
        keys.jwks()
    assert statements == []


def test_a_rotation_reaches_every_node_within_the_check_interval(sessions):
    first = make_first_key(sessions)
    nodes = [ring(sessions, check_interval=0.2, activation_seconds=1.5) for _ in range(2)]
    for node in nodes:
        node.load()
    _, second = rotate_now(sessions)
    time.sleep(0.3)
    # Published by every node at once; the old key signs until the new one's time comes.
    assert [kids(node.jwks()) for node in nodes] == [[first, second]] * 2
    assert nodes[0].jwks() == nodes[1].jwks()
    assert [signed_kid(node) for node in nodes] == [first] * 2
    time.sleep(1.5)
    assert [signed_kid(node) for node in nodes] == [second] * 2
    assert [kids(node.jwks()) for node in nodes] == [[first, second]] * 2


def test_a_kid_unknown_to_a_node_is_looked_up_in_the_store_at_once(sessions):
    make_first_key(sessions)
    keys = ring(sessions, check_interval=60)
    keys.load()
    _, second = rotate_now(sessions)
    time.sleep(UNKNOWN_KID_CHECK_SECONDS)
    # A token another node signed with a key this one has not read yet.
    assert keys.get(second) is not None


def test_a_retired_key_is_published_until_its_tokens_can_have_expired(sessions):
    first = make_first_key(sessions)
    _, second = rotate_now(sessions)
    keys = ring(sessions, retain_seconds=1.0, activation_seconds=0.0)
    assert kids(keys.jwks()) == [first, second]
    assert keys.get(first) is not None
    time.sleep(1.2)
    assert kids(keys.jwks()) == [second]
    assert keys.get(first) is None


def test_a_first_key_signs_at_once(sessions):
    kid = make_first_key(sessions)
    assert signed_kid(ring(sessions, activation_seconds=3600)) == kid


# -- several nodes at once (PostgreSQL) --------------------------------------------------
def run_in_threads(count: int, action) -> tuple[list, list, list]:
    """Start ``action`` in ``count`` threads: (threads, results by thread, errors)."""
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = action()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results, errors


def test_two_rotations_at_once_leave_one_active_key(shared):
    first = make_first_key(shared)
    # Hold the active row, so both rotations read it and then queue on it.
    with shared() as blocker:
        blocker.execute(text("SELECT id FROM signing_keys WHERE active FOR UPDATE"))
        threads, results, errors = run_in_threads(2, lambda: rotate_now(shared))
        time.sleep(0.5)
        blocker.commit()
    for thread in threads:
        thread.join(30)
    assert errors == []
    stored = [row.kid for row in rows(shared)]
    assert [row.kid for row in rows(shared) if row.active] == [stored[-1]]
    # One rotated the first key, the other, run again, the key that one made.
    assert stored[0] == first
    assert sorted(results) == sorted([(stored[0], stored[1]), (stored[1], stored[2])])


def test_two_nodes_generating_at_once_make_one_key(shared):
    # An uncommitted active key: the next generate waits on the unique index for it.
    with shared() as first_node:
        kid, _ = generate(first_node, SEALER)
        threads, results, errors = run_in_threads(
            1, lambda: commit_with_retry(shared(), lambda s: generate(s, SEALER))
        )
        time.sleep(0.5)
        first_node.commit()
    threads[0].join(30)
    assert errors == []
    assert results == [(kid, False)]
    assert [row.kid for row in rows(shared)] == [kid]


def test_a_change_that_keeps_meeting_others_gives_up(sessions):
    def always_raced(_session):
        raise ConcurrentChange("raced")

    with sessions() as session, pytest.raises(ConcurrentChange):
        commit_with_retry(session, always_raced, attempts=3)


def test_a_node_keeps_its_keys_while_the_store_is_unreachable(postgres_url, shared):
    kid = make_first_key(shared)
    keys = ring(shared, check_interval=0.1)
    keys.load()
    allow_connections(postgres_url, False)
    try:
        time.sleep(0.2)
        assert signed_kid(keys) == kid
        assert kids(keys.jwks()) == [kid]
    finally:
        allow_connections(postgres_url, True)
