"""GET and PATCH /api/v1/users/me: a user's own profile."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from common.flask_db import Database
from user_app import profiles
from user_app.models import Base, Profile
from user_app.tests.conftest import outbox_bodies

ME = "/api/v1/users/me"


def test_first_request_creates_the_profile_from_the_token(client, as_user):
    headers, user_id = as_user(email="Ada@Example.com", username="ada", roles=["user"])
    response = client.get(ME, headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == user_id
    assert (body["email"], body["username"], body["roles"]) == ("ada@example.com", "ada", ["user"])
    assert body["is_active"] is True
    assert body["display_name"] is None and body["bio"] is None and body["avatar_url"] is None
    assert set(body) == {
        "id", "email", "username", "display_name", "bio", "avatar_url",
        "roles", "is_active", "email_verified", "created_at", "updated_at",
    }  # fmt: skip


def test_second_request_returns_the_same_profile(client, as_user, db_session):
    headers, user_id = as_user()
    first = client.get(ME, headers=headers).get_json()
    second = client.get(ME, headers=headers).get_json()
    assert first == second
    assert db_session.query(Profile).filter_by(id=user_id).count() == 1


def test_without_a_token_is_401_with_a_bearer_challenge(client):
    response = client.get(ME)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error=" not in response.headers["WWW-Authenticate"]
    assert response.get_json()["message"]


def test_patch_sets_and_clears_fields(client, as_user):
    headers, _ = as_user()
    changes = {
        "display_name": "Ada L.",
        "bio": "Counts things.",
        "avatar_url": "https://img.example.com/ada.png",
    }
    response = client.patch(ME, json=changes, headers=headers)
    assert response.status_code == 200
    assert {k: response.get_json()[k] for k in changes} == changes
    response = client.patch(ME, json={"bio": None}, headers=headers)
    assert response.get_json()["bio"] is None
    assert response.get_json()["display_name"] == "Ada L."
    assert client.get(ME, headers=headers).get_json()["display_name"] == "Ada L."


def test_patch_accepts_the_longest_allowed_values(client, as_user):
    headers, _ = as_user()
    url = "http://localhost/" + "a" * (2048 - len("http://localhost/"))
    response = client.patch(
        ME, json={"display_name": "d" * 100, "bio": "b" * 2000, "avatar_url": url}, headers=headers
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"display_name": "d" * 101},
        {"bio": "b" * 2001},
        {"avatar_url": "https://example.com/" + "a" * 2030},
        {"avatar_url": "javascript:alert(1)"},
        {"avatar_url": "data:image/png;base64,AAAA"},
        {"avatar_url": "/relative/path.png"},
        {"avatar_url": "ftp://example.com/a.png"},
        {"avatar_url": "not a url"},
        {"display_name": 42},
        {"is_active": False},
        {"roles": ["admin"]},
        {"email": "new@example.com"},
    ],
    ids=[
        "long-name", "long-bio", "long-url", "javascript", "data", "relative", "ftp",
        "not-url", "name-not-string", "is_active", "roles", "email",
    ],
)  # fmt: skip
def test_patch_refuses_bad_or_unknown_fields_with_422(client, as_user, changes):
    headers, _ = as_user()
    before = client.get(ME, headers=headers).get_json()
    response = client.patch(ME, json=changes, headers=headers)
    assert response.status_code == 422
    assert response.get_json()["errors"]
    assert client.get(ME, headers=headers).get_json() == before


def test_patch_with_a_body_that_is_not_json_is_a_clear_4xx(client, as_user):
    headers, _ = as_user()
    response = client.patch(ME, data="{not json", headers=headers, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert response.get_json()["message"]


def test_patch_by_a_user_whose_sync_has_not_arrived_creates_the_profile(client, as_user):
    headers, user_id = as_user()
    response = client.patch(ME, json={"display_name": "Early"}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["id"] == user_id
    assert response.get_json()["display_name"] == "Early"


def test_own_edits_write_no_event(client, as_user, db_session):
    headers, _ = as_user()
    client.patch(ME, json={"display_name": "Quiet"}, headers=headers)
    assert outbox_bodies(db_session) == []


def test_two_first_requests_racing_both_get_the_one_profile(signer, tmp_path):
    """On a real file database, concurrent first requests never answer 500 or make two rows."""
    from user_app import create_app
    from user_app.tests.conftest import app_config, bearer

    url = f"sqlite:///{tmp_path / 'race.db'}"
    app = create_app(app_config(signer, DATABASE_URL=url))
    headers = bearer(signer.token())
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def first_request():
        client = app.test_client()
        barrier.wait()
        statuses.append(client.get(ME, headers=headers).status_code)

    threads = [threading.Thread(target=first_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200, 200, 200]
    with app.extensions["database"].sessionmaker() as session:
        assert session.query(Profile).count() == 1
    app.extensions["database"].engine.dispose()


def test_ensure_profile_when_another_transaction_created_it_first(signer, tmp_path):
    """The insert loses the race (the row appeared after our lookup) and re-reads the winner."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'lost.db'}")
    Base.metadata.create_all(database.engine)
    claims = signer.claims()
    with database.sessionmaker() as winner:
        profiles.ensure_profile(winner, claims)
        winner.get(Profile, claims["sub"]).display_name = "Winner"
        winner.commit()
    with database.sessionmaker() as loser:
        # As if the lookup ran just before the winner committed.
        original_get = loser.get
        calls = []

        def get_missing_once(model, ident, **kwargs):
            if model is Profile and not calls:
                calls.append(ident)
                return None
            return original_get(model, ident, **kwargs)

        loser.get = get_missing_once
        profile = profiles.ensure_profile(loser, claims)
        loser.commit()
        assert profile.display_name == "Winner"
        assert loser.query(Profile).count() == 1
    database.engine.dispose()


def test_profile_timestamps_are_utc(client, as_user):
    headers, _ = as_user()
    body = client.get(ME, headers=headers).get_json()
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() == UTC.utcoffset(None)


def test_me_answers_from_the_row_the_token_check_read_as_the_profile_reads(client, as_user, admin):
    # GET /me dumps the row the token check read; an administrator's GET and
    # the user's own PATCH dump a loaded Profile: the same profile, the same body.
    headers, user_id = as_user(email="ada@example.com", username="ada", roles=["user"])
    client.get(ME, headers=headers)  # created from the token
    changed = client.patch(ME, json={"bio": "Notes on the Engine"}, headers=headers)
    assert changed.status_code == 200
    mine = client.get(ME, headers=headers)
    theirs = client.get(f"/api/v1/users/{user_id}", headers=admin[0])
    assert mine.status_code == theirs.status_code == 200
    assert mine.get_json() == theirs.get_json() == changed.get_json()
    assert mine.get_json()["bio"] == "Notes on the Engine"
