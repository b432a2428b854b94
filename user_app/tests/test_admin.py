"""Administration: listing, reading, editing and deleting other users' profiles."""

from __future__ import annotations

import json
import uuid

import pytest

from user_app.models import Profile, Tombstone
from user_app.tests.conftest import bearer, outbox_bodies

USERS = "/api/v1/users"


def make_profiles(client, as_user, count: int, **claims) -> list[str]:
    ids = []
    for _ in range(count):
        headers, user_id = as_user(**claims)
        assert client.get(f"{USERS}/me", headers=headers).status_code == 200
        ids.append(user_id)
    return ids


# -- listing --------------------------------------------------------------------


def test_listing_requires_the_admin_role(client, as_user):
    headers, _ = as_user()
    response = client.get(USERS, headers=headers)
    assert response.status_code == 403
    assert response.get_json()["message"]


def test_listing_without_a_token_is_401(client):
    assert client.get(USERS).status_code == 401


def test_listing_pages_in_creation_order_with_flask_smorest_pagination(client, as_user, admin):
    headers, admin_id = admin
    ids = [admin_id] if client.get(f"{USERS}/me", headers=headers).status_code == 200 else []
    ids += make_profiles(client, as_user, 4)
    first = client.get(USERS, query_string={"page": 1, "page_size": 2}, headers=headers)
    assert first.status_code == 200
    pagination = json.loads(first.headers["X-Pagination"])
    assert pagination["total"] == 5
    assert pagination["total_pages"] == 3
    assert pagination["next_page"] == 2
    last = client.get(USERS, query_string={"page": 3, "page_size": 2}, headers=headers)
    assert len(last.get_json()) == 1
    assert "next_page" not in json.loads(last.headers["X-Pagination"])
    pages = [
        client.get(USERS, query_string={"page": p, "page_size": 2}, headers=headers).get_json()
        for p in (1, 2, 3)
    ]
    assert [p["id"] for page in pages for p in page] == ids


def follow_cursors(client, headers, **query) -> list[list[str]]:
    """Every page of a listing by cursor: the first by number, the rest by ``after``."""
    response = client.get(USERS, query_string={**query}, headers=headers)
    pages = []
    while True:
        assert response.status_code == 200, response.get_json()
        pages.append([p["id"] for p in response.get_json()])
        cursor = json.loads(response.headers["X-Pagination"]).get("cursor")
        if cursor is None:
            return pages
        query.pop("page", None)
        response = client.get(USERS, query_string={**query, "after": cursor}, headers=headers)


def test_cursor_pages_list_everyone_once_in_creation_order(client, as_user, admin):
    headers, admin_id = admin
    ids = [admin_id] if client.get(f"{USERS}/me", headers=headers).status_code == 200 else []
    ids += make_profiles(client, as_user, 6)
    pages = follow_cursors(client, headers, page_size=2, page=1)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert [user_id for page in pages for user_id in page] == ids


def test_a_cursor_page_has_no_totals_and_the_last_no_cursor(client, as_user, admin):
    headers, _ = admin
    make_profiles(client, as_user, 3)
    first = client.get(USERS, query_string={"page_size": 2}, headers=headers)
    assert json.loads(first.headers["X-Pagination"])["total"] >= 3
    cursor = json.loads(first.headers["X-Pagination"])["cursor"]
    second = client.get(USERS, query_string={"page_size": 2, "after": cursor}, headers=headers)
    metadata = json.loads(second.headers["X-Pagination"])
    assert "total" not in metadata and "page" not in metadata
    assert metadata["page_size"] == 2


def test_a_cursor_keeps_its_place_when_earlier_profiles_go(client, as_user, admin):
    # Unlike a page number, a cursor neither skips nor repeats anyone when rows
    # before it are deleted between two pages.
    headers, _ = admin
    ids = make_profiles(client, as_user, 4)
    first = client.get(USERS, query_string={"page_size": 2, "q": ""}, headers=headers)
    shown = [p["id"] for p in first.get_json()]
    cursor = json.loads(first.headers["X-Pagination"])["cursor"]
    assert client.delete(f"{USERS}/{shown[0]}", headers=headers).status_code == 204
    rest = follow_cursors(client, headers, page_size=2, after=cursor)
    seen = shown + [user_id for page in rest for user_id in page]
    assert seen[-4:] == ids and len(seen) == len(set(seen))


def test_cursor_pages_keep_the_search_and_filter(client, as_user, admin):
    headers, _ = admin
    wanted = make_profiles(client, as_user, 3, email="cursor.search@corp.example")
    make_profiles(client, as_user, 3)
    pages = follow_cursors(client, headers, page_size=1, q="@corp.example")
    assert [user_id for page in pages for user_id in page] == wanted


@pytest.mark.parametrize(
    "after",
    ["not-a-cursor", "=" * 10, "MjAyNi0xMi0wNA", "bm90IGEgZGF0ZXx4", "x" * 201, "\u00e9\u00e9"],
)
def test_a_bad_cursor_is_422_with_a_message(client, admin, after):
    headers, _ = admin
    response = client.get(USERS, query_string={"after": after}, headers=headers)
    assert response.status_code == 422
    assert response.get_json()["errors"]["query"]["after"]


def test_an_empty_after_starts_a_listing_by_cursor_without_totals(client, as_user, admin):
    headers, admin_id = admin
    ids = [admin_id] if client.get(f"{USERS}/me", headers=headers).status_code == 200 else []
    ids += make_profiles(client, as_user, 3)
    first = client.get(USERS, query_string={"after": "", "page_size": 2}, headers=headers)
    assert first.status_code == 200
    metadata = json.loads(first.headers["X-Pagination"])
    assert "total" not in metadata and metadata["page_size"] == 2
    pages = follow_cursors(client, headers, page_size=2, after="")
    assert [user_id for page in pages for user_id in page] == ids


def test_with_after_the_page_number_is_ignored(client, as_user, admin):
    # The document cannot say that two query parameters exclude each other: the
    # cursor wins, and the answer is the cursor's page, without totals.
    headers, _ = admin
    make_profiles(client, as_user, 3)
    first = client.get(USERS, query_string={"page_size": 1}, headers=headers)
    cursor = json.loads(first.headers["X-Pagination"])["cursor"]
    alone = client.get(USERS, query_string={"after": cursor, "page_size": 1}, headers=headers)
    both = client.get(
        USERS, query_string={"page": 3, "after": cursor, "page_size": 1}, headers=headers
    )
    assert both.status_code == 200
    assert both.get_json() == alone.get_json()
    assert "total" not in json.loads(both.headers["X-Pagination"])


