"""Every flow writes its user.sync event in the contract's envelope, in the same transaction."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from auth_app.tests.conftest import PASSWORD, bearer, outbox_messages
from common.events import parse_envelope


def test_flows_write_user_sync_events_in_the_contract_envelope(app, client):
    request_ids = iter(f"req-{n}-{uuid.uuid4().hex[:6]}" for n in range(10))

    def call(method, path, token=None, **kwargs):
        request_id = next(request_ids)
        headers = {"X-Request-ID": request_id, **(bearer(token) if token else {})}
        response = client.open(path, method=method, headers=headers, **kwargs)
        assert response.status_code < 300, response.json
        return request_id, response

    body = {"email": "eve@example.com", "username": "Eve", "password": PASSWORD}
    created_id, registered = call("POST", "/api/v1/auth/register", json=body)
    user_id = registered.json["id"]
    _, login = call("POST", "/api/v1/auth/login", json={"username": "eve", "password": PASSWORD})
    token = login.json["access_token"]
    revoked_id, _ = call("POST", "/api/v1/auth/logout-all", token)
    _, login = call("POST", "/api/v1/auth/login", json={"username": "eve", "password": PASSWORD})
    new_password = "Another-Horse-Battery-7"
    changed_id, changed = call(
        "POST",
        "/api/v1/auth/password",
        login.json["access_token"],
        json={"current_password": PASSWORD, "new_password": new_password},
    )
    deleted_id, _ = call(
        "DELETE",
        "/api/v1/auth/me",
        changed.json["access_token"],
        json={"password": new_password},
    )

    messages = outbox_messages(app)
    assert [(m["data"]["action"], m["correlation_id"]) for m in messages] == [
        ("created", created_id),
        ("sessions_revoked", revoked_id),
        ("sessions_revoked", changed_id),
        ("deleted", deleted_id),
    ]
    for message in messages:
        assert set(message) == {
            "id", "type", "version", "occurred_at", "source", "correlation_id", "data"
        }  # fmt: skip
        assert message["type"] == "user.sync"
        assert message["version"] == 1
        assert message["source"] == "auth_app"
        assert message["data"]["user_id"] == user_id
        uuid.UUID(message["id"])
        datetime.fromisoformat(message["occurred_at"])
        parse_envelope(json.dumps(message))
    created = messages[0]["data"]
    assert created == {
        "user_id": user_id,
        "action": "created",
        "email": "eve@example.com",
        "username": "Eve",
        "roles": ["user"],
        "is_active": True,
        "email_verified": False,
        "created_at": registered.json["created_at"],
    }
    for revoked in messages[1:3]:
        assert isinstance(revoked["data"]["revoked_before"], int)
    assert messages[3]["data"] == {"user_id": user_id, "action": "deleted"}


def test_a_refused_registration_writes_no_event(app, client, accounts):
    accounts.register("frank")
    duplicate = {"email": "frank@example.com", "username": "frank2", "password": PASSWORD}
    assert client.post("/api/v1/auth/register", json=duplicate).status_code == 409
    weak = {"email": "g@example.com", "username": "gina", "password": "password"}
    assert client.post("/api/v1/auth/register", json=weak).status_code == 422
    assert len(outbox_messages(app)) == 1
