"""The sync the user worker applies, and the revocation state it leaves for tokens."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from common.db import utcnow
from common.events import InvalidMessage
from user_app.access import token_revoked
from user_app.models import PendingRevocation, Profile, RevokedSession, Tombstone
from user_app.sync import future_times
from user_app.tests import messages
from user_app.tests.conftest import bearer

ME = "/api/v1/users/me"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def created_data(user_id: str, **overrides) -> dict:
    data = {
        "user_id": user_id,
        "action": "created",
        "email": "Ada@Example.com",
        "username": "ada",
        "roles": ["user"],
        "is_active": True,
        "created_at": T0.isoformat(),
    }
    data.update(overrides)
    return data


# -- created ----------------------------------------------------------------------


def test_created_makes_a_profile(db_session):
    user_id = str(uuid.uuid4())
    profile = messages.apply_user_created(db_session, created_data(user_id), T0)
    db_session.commit()
    assert profile.id == user_id
    assert (profile.email, profile.username, profile.roles) == ("ada@example.com", "ada", ["user"])


def test_created_twice_is_the_same_profile(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_created(db_session, created_data(user_id), T0)
    messages.apply_user_created(db_session, created_data(user_id), T0)
    db_session.commit()
    assert db_session.query(Profile).filter_by(id=user_id).count() == 1


def test_created_merges_into_a_profile_made_by_the_first_request(client, signer, db_session):
    user_id = str(uuid.uuid4())
    headers = bearer(signer.token(user_id, email="old@example.com", username="old"))
    client.patch(ME, json={"display_name": "Mine", "bio": "Hello"}, headers=headers)
    profile = messages.apply_user_created(
        db_session, created_data(user_id, roles=["user", "beta"]), utcnow()
    )
    db_session.commit()
    assert (profile.email, profile.username) == ("ada@example.com", "ada")
    assert profile.roles == ["user", "beta"]
    assert (profile.display_name, profile.bio) == ("Mine", "Hello")


def test_created_does_not_undo_a_later_admin_decision(client, signer, admin, db_session):
    user_id = str(uuid.uuid4())
    client.get(ME, headers=bearer(signer.token(user_id)))
    sent_at = utcnow() - timedelta(seconds=5)
    client.patch(
        f"/api/v1/users/{user_id}", json={"is_active": False, "roles": ["mod"]}, headers=admin[0]
    )
    profile = messages.apply_user_created(db_session, created_data(user_id), sent_at)
    db_session.commit()
    assert profile.is_active is False
    assert profile.roles == ["mod"]


def test_an_older_created_does_not_overwrite_a_newer_one(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_created(db_session, created_data(user_id, username="newer"), T0)
    older = T0 - timedelta(minutes=1)
    profile = messages.apply_user_created(
        db_session, created_data(user_id, username="older"), older
    )
    assert profile.username == "newer"


def test_created_accepts_a_naive_timestamp_as_utc(db_session):
    user_id = str(uuid.uuid4())
    profile = messages.apply_user_created(
        db_session, created_data(user_id), datetime(2026, 1, 1, 12, 0)
    )
    db_session.commit()
    assert profile.synced_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "overrides",
    [
        {"user_id": "nope"},
        {"user_id": None},
        {"email": ""},
        {"email": None},
        {"username": 7},
        {"roles": "admin"},
        {"roles": ["Bad Role"]},
        {"roles": [f"r{i}" for i in range(21)]},
        {"is_active": "yes"},
        {"created_at": "last tuesday"},
    ],
)
def test_created_with_bad_data_raises_invalid_event_data(db_session, overrides):
    with pytest.raises(InvalidMessage):
        data = {**created_data(str(uuid.uuid4())), **overrides}
        messages.apply_user_created(db_session, data, T0)


@pytest.mark.parametrize("data", [None, [], "user"])
def test_created_with_data_that_is_not_an_object(db_session, data):
    with pytest.raises(InvalidMessage):
        messages.apply_user_created(db_session, data, T0)


def test_created_with_a_timestamp_that_is_not_a_datetime(db_session):
    with pytest.raises(InvalidMessage):
        messages.apply_user_created(db_session, created_data(str(uuid.uuid4())), 20260101)


# -- deleted and tombstones ---------------------------------------------------------


def test_deleted_then_a_late_created_does_not_recreate_the_profile(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_created(db_session, created_data(user_id), T0)
    messages.apply_user_deleted(db_session, user_id, T0 + timedelta(minutes=1))
    db_session.commit()
    assert messages.apply_user_created(db_session, created_data(user_id), T0) is None
    db_session.commit()
    assert db_session.get(Profile, user_id) is None
    assert db_session.get(Tombstone, user_id) is not None


def test_deleted_before_created_ever_arrived(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_deleted(db_session, user_id, T0)
    assert messages.apply_user_created(db_session, created_data(user_id), T0) is None


def test_deleted_twice_is_harmless(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_created(db_session, created_data(user_id), T0)
    messages.apply_user_deleted(db_session, user_id, T0)
    db_session.commit()
    messages.apply_user_deleted(db_session, user_id, T0)
    db_session.commit()
    assert db_session.query(Tombstone).filter_by(user_id=user_id).count() == 1


def test_a_deleted_users_first_request_does_not_create_a_profile(client, signer, db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_deleted(db_session, user_id, T0)
    db_session.commit()
    response = client.get(ME, headers=bearer(signer.token(user_id)))
    assert response.status_code == 401
    assert db_session.get(Profile, user_id) is None


@pytest.mark.parametrize("user_id", [None, "x", 5])
def test_deleted_with_a_bad_user_id(db_session, user_id):
    with pytest.raises(InvalidMessage):
        messages.apply_user_deleted(db_session, user_id, T0)


def test_sessions_revoked_for_a_deleted_user_stores_nothing(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_deleted(db_session, user_id, T0)
    messages.apply_sessions_revoked(db_session, user_id, time.time())
    db_session.commit()
    assert db_session.get(PendingRevocation, user_id) is None


# -- sessions_revoked and the tokens it kills -----------------------------------------


def revoke(db_session, user_id: str, revoked_before: float) -> None:
    messages.apply_sessions_revoked(db_session, user_id, revoked_before)
    db_session.commit()


def status_with_iat(client, signer, user_id: str, iat: float) -> int:
    return client.get(ME, headers=bearer(signer.token(user_id, iat=iat))).status_code


def test_a_token_issued_before_the_revocation_is_refused(client, signer, db_session):
    user_id = str(uuid.uuid4())
    client.get(ME, headers=bearer(signer.token(user_id)))
    now = int(time.time())
    revoke(db_session, user_id, now - 0.5)
    response = client.get(ME, headers=bearer(signer.token(user_id, iat=now - 60)))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["message"] == "Invalid token: token revoked"


def test_revocation_edges_as_the_auth_service_publishes_them(client, signer, db_session):
    """revoked_before is the whole second after a logout-all: older iats die, it and later live."""
    user_id = str(uuid.uuid4())
    now = int(time.time())
    client.get(ME, headers=bearer(signer.token(user_id)))
    revoke(db_session, user_id, now - 10)  # a logout-all during second now-11
    assert status_with_iat(client, signer, user_id, now - 12) == 401
    assert status_with_iat(client, signer, user_id, now - 11) == 401  # same second as it
    assert status_with_iat(client, signer, user_id, now - 10) == 200  # the pair issued after it
    assert status_with_iat(client, signer, user_id, now - 9) == 200


def test_a_fractional_revocation_refuses_its_own_second(client, signer, db_session):
    user_id = str(uuid.uuid4())
    now = int(time.time())
    client.get(ME, headers=bearer(signer.token(user_id)))
    revoke(db_session, user_id, now - 5 + 0.4)
    assert status_with_iat(client, signer, user_id, now - 5) == 401
    assert status_with_iat(client, signer, user_id, now - 4) == 200


def test_the_latest_revocation_wins_whatever_the_order(client, signer, db_session):
    user_id = str(uuid.uuid4())
    now = int(time.time())
    client.get(ME, headers=bearer(signer.token(user_id)))
    revoke(db_session, user_id, now - 5)
    revoke(db_session, user_id, now - 100)
    assert db_session.get(Profile, user_id).tokens_valid_after == now - 5
    assert status_with_iat(client, signer, user_id, now - 50) == 401
    assert status_with_iat(client, signer, user_id, now - 6) == 401


def test_a_revocation_before_the_profile_exists_is_honoured(client, signer, db_session):
    user_id = str(uuid.uuid4())
    now = int(time.time())
    revoke(db_session, user_id, now - 30)
    revoke(db_session, user_id, now - 20)
    revoke(db_session, user_id, now - 40)
    assert status_with_iat(client, signer, user_id, now - 21) == 401
    assert status_with_iat(client, signer, user_id, now - 20) == 200
    db_session.expire_all()
    assert db_session.get(Profile, user_id).tokens_valid_after == now - 20
    assert db_session.get(PendingRevocation, user_id) is None
    assert status_with_iat(client, signer, user_id, now - 21) == 401


def test_a_pending_revocation_is_folded_into_the_synced_profile(db_session):
    user_id = str(uuid.uuid4())
    revoke(db_session, user_id, 1_700_000_000.25)
    profile = messages.apply_user_created(db_session, created_data(user_id), T0)
    db_session.commit()
    assert profile.tokens_valid_after == 1_700_000_000.25
    assert db_session.get(PendingRevocation, user_id) is None


@pytest.mark.parametrize("value", ["yesterday", None, True, -1, 0, math.inf, math.nan])
def test_sessions_revoked_with_a_bad_timestamp(db_session, value):
    with pytest.raises(InvalidMessage):
        messages.apply_sessions_revoked(db_session, str(uuid.uuid4()), value)


def test_token_revoked_rule():
    assert token_revoked(100, None) is False
    assert token_revoked(99, 100) is True
    assert token_revoked(100, 100) is False
    assert token_revoked(100, 100.4) is True
    assert token_revoked(101, 100.4) is False


def test_an_inactive_synced_user_is_refused_with_403(client, signer, db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_created(db_session, created_data(user_id, is_active=False), T0)
    db_session.commit()
    response = client.get(ME, headers=bearer(signer.token(user_id)))
    assert response.status_code == 403
    assert response.get_json()["message"] == "Account disabled"


def test_created_together_takes_each_user_once(db_session):
    user_id = str(uuid.uuid4())
    with pytest.raises(ValueError, match="at most once"):
        messages.apply_users_created(
            db_session, [(created_data(user_id), T0), (created_data(user_id.upper()), T0)]
        )


def test_created_together_returns_profiles_in_order_and_none_for_the_deleted(db_session):
    fresh, deleted, existing = (str(uuid.uuid4()) for _ in range(3))
    messages.apply_user_deleted(db_session, deleted, T0)
    messages.apply_user_created(db_session, created_data(existing, username="old"), T0)
    messages.apply_sessions_revoked(db_session, fresh, 1_800_000_000)
    later = T0 + timedelta(seconds=1)
    result = messages.apply_users_created(
        db_session,
        [
            (created_data(fresh, username="fresh"), later),
            (created_data(deleted), later),
            (created_data(existing, username="new"), later),
        ],
    )
    db_session.commit()
    assert [p and p.username for p in result] == ["fresh", None, "new"]
    assert result[0].tokens_valid_after == 1_800_000_000
    assert db_session.get(PendingRevocation, fresh) is None
    assert db_session.get(Profile, deleted) is None


# -- updated: one truth for roles, activity and email --------------------------------


def updated(user_id: str, **changes) -> dict:
    return {"user_id": user_id, "action": "updated", "changes": changes}


def test_updated_applies_roles_activity_and_email(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_created(db_session, created_data(user_id), T0)
    later = T0 + timedelta(minutes=1)
    messages.deliver(
        db_session,
        updated(user_id, roles=["user", "editor"], is_active=False, email="New@Example.com"),
        later,
    )
    db_session.commit()
    profile = db_session.get(Profile, user_id)
    assert (profile.roles, profile.is_active, profile.email) == (
        ["user", "editor"],
        False,
        "new@example.com",
    )


def test_an_updated_older_than_an_administrators_change_here_does_not_undo_it(
    client, signer, admin, db_session
):
    user_id = str(uuid.uuid4())
    client.get(ME, headers=bearer(signer.token(user_id)))
    sent_at = utcnow() - timedelta(seconds=5)
    client.patch(f"/api/v1/users/{user_id}", json={"roles": ["user", "mod"]}, headers=admin[0])
    messages.deliver(db_session, updated(user_id, roles=["user"]), sent_at)
    db_session.commit()
    assert db_session.get(Profile, user_id).roles == ["user", "mod"]
    # A later change there wins.
    messages.deliver(db_session, updated(user_id, roles=["user"]), utcnow() + timedelta(seconds=1))
    db_session.commit()
    db_session.expire_all()
    assert db_session.get(Profile, user_id).roles == ["user"]


def test_an_updated_that_overtook_created_is_kept_when_created_arrives(db_session):
    user_id = str(uuid.uuid4())
    messages.deliver(db_session, updated(user_id, roles=["user", "editor"]), T0 + timedelta(1))
    messages.apply_user_created(db_session, created_data(user_id), T0)
    db_session.commit()
    profile = db_session.get(Profile, user_id)
    assert (profile.email, profile.roles) == ("ada@example.com", ["user", "editor"])


def test_an_updated_for_a_deleted_user_changes_nothing(db_session):
    user_id = str(uuid.uuid4())
    messages.apply_user_deleted(db_session, user_id, T0)
    messages.deliver(db_session, updated(user_id, roles=["admin"]), T0 + timedelta(1))
    db_session.commit()
    assert db_session.get(Profile, user_id) is None


@pytest.mark.parametrize(
    "changes", [{}, {"roles": "admin"}, {"is_active": "no"}, {"password": "x"}], ids=str
)
def test_an_updated_that_can_never_apply_is_invalid(db_session, changes):
    with pytest.raises(InvalidMessage):
        messages.deliver(db_session, updated(str(uuid.uuid4()), **changes), T0)


# -- session_revoked: one login session ends -----------------------------------------


def session_revoked(user_id: str, session_id: str, expires_at: float) -> dict:
    return {
        "user_id": user_id,
        "action": "session_revoked",
        "session_id": session_id,
        "expires_at": expires_at,
    }


def test_session_revoked_refuses_that_sessions_tokens_and_no_others(client, signer, db_session):
    user_id, ended, other = (str(uuid.uuid4()) for _ in range(3))
    ended_token = signer.token(user_id, sid=ended)
    other_token = signer.token(user_id, sid=other)
    assert client.get(ME, headers=bearer(ended_token)).status_code == 200
    messages.deliver(db_session, session_revoked(user_id, ended, time.time() + 900), T0)
    db_session.commit()
    response = client.get(ME, headers=bearer(ended_token))
    assert response.status_code == 401
    assert response.get_json()["message"] == "Invalid token: token revoked"
    assert client.get(ME, headers=bearer(other_token)).status_code == 200


def test_session_revoked_before_the_profile_exists_still_refuses(client, signer, db_session):
    user_id, sid = str(uuid.uuid4()), str(uuid.uuid4())
    messages.deliver(db_session, session_revoked(user_id, sid, time.time() + 900), T0)
    db_session.commit()
    assert client.get(ME, headers=bearer(signer.token(user_id, sid=sid))).status_code == 401


def test_a_revoked_session_is_forgotten_once_its_tokens_are_long_expired(db_session):
    user_id = str(uuid.uuid4())
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    messages.deliver(db_session, session_revoked(user_id, old, time.time() - 3600), T0)
    messages.deliver(db_session, session_revoked(user_id, new, time.time() + 900), T0)
    db_session.commit()
    assert db_session.get(RevokedSession, old) is None
    assert db_session.get(RevokedSession, new) is not None


def test_times_further_ahead_than_can_be_are_invalid(app):
    check = future_times(app.extensions["settings"])
    user_id = str(uuid.uuid4())
    now = time.time()
    check(messages.envelope(session_revoked(user_id, str(uuid.uuid4()), now + 900), T0))
    check(messages.envelope(sessions_revoked_data(user_id, now + 1), T0))
    with pytest.raises(InvalidMessage):
        check(messages.envelope(session_revoked(user_id, str(uuid.uuid4()), now + 7200), T0))
    with pytest.raises(InvalidMessage):
        check(messages.envelope(sessions_revoked_data(user_id, now + 3600), T0))


def sessions_revoked_data(user_id: str, revoked_before: float) -> dict:
    return {"user_id": user_id, "action": "sessions_revoked", "revoked_before": revoked_before}


# -- a token verified once is still checked against revocation on every request ---------


@pytest.mark.parametrize("ending", ["session_revoked", "sessions_revoked", "deleted", "disabled"])
def test_a_token_whose_signature_is_remembered_is_still_refused_once_revoked(
    app, client, signer, db_session, ending
):
    user_id, sid = str(uuid.uuid4()), str(uuid.uuid4())
    token = signer.token(user_id, sid=sid, iat=int(time.time()) - 5)
    for _ in range(2):
        assert client.get(ME, headers=bearer(token)).status_code == 200
    # Its signature and claims are not verified again...
    assert token in app.extensions["bearer_auth"].verifier._verified
    if ending == "session_revoked":
        messages.deliver(db_session, session_revoked(user_id, sid, time.time() + 900), T0)
        db_session.commit()
    elif ending == "sessions_revoked":
        revoke(db_session, user_id, math.floor(time.time()) + 1)
    elif ending == "deleted":
        messages.apply_user_deleted(db_session, user_id, utcnow())
        db_session.commit()
    else:
        db_session.get(Profile, user_id).is_active = False
        db_session.commit()
    # ...but whether it still works is asked on every request.
    expected = 403 if ending == "disabled" else 401
    assert client.get(ME, headers=bearer(token)).status_code == expected
