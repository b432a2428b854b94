"""A resource server that knows only the issuer verifies a real token, as its library would.

The auth service runs under gunicorn as the Procfile runs it, with
``JWT_ISSUER`` its own address. PyJWT's ``PyJWKClient`` is pointed at the
``jwks_uri`` the discovery document names, and verifies the access token of
a real registration and login with the algorithms and issuer the document
gives.
"""

from __future__ import annotations

import uuid

import jwt

from tests.e2e.client import call
from tests.e2e.processes import free_port, tail
from tests.support.servers import run_id
from tests.test_web_line import migrate, start_line, stop, wait_for_health, web_environ

AUDIENCE = "user-service"


def test_a_resource_server_verifies_a_real_token_with_the_keys_discovery_points_to(
    tmp_path, procfile
):
    marker = run_id()
    env = web_environ(tmp_path, marker)
    migrate("auth", env)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env.update(AUTH_BIND=f"127.0.0.1:{port}", JWT_ISSUER=issuer, JWT_AUDIENCE=AUDIENCE)
    log_path = tmp_path / "auth.log"
    process = start_line(procfile["auth"], env, log_path)
    try:
        health = wait_for_health(process, issuer)
        assert health is not None and health.status == 200, tail(log_path)
        name = f"rs_{uuid.uuid4().hex[:8]}"
        account = {"email": f"{name}@example.com", "password": "correct-Horse-battery-9"}
        registered = call(
            "POST", f"{issuer}/api/v1/auth/register", json={**account, "username": name}
        )
        assert registered.status == 201, registered.json
        token = call("POST", f"{issuer}/api/v1/auth/login", json=account).json["access_token"]

        document = call("GET", f"{issuer}/.well-known/openid-configuration").json
        assert document["issuer"] == issuer
        assert call("GET", f"{issuer}/.well-known/oauth-authorization-server").json == document

        keys = jwt.PyJWKClient(document["jwks_uri"])
        key = keys.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=document["id_token_signing_alg_values_supported"],
            issuer=document["issuer"],
            audience=AUDIENCE,
        )
        assert claims["sub"] == registered.json["id"]
        assert claims["iss"] == issuer
        # The token's kid is one of the keys the document's jwks_uri serves.
        assert key.key_id == jwt.get_unverified_header(token)["kid"]
    finally:
        left = stop(process, marker)
    assert left == {}
