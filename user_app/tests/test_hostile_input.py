"""What a hostile client sends the user service, on PostgreSQL: always a 4xx, never a 500.

Strings PostgreSQL cannot store in a body or a query string, JSON Python
cannot load, role names with a trailing newline and odd headers, each sent for real.
"""

from __future__ import annotations

import pytest

from common.fields import ROLE_NAME_ERROR, TEXT_ERROR
from tests.support.hostile_requests import (
    HUGE,
    NUL,
    ODD_AUTHORIZATION,
    ODD_REQUEST_IDS,
    SURROGATE,
    UNLOADABLE,
    json_operations,
    request_strings,
    send_json,
    strings_that_may_hold_nul,
)
from tests.support.servers import fresh_postgres_database

ME = "/api/v1/users/me"
USERS = "/api/v1/users"


@pytest.fixture(scope="module")
def pg_url():
    with fresh_postgres_database("user_hostile") as url:
        yield url


@pytest.fixture
def database_url(pg_url):
    return pg_url


@pytest.fixture
def user(client, as_user) -> tuple[dict, str]:
    """Headers of a user whose profile exists, and their id."""
    headers, user_id = as_user()
    assert client.get(ME, headers=headers).status_code == 200
    return headers, user_id


def profile(client, admin, user_id: str) -> dict:
    return client.get(f"{USERS}/{user_id}", headers=admin[0]).get_json()


def assert_refused_as_unstorable(response, location: str, field: str) -> None:
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["message"]
    assert TEXT_ERROR in body["errors"][location][field]


CHARACTERS = pytest.mark.parametrize("character", [NUL, SURROGATE], ids=["nul", "surrogate"])
PROFILE_FIELDS = {
    "display_name": "Ada",
    "bio": "Analyst",
    "avatar_url": "https://example.com/a.png",
}


@CHARACTERS
@pytest.mark.parametrize("field", list(PROFILE_FIELDS))
def test_a_nul_or_lone_surrogate_in_your_profile_is_422_and_changes_nothing(
    client, user, admin, field, character
):
    headers, user_id = user
    before = profile(client, admin, user_id)
    value = PROFILE_FIELDS[field]
    response = send_json(client, "patch", ME, {field: value[:3] + character + value[3:]}, headers)
    assert_refused_as_unstorable(response, "json", field)
    assert profile(client, admin, user_id) == before


@CHARACTERS
@pytest.mark.parametrize("field", list(PROFILE_FIELDS))
def test_a_nul_or_lone_surrogate_in_an_administrators_change_is_422(
    client, user, admin, field, character
):
    _, user_id = user
    before = profile(client, admin, user_id)
    changes = {field: PROFILE_FIELDS[field] + character, "is_active": False}
    response = send_json(client, "patch", f"{USERS}/{user_id}", changes, admin[0])
    assert_refused_as_unstorable(response, "json", field)
    assert profile(client, admin, user_id) == before


@CHARACTERS
def test_a_nul_or_lone_surrogate_in_a_role_name_is_422(client, user, admin, character):
    _, user_id = user
    changes = {"roles": ["user", "admin" + character]}
    response = send_json(client, "patch", f"{USERS}/{user_id}", changes, admin[0])
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]["roles"] == {"1": [TEXT_ERROR]}


def test_a_role_name_with_a_trailing_newline_is_not_a_role_name(client, user, admin):
    _, user_id = user
    response = send_json(client, "patch", f"{USERS}/{user_id}", {"roles": ["admin\n"]}, admin[0])
    assert response.status_code == 422
    assert response.get_json()["errors"]["json"]["roles"] == {"0": [ROLE_NAME_ERROR]}
    assert profile(client, admin, user_id)["roles"] == ["user"]


def test_a_nul_in_the_search_is_422(client, user, admin):
    response = client.get(f"{USERS}?q=ad%00a", headers=admin[0])
    assert_refused_as_unstorable(response, "query", "q")


def test_a_surrogate_cannot_even_arrive_in_a_query_string(client, user, admin):
    # A URL carries UTF-8: the bytes of a surrogate decode as replacement characters.
    response = client.get(f"{USERS}?q=%ED%A0%80", headers=admin[0])
    assert response.status_code == 200
    assert response.get_json() == []


@pytest.mark.parametrize(
    "query",
    [f"page={HUGE}", f"page_size={HUGE}", f"page=-{HUGE}", "is_active=%00", "%00=1", "q=%00"],
    ids=["huge-page", "huge-page-size", "huge-negative-page", "nul-flag", "nul-name", "nul-q"],
)
def test_odd_listing_parameters_are_422(client, admin, query):
    response = client.get(f"{USERS}?{query}", headers=admin[0])
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["errors"]


def test_every_string_a_client_sends_the_user_service_refuses_nul(client):
    # One shared field (common.fields.Text) refuses what PostgreSQL cannot store, and
    # says so in the document: no schema may forget it.
    document = client.get("/openapi.json").get_json()
    assert len(list(request_strings(document))) >= 8
    assert strings_that_may_hold_nul(document) == []


@pytest.mark.parametrize("body", list(UNLOADABLE.values()), ids=list(UNLOADABLE))
def test_json_python_cannot_load_is_400_at_every_json_endpoint(client, admin, body):
    headers, admin_id = admin
    assert client.get(ME, headers=headers).status_code == 200
    operations = json_operations(client.get("/openapi.json").get_json())
    assert len(operations) >= 2
    for method, path in operations:
        path = path.replace("{user_id}", admin_id)
        response = send_json(client, method, path, body, headers)
        assert response.status_code == 400, (method, path, response.get_json())
        answer = response.get_json()
        assert answer["message"].startswith("Invalid JSON body: ")
        assert answer["errors"]["json"]


@pytest.mark.parametrize("value", list(ODD_AUTHORIZATION.values()), ids=list(ODD_AUTHORIZATION))
def test_an_odd_authorization_header_is_401(client, value):
    response = client.get(ME, headers={"Authorization": value})
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("value", list(ODD_REQUEST_IDS.values()), ids=list(ODD_REQUEST_IDS))
def test_an_odd_request_id_is_replaced(client, value):
    # Straight into the WSGI environ: the test client refuses a newline in a header.
    response = client.get("/health", environ_overrides={"HTTP_X_REQUEST_ID": value})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] != value
    assert len(response.headers["X-Request-ID"]) == 32
