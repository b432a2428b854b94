"""Fixtures: a user service on in-memory SQLite and tokens shaped like the auth service's."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from common.keys import thumbprint
from user_app import create_app
from user_app.models import OutboxEvent

ISSUER = "http://127.0.0.1:5001"
AUDIENCE = "user-service"


class Signer:
    """Signs access tokens the way the auth service does (RFC 9068 profile, RS256)."""

    def __init__(self, key: rsa.RSAPrivateKey):
        self.key = key
        self.kid = thumbprint(key.public_key())
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def claims(self, sub: str | None = None, **overrides) -> dict:
        """The claims of a fresh token; ``overrides`` replace or (with None) drop claims."""
        now = int(time.time())
        sub = sub or str(uuid.uuid4())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "client_id": "auth-service",
            "exp": now + 900,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "roles": ["user"],
            "email": f"{sub[:8]}@example.com",
            "username": f"user_{sub[:8]}",
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(self, sub: str | None = None, *, headers: dict | None = None, **claims) -> str:
        """A signed access token for ``sub`` (a new user when omitted)."""
        header = {"typ": "at+jwt", "kid": self.kid}
        header.update(headers or {})
        return jwt.encode(self.claims(sub, **claims), self.key, algorithm="RS256", headers=header)


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def other_signer(signer) -> Signer:
    """A stranger's key that claims our kid."""
    other = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    other.kid = signer.kid
    return other


def app_config(signer: Signer, **overrides) -> dict:
    """Test settings: in-memory SQLite with the schema created, our public key trusted."""
    config = {
        "TESTING": True,
        "DATABASE_URL": "sqlite://",
        "CREATE_SCHEMA": True,
        "JWT_PUBLIC_KEY": signer.public_pem,
        "AUTH_JWKS_URL": None,
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
        "JWT_LEEWAY_SECONDS": 10,
        # The roles the tests hand out, beside the two every deployment has.
        "ROLES": ("user", "admin", "editor", "mod", "beta", *(f"r{i}" for i in range(21))),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
    }
    config.update(overrides)
    return config


@pytest.fixture
def database_url() -> str:
    """The app's database: in-memory SQLite (test_on_postgresql.py reruns tests on PostgreSQL)."""
    return "sqlite://"


@pytest.fixture
def app(signer, database_url):
    app = create_app(app_config(signer, DATABASE_URL=database_url))
    yield app
    app.extensions["database"].engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db_session(app):
    """A session on the app's database, for arranging and inspecting rows."""
    session = app.extensions["database"].sessionmaker()
    yield session
    session.close()


def bearer(token: str) -> dict:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def as_user(signer):
    """Headers of a fresh ordinary user, and their id: ``headers, user_id = as_user()``."""

    def make(sub: str | None = None, **claims):
        sub = sub or str(uuid.uuid4())
        return bearer(signer.token(sub, **claims)), sub

    return make


@pytest.fixture
def admin(signer) -> tuple[dict, str]:
    """Headers of an administrator (by token role) and their id."""
    sub = str(uuid.uuid4())
    return bearer(signer.token(sub, roles=["user", "admin"])), sub


def outbox_bodies(session) -> list[dict]:
    """The envelopes waiting in the outbox, oldest first."""
    session.expire_all()
    rows = session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
    return [json.loads(row.body) for row in rows]
