"""The authenticated-read ceiling: the least a Flask view can do for ``GET /api/v1/users/me``.

It verifies the same token with a key loaded once, reads the same profile row by
primary key with SQLAlchemy and returns the same JSON, with none of the
service's framework (no flask-smorest, no request ids, no revocation check).
Served by gunicorn with the same settings: ``gunicorn --config gunicorn.conf.py
'bench.bare_app:create_app()'``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask, abort, jsonify, request
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from user_app.models import Profile

FIELDS = ("id", "email", "username", "display_name", "bio", "avatar_url", "roles", "is_active")


def profile_json(profile: Profile) -> dict:
    """The profile as the user service returns it."""
    body = {name: getattr(profile, name) for name in FIELDS}
    body["created_at"] = profile.created_at.isoformat()
    body["updated_at"] = profile.updated_at.isoformat()
    return body


def create_app() -> Flask:
    """The bare app, configured from the same variables as the user service."""
    app = Flask(__name__)
    key = load_pem_public_key(Path(os.environ["PUBLIC_KEY_PATH"]).read_bytes())
    issuer = os.environ.get("JWT_ISSUER", "http://127.0.0.1:5001")
    audience = os.environ.get("JWT_AUDIENCE", "user-service")
    engine = create_engine(
        os.environ["USER_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1),
        hide_parameters=True,
    )

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/api/v1/users/me")
    def me():
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=issuer)
        except jwt.PyJWTError:
            abort(401)
        with Session(engine) as session:
            profile = session.get(Profile, claims["sub"])
            if profile is None:
                abort(404)
            return jsonify(profile_json(profile))

    return app
