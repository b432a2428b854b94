"""What every client sees regardless of endpoint: errors, limits, ids, docs, health."""

from __future__ import annotations

import json
import uuid

from tests.support.docs_page import check_docs_page
from user_app import create_app
from user_app.tests.conftest import app_config, bearer

ME = "/api/v1/users/me"


def test_a_body_over_64_kib_is_413_with_a_message(client, as_user):
    headers, _ = as_user()
    body = json.dumps({"bio": "x" * (65 * 1024)})
    response = client.patch(ME, data=body, headers=headers, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["message"]


def test_unknown_path_is_404_with_a_message(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["message"]


def test_wrong_method_is_405_with_a_message(client, as_user):
    headers, _ = as_user()
    for response in (
        client.put(ME, headers=headers),
        client.post("/api/v1/users", headers=headers),
    ):
        assert response.status_code == 405
        assert response.get_json()["message"]


def test_405_says_which_methods_the_path_allows(client):
    """RFC 9110: a 405 carries ``Allow``; routing answers it before any token is looked at."""
    for method, path, allowed in (
        ("PUT", ME, {"GET", "HEAD", "PATCH", "OPTIONS"}),
        ("POST", "/api/v1/users", {"GET", "HEAD", "OPTIONS"}),
        ("POST", f"/api/v1/users/{uuid.uuid4()}", {"GET", "HEAD", "PATCH", "DELETE", "OPTIONS"}),
        ("DELETE", "/health/ready", {"GET", "HEAD", "OPTIONS"}),
    ):
        response = client.open(path, method=method)
        assert response.status_code == 405, (method, path)
        assert set(response.headers["Allow"].split(", ")) == allowed, (method, path)
        assert response.get_json()["message"]


def test_the_callers_request_id_is_echoed_and_a_bad_one_replaced(client):
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == (
        "abc-123"
    )
    replaced = client.get("/health", headers={"X-Request-ID": "x" * 129}).headers["X-Request-ID"]
    assert replaced and replaced != "x" * 129


def test_liveness_and_readiness(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"database": "ok"}}


def test_docs_are_served_without_any_cdn(client):
    response = client.get("/docs")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "swagger-ui" in page.lower()
    assert "http://" not in page and "https://" not in page
    asset = client.get("/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200


def test_docs_load_only_their_own_assets_under_a_same_origin_policy(client):
    loaded = check_docs_page(client)
    assert "/docs/assets/swagger-ui-bundle.js" in loaded


def test_openapi_document_lists_the_user_paths(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = json.loads(response.data)
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"/api/v1/users/me", "/api/v1/users", "/api/v1/users/{user_id}"} <= set(paths)
    listing = {p["name"] for p in paths["/api/v1/users"]["get"]["parameters"]}
    assert {"page", "page_size", "q", "is_active"} <= listing
    assert paths["/api/v1/users/me"]["get"]["security"] == [{"bearerAuth": []}]


def unreachable_database_app(signer):
    # Nothing listens on port 1: every connection is refused at once.
    url = "postgresql+psycopg2://postgres@127.0.0.1:1/users"
    return create_app(app_config(signer, DATABASE_URL=url, CREATE_SCHEMA=False))


def test_an_unreachable_database_is_503_with_a_clear_message(signer):
    client = unreachable_database_app(signer).test_client()
    response = client.get(ME, headers=bearer(signer.token()))
    assert response.status_code == 503
    body = response.get_json()
    assert "database" in body["message"]
    assert "127.0.0.1" not in json.dumps(body)


def test_readiness_reports_an_unreachable_database(signer):
    client = unreachable_database_app(signer).test_client()
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "checks": {"database": "unavailable"}}
    assert client.get("/health").status_code == 200


def test_cors_allows_only_configured_origins(signer):
    app = create_app(app_config(signer, CORS_ORIGINS=["https://app.example"]))
    client = app.test_client()
    allowed = client.get("/api/v1/users/me", headers={"Origin": "https://app.example"})
    assert allowed.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    refused = client.get("/api/v1/users/me", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers
