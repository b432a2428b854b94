"""Fixtures: an auth service on in-memory SQLite and the real Redis, under a fresh key prefix."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from auth_app import create_app
from auth_app.models import Mail, OutboxEvent
from common.keys import load_private_key
from tests.support.servers import check_redis, run_id, write_test_keys

PASSWORD = "Tr0ub4dor&3-staple"
# The resource server the test apps let introspect tokens: (id, secret).
INTROSPECTION_CLIENT = ("resource-server", "rs-secret-1f0c6e")


@pytest.fixture(scope="session")
def redis_client():
    """The real Redis; fails (never skips) with how to start it when it is down."""
    return check_redis()


@pytest.fixture(scope="session")
def redis_prefix(redis_client):
    """A key prefix of this test run; its keys are deleted at the end."""
    prefix = f"test:auth:{run_id()}:"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
        redis_client.delete(key)


@pytest.fixture(scope="session")
def key_paths(tmp_path_factory) -> tuple[Path, Path]:
    """A fresh test key pair: (private, public)."""
    return write_test_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def private_key(key_paths):
    """The signing key of the test apps, to forge tokens with."""
    return load_private_key(key_paths[0].read_bytes(), "test key")


def app_settings(key_paths: tuple[Path, Path], redis_prefix: str, **overrides) -> dict:
    """Test settings of an auth app under a fresh Redis namespace; ``overrides`` win."""
    namespace = f"{redis_prefix}{uuid.uuid4().hex[:8]}:"
    config = {
        "TESTING": True,
        "DATABASE_URL": "sqlite://",
        "CREATE_SCHEMA": True,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "REDIS_KEY_PREFIX": namespace,
        "RATELIMIT_KEY_PREFIX": namespace + "limiter",
        "RATELIMIT_ENABLED": False,
        "PRIVATE_KEY_PATH": key_paths[0],
        "PUBLIC_KEY_PATH": key_paths[1],
        "JWT_PRIVATE_KEY": None,
        "JWT_PUBLIC_KEY": None,
        "BCRYPT_ROUNDS": 4,
        "LOG_FORMAT": "text",
        "INTROSPECTION_CLIENTS": (INTROSPECTION_CLIENT,),
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(key_paths, redis_prefix):
    """Build an auth app with test settings; keyword arguments override them."""

    def factory(**overrides):
        return create_app(app_settings(key_paths, redis_prefix, **overrides))

    return factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def bearer(token: str) -> dict:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def basic(client_id: str, secret: str) -> dict:
    """The HTTP Basic Authorization header of a client (RFC 7617)."""
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")
    return {"Authorization": f"Basic {credentials}"}


def introspect(client, token: str, credentials: tuple[str, str] = INTROSPECTION_CLIENT):
    """POST the token to the introspection endpoint as the test resource server."""
    return client.post(
        "/api/v1/auth/introspect", json={"token": token}, headers=basic(*credentials)
    )


class Accounts:
    """Registers and logs in users through the API."""

    def __init__(self, client):
        self.client = client

    def register(self, name: str | None = None, password: str = PASSWORD, **extra) -> dict:
        """Register a user (a fresh name when omitted); return the user body."""
        name = name or f"user_{uuid.uuid4().hex[:8]}"
        body = {"email": f"{name}@example.com", "username": name, "password": password}
        body.update(extra)
        response = self.client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 201, response.json
        return response.json

    def login(self, email: str, password: str = PASSWORD) -> dict:
        """Log in by email; return the token pair."""
        response = self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        )
        assert response.status_code == 200, response.json
        return response.json

    def register_and_login(self, name: str | None = None, password: str = PASSWORD):
        """A new user and a token pair of it: (user, tokens)."""
        user = self.register(name, password)
        return user, self.login(user["email"], password)


@pytest.fixture
def accounts(client) -> Accounts:
    return Accounts(client)


def outbox_messages(app) -> list[dict]:
    """Every event the app has written to its outbox, parsed, oldest first."""
    session = app.extensions["database"].sessionmaker()
    try:
        rows = session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
        return [json.loads(row.body) for row in rows]
    finally:
        session.close()


def mailbox(app, to: str | None = None, kind: str | None = None) -> list[Mail]:
    """The mails the app has queued for the mailer (to ``to``, of ``kind``), oldest first."""
    session = app.extensions["database"].sessionmaker()
    try:
        query = select(Mail).order_by(Mail.created_at, Mail.id)
        if to is not None:
            query = query.where(Mail.recipient == to)
        if kind is not None:
            query = query.where(Mail.kind == kind)
        mails = list(session.scalars(query))
        session.expunge_all()
        return mails
    finally:
        session.close()


def mailed_token(mail: Mail) -> str:
    """The token of the link a queued mail carries."""
    found = re.search(r"\?token=([\w-]+)", mail.text_body or "")
    assert found is not None, f"no link in the {mail.kind} mail"
    return found.group(1)