def test_page_beyond_the_end_is_an_empty_list(client, admin):
    headers, _ = admin
    response = client.get(USERS, query_string={"page": 50}, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == []


def test_default_page_size_is_20(client, as_user, admin):
    headers, _ = admin
    make_profiles(client, as_user, 21)
    assert len(client.get(USERS, headers=headers).get_json()) == 20


@pytest.mark.parametrize(
    "query",
    [
        {"page_size": 0},
        {"page_size": 101},
        {"page": 0},
        {"page": "two"},
        {"is_active": "maybe"},
        {"q": "x" * 201},
    ],
)
def test_bad_listing_parameters_are_422(client, admin, query):
    headers, _ = admin
    response = client.get(USERS, query_string=query, headers=headers)
    assert response.status_code == 422
    assert response.get_json()["errors"]


def test_page_size_100_is_allowed(client, admin):
    headers, _ = admin
    assert client.get(USERS, query_string={"page_size": 100}, headers=headers).status_code == 200


def test_search_is_a_case_insensitive_substring_of_email_username_or_display_name(
    client, as_user, admin
):
    headers, _ = admin
    by_email = make_profiles(client, as_user, 1, email="grace.hopper@navy.example")[0]
    by_username = make_profiles(client, as_user, 1, username="HopperFan")[0]
    named_headers, by_name = as_user()
    client.patch(f"{USERS}/me", json={"display_name": "Rear Admiral HOPPER"}, headers=named_headers)
    make_profiles(client, as_user, 2)
    response = client.get(USERS, query_string={"q": "hOpPeR"}, headers=headers)
    assert {p["id"] for p in response.get_json()} == {by_email, by_username, by_name}


@pytest.mark.parametrize("wildcard", ["%", "_"])
def test_search_wildcards_match_only_themselves(client, as_user, admin, wildcard):
    headers, _ = admin
    literal = make_profiles(client, as_user, 1, username=f"a{wildcard}b")[0]
    make_profiles(client, as_user, 1, username="axb")
    response = client.get(USERS, query_string={"q": f"a{wildcard}b"}, headers=headers)
    assert [p["id"] for p in response.get_json()] == [literal]


def test_search_with_a_backslash_is_literal(client, as_user, admin):
    headers, _ = admin
    literal = make_profiles(client, as_user, 1, username="back\\slash")[0]
    response = client.get(USERS, query_string={"q": "k\\s"}, headers=headers)
    assert [p["id"] for p in response.get_json()] == [literal]


def test_is_active_filter(client, as_user, admin):
    headers, _ = admin
    active, inactive = make_profiles(client, as_user, 2)
    client.patch(f"{USERS}/{inactive}", json={"is_active": False}, headers=headers)
    listed = client.get(USERS, query_string={"is_active": "false"}, headers=headers).get_json()
    assert [p["id"] for p in listed] == [inactive]
    listed = client.get(USERS, query_string={"is_active": "true"}, headers=headers).get_json()
    assert inactive not in [p["id"] for p in listed] and active in [p["id"] for p in listed]


# -- one user -------------------------------------------------------------------


def test_a_user_reads_their_own_profile_by_id(client, as_user):
    headers, user_id = as_user()
    response = client.get(f"{USERS}/{user_id}", headers=headers)
    assert response.status_code == 200
    assert response.get_json()["id"] == user_id


def test_a_user_cannot_read_someone_else(client, as_user):
    other = make_profiles(client, as_user, 1)[0]
    headers, _ = as_user()
    response = client.get(f"{USERS}/{other}", headers=headers)
    assert response.status_code == 403
    assert response.get_json()["message"]


def test_an_admin_reads_anyone(client, as_user, admin):
    other = make_profiles(client, as_user, 1)[0]
    response = client.get(f"{USERS}/{other}", headers=admin[0])
    assert response.status_code == 200
    assert response.get_json()["id"] == other


@pytest.mark.parametrize(
    "user_id", [str(uuid.uuid4()), "not-a-uuid", "1' OR '1'='1", "x" * 300, "%00"]
)
def test_unknown_or_malformed_ids_are_404(client, admin, user_id):
    for method in ("get", "patch", "delete"):
        kwargs = {"json": {"bio": "x"}} if method == "patch" else {}
        response = getattr(client, method)(f"{USERS}/{user_id}", headers=admin[0], **kwargs)
        assert response.status_code == 404, method
        assert response.get_json()["message"]


# -- admin edits ------------------------------------------------------------------


def test_admin_patch_changes_fields_and_reports_is_active_and_roles(
    client, as_user, admin, db_session
):
    target = make_profiles(client, as_user, 1)[0]
    response = client.patch(
        f"{USERS}/{target}",
        json={"is_active": False, "roles": ["user", "editor", "editor"], "bio": "Moderated"},
        headers={**admin[0], "X-Request-ID": "req-admin-42"},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["is_active"], body["roles"], body["bio"]) == (
        False,
        ["user", "editor"],
        "Moderated",
    )
    [event] = outbox_bodies(db_session)
    assert set(event) == {
        "id", "type", "version", "occurred_at", "source", "correlation_id", "data",
    }  # fmt: skip
    uuid.UUID(event["id"])
    assert event["type"] == "user.updated"
    assert event["version"] == 1
    assert event["source"] == "user_app"
    assert event["correlation_id"] == "req-admin-42"
    assert event["data"] == {
        "user_id": target,
        "changes": {"is_active": False, "roles": ["user", "editor"]},
    }


def test_admin_patch_reports_only_what_actually_changed(client, as_user, admin, db_session):
    target = make_profiles(client, as_user, 1, roles=["user"])[0]
    client.patch(
        f"{USERS}/{target}", json={"is_active": True, "roles": ["user", "mod"]}, headers=admin[0]
    )
    [event] = outbox_bodies(db_session)
    assert event["data"]["changes"] == {"roles": ["user", "mod"]}


def test_admin_patch_without_a_real_change_writes_no_event(client, as_user, admin, db_session):
    target = make_profiles(client, as_user, 1, roles=["user"])[0]
    response = client.patch(
        f"{USERS}/{target}",
        json={"display_name": "Renamed", "is_active": True, "roles": ["user"]},
        headers=admin[0],
    )
    assert response.status_code == 200
    assert response.get_json()["display_name"] == "Renamed"
    assert outbox_bodies(db_session) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"roles": ["Admin"]},
        {"roles": ["1admin"]},
        {"roles": ["a" * 33]},
        {"roles": [f"r{i}" for i in range(21)]},
        {"roles": "admin"},
        {"roles": None},
        {"is_active": "false"},
        {"is_active": 0},
        {"is_active": True, "avatar_url": "javascript:alert(1)"},
        {"email": "x@example.com"},
    ],
)
def test_admin_patch_with_bad_data_is_422_and_changes_nothing(
    client, as_user, admin, db_session, changes
):
    target = make_profiles(client, as_user, 1)[0]
    before = client.get(f"{USERS}/{target}", headers=admin[0]).get_json()
    response = client.patch(f"{USERS}/{target}", json=changes, headers=admin[0])
    assert response.status_code == 422
    assert client.get(f"{USERS}/{target}", headers=admin[0]).get_json() == before
    assert outbox_bodies(db_session) == []


def test_admin_patch_accepts_20_roles(client, as_user, admin):
    target = make_profiles(client, as_user, 1)[0]
    roles = [f"r{i}" for i in range(20)]
    response = client.patch(f"{USERS}/{target}", json={"roles": roles}, headers=admin[0])
    assert response.status_code == 200
    assert response.get_json()["roles"] == roles


def test_admin_only_endpoints_refuse_ordinary_users(client, as_user):
    target = make_profiles(client, as_user, 1)[0]
    headers, _ = as_user()
    assert client.patch(f"{USERS}/{target}", json={"bio": "x"}, headers=headers).status_code == 403
    assert client.delete(f"{USERS}/{target}", headers=headers).status_code == 403


def test_deactivation_takes_effect_at_once(client, as_user, admin):
    headers, target = as_user()
    assert client.get(f"{USERS}/me", headers=headers).status_code == 200
    client.patch(f"{USERS}/{target}", json={"is_active": False}, headers=admin[0])
    response = client.get(f"{USERS}/me", headers=headers)
    assert response.status_code == 403
    assert response.get_json()["message"] == "Account disabled"
    client.patch(f"{USERS}/{target}", json={"is_active": True}, headers=admin[0])
    assert client.get(f"{USERS}/me", headers=headers).status_code == 200


def test_roles_set_here_outrank_an_older_token(client, signer, admin):
    """An admin demoted here loses admin rights at once, although their token still says admin."""
    demoted = str(uuid.uuid4())
    demoted_headers = bearer(signer.token(demoted, roles=["user", "admin"]))
    assert client.get(f"{USERS}/me", headers=demoted_headers).status_code == 200
    assert client.get(USERS, headers=demoted_headers).status_code == 200
    response = client.patch(f"{USERS}/{demoted}", json={"roles": ["user"]}, headers=admin[0])
    assert response.status_code == 200
    assert client.get(USERS, headers=demoted_headers).status_code == 403


