"""Discovery metadata at /.well-known/openid-configuration and /oauth-authorization-server."""

from __future__ import annotations

import pytest

OPENID = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"
ISSUER = "https://auth.example.com/tenant-1"


@pytest.fixture
def client(make_app):
    return make_app(JWT_ISSUER=ISSUER).test_client()


def test_the_document_names_the_issuer_and_what_a_resource_server_needs(client):
    answer = client.get(OPENID)
    assert answer.status_code == 200
    assert answer.json == {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/.well-known/jwks.json",
        "token_endpoint": f"{ISSUER}/api/v1/auth/login",
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint": f"{ISSUER}/api/v1/auth/introspect",
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
        "service_documentation": f"{ISSUER}/docs",
    }


def test_rfc_8414_s_path_answers_the_same_document(client):
    assert client.get(RFC8414).json == client.get(OPENID).json


@pytest.mark.parametrize("path", [OPENID, RFC8414])
def test_the_document_is_cacheable_like_the_key_set(client, path):
    answer = client.get(path)
    assert (
        answer.headers["Cache-Control"]
        == client.get("/.well-known/jwks.json").headers["Cache-Control"]
    )
    assert answer.headers["Cache-Control"].startswith("public, max-age=")


def test_no_url_comes_from_the_request_s_host(make_app):
    client = make_app(JWT_ISSUER=ISSUER, TRUSTED_PROXY_COUNT=1).test_client()
    answer = client.get(
        OPENID,
        headers={
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-For": "203.0.113.9",
        },
    )
    assert "evil" not in answer.get_data(as_text=True)
    assert answer.json["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"


def test_an_issuer_with_a_trailing_slash_is_kept_exactly_and_joined_once(make_app):
    client = make_app(JWT_ISSUER="https://auth.example.com/").test_client()
    document = client.get(OPENID).json
    assert document["issuer"] == "https://auth.example.com/"
    assert document["jwks_uri"] == "https://auth.example.com/.well-known/jwks.json"


def test_the_jwks_uri_serves_the_keys_that_verify_the_service_s_tokens(make_app):
    client = make_app(JWT_ISSUER=ISSUER).test_client()
    path = client.get(OPENID).json["jwks_uri"].removeprefix(ISSUER)
    keys = client.get(path).json["keys"]
    assert keys and all(key["alg"] == "RS256" and key["use"] == "sig" for key in keys)


@pytest.mark.parametrize("path", [OPENID, RFC8414])
def test_both_paths_are_in_the_openapi_document(client, path):
    operation = client.get("/openapi.json").json["paths"][path]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Discovery"}