def test_roles_granted_here_count_even_if_the_token_lacks_them(client, signer, as_user, admin):
    headers, promoted = as_user(roles=["user"])
    client.get(f"{USERS}/me", headers=headers)
    client.patch(f"{USERS}/{promoted}", json={"roles": ["user", "admin"]}, headers=admin[0])
    assert client.get(USERS, headers=headers).status_code == 200


# -- deletion ----------------------------------------------------------------------


def test_delete_removes_the_profile_leaves_a_tombstone_and_emits_user_deleted(
    client, as_user, admin, db_session
):
    headers, target = as_user()
    client.get(f"{USERS}/me", headers=headers)
    response = client.delete(
        f"{USERS}/{target}", headers={**admin[0], "X-Request-ID": "req-delete-1"}
    )
    assert response.status_code == 204
    assert response.data == b""
    assert db_session.get(Profile, target) is None
    assert db_session.get(Tombstone, target) is not None
    [event] = outbox_bodies(db_session)
    assert event["type"] == "user.deleted"
    assert event["data"] == {"user_id": target}
    assert event["correlation_id"] == "req-delete-1"
    assert client.get(f"{USERS}/{target}", headers=admin[0]).status_code == 404
    assert client.delete(f"{USERS}/{target}", headers=admin[0]).status_code == 404


def test_a_deleted_users_token_is_refused(client, as_user, admin):
    headers, target = as_user()
    client.get(f"{USERS}/me", headers=headers)
    client.delete(f"{USERS}/{target}", headers=admin[0])
    response = client.get(f"{USERS}/me", headers=headers)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_an_admin_cannot_delete_themselves_here(client, admin, db_session):
    headers, admin_id = admin
    client.get(f"{USERS}/me", headers=headers)
    response = client.delete(f"{USERS}/{admin_id}", headers=headers)
    assert response.status_code == 403
    assert "/api/v1/auth/me" in response.get_json()["message"]
    assert db_session.get(Profile, admin_id) is not None
    assert outbox_bodies(db_session) == []


# -- roles from ROLES, and no administrator locks itself out ----------------------


def test_a_role_outside_roles_is_422_and_changes_nothing(client, as_user, admin, db_session):
    target = make_profiles(client, as_user, 1)[0]
    response = client.patch(
        f"{USERS}/{target}", json={"roles": ["user", "wizard"]}, headers=admin[0]
    )
    assert response.status_code == 422
    assert "wizard" in response.get_json()["errors"]["json"]["roles"][0]
    assert db_session.get(Profile, target).roles == ["user"]
    assert outbox_bodies(db_session) == []


@pytest.mark.parametrize(
    "change", [{"roles": ["user"]}, {"roles": []}, {"is_active": False}], ids=str
)
def test_an_administrator_cannot_demote_or_deactivate_itself(client, admin, db_session, change):
    headers, admin_id = admin
    assert client.get(f"{USERS}/me", headers=headers).status_code == 200
    response = client.patch(f"{USERS}/{admin_id}", json=change, headers=headers)
    assert response.status_code == 409
    assert response.get_json()["message"]
    profile = db_session.get(Profile, admin_id)
    assert (profile.roles, profile.is_active) == (["user", "admin"], True)
    assert outbox_bodies(db_session) == []


def test_an_administrator_may_edit_its_own_other_fields_and_keep_admin(client, admin):
    headers, admin_id = admin
    assert client.get(f"{USERS}/me", headers=headers).status_code == 200
    response = client.patch(
        f"{USERS}/{admin_id}",
        json={"bio": "Runs the place", "roles": ["admin", "user", "editor"]},
        headers=headers,
    )
    assert response.status_code == 200
    assert response.get_json()["roles"] == ["admin", "user", "editor"]
