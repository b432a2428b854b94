"""Configuration: the contract's variables and precedence, and one clear line when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import EXIT_CONFIG_ERROR, ConfigError
from common.jwks import JWKSKeySet
from common.keys import KeyRing, rotate_key_pair, thumbprint
from tests.support.servers import write_test_keys
from user_app import create_app
from user_app.config import database_url_from_env, load_settings
from user_app.tests.conftest import bearer

PG = "postgresql+psycopg2://u@db:5432/users"


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_settings(environ={})
    assert config.database_url == f"sqlite:///{tmp_path / 'var' / 'user.db'}"
    assert config.jwt_issuer == "http://127.0.0.1:5001"
    assert config.jwt_audience == "user-service"
    assert config.jwt_leeway_seconds == 10
    assert config.public_key_path == Path("keys/public.pem")
    assert config.auth_jwks_url is None
    assert config.jwks_refetch_cooldown_seconds == 60
    assert config.access_token_expire_minutes == 15
    assert config.max_content_length == 64 * 1024
    assert (config.log_level, config.log_format) == ("INFO", "json")


def test_database_url_precedence():
    postgres_parts = {"USER_POSTGRES_HOST": "pg", "USER_POSTGRES_DB": "profiles"}
    assert (
        database_url_from_env(postgres_parts) == "postgresql+psycopg2://postgres@pg:5432/profiles"
    )
    assert database_url_from_env({**postgres_parts, "DATABASE_URL": PG}) == PG
    env = {**postgres_parts, "DATABASE_URL": PG, "USER_DATABASE_URL": "postgres://x@y/z"}
    assert database_url_from_env(env) == "postgresql://x@y/z"


def test_a_pem_in_the_environment_with_escaped_newlines(signer):
    config = load_settings(
        {"DATABASE_URL": "sqlite://"},
        environ={"JWT_PUBLIC_KEY": signer.public_pem.replace("\n", "\\n")},
    )
    assert config.jwt_public_key == signer.public_pem


@pytest.mark.parametrize(
    "environ, variable",
    [
        ({"JWT_LEEWAY_SECONDS": "ten"}, "JWT_LEEWAY_SECONDS"),
        ({"JWT_LEEWAY_SECONDS": "3600"}, "JWT_LEEWAY_SECONDS"),
        ({"AUTH_JWKS_URL": "file:///etc/passwd"}, "AUTH_JWKS_URL"),
        ({"JWKS_REFETCH_COOLDOWN_SECONDS": "-1"}, "JWKS_REFETCH_COOLDOWN_SECONDS"),
        ({"USER_DATABASE_URL": "mysql://x/y"}, "USER_DATABASE_URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"ACCESS_TOKEN_EXPIRE_MINUTES": "0"}, "ACCESS_TOKEN_EXPIRE_MINUTES"),
    ],
)
def test_bad_values_name_the_variable(environ, variable, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ=environ)


def test_a_missing_key_file_stops_the_app_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PUBLIC_KEY_PATH", str(tmp_path / "absent.pem"))
    monkeypatch.delenv("JWT_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("AUTH_JWKS_URL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        create_app({"DATABASE_URL": "sqlite://"})
    assert exit_info.value.code == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("configuration error: PUBLIC_KEY_PATH")


def test_a_bad_variable_stops_the_app_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("JWT_LEEWAY_SECONDS", "soon")
    with pytest.raises(SystemExit):
        create_app({"DATABASE_URL": "sqlite://"})
    assert capsys.readouterr().err == (
        "configuration error: JWT_LEEWAY_SECONDS must be an integer, got 'soon'\n"
    )


def test_key_files_from_public_key_path(tmp_path, monkeypatch):
    _, public = write_test_keys(tmp_path)
    monkeypatch.delenv("JWT_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("AUTH_JWKS_URL", raising=False)
    monkeypatch.setenv("PUBLIC_KEY_PATH", str(public))
    app = create_app({"DATABASE_URL": "sqlite://", "CREATE_SCHEMA": True})
    keys = app.extensions["bearer_auth"].verifier.keys
    assert isinstance(keys, KeyRing)
    assert keys.public_path == public


def test_a_jwks_url_wins_over_key_files(tmp_path, monkeypatch, signer):
    _, public = write_test_keys(tmp_path)
    monkeypatch.setenv("PUBLIC_KEY_PATH", str(public))
    monkeypatch.setenv("AUTH_JWKS_URL", "http://127.0.0.1:1/.well-known/jwks.json")
    monkeypatch.setenv("JWKS_REFETCH_COOLDOWN_SECONDS", "5")
    app = create_app({"DATABASE_URL": "sqlite://", "CREATE_SCHEMA": True})
    keys = app.extensions["bearer_auth"].verifier.keys
    assert isinstance(keys, JWKSKeySet)
    assert keys.cooldown == 5
    # The auth service is down: the app still answers, with 401 for tokens it cannot check.
    response = app.test_client().get("/api/v1/users/me", headers=bearer(signer.token()))
    assert response.status_code == 401


def test_a_rotated_key_file_is_trusted_alongside_the_retired_one(tmp_path, monkeypatch):
    private, public = write_test_keys(tmp_path)
    monkeypatch.delenv("JWT_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("AUTH_JWKS_URL", raising=False)
    monkeypatch.setenv("PUBLIC_KEY_PATH", str(public))
    app = create_app({"DATABASE_URL": "sqlite://", "CREATE_SCHEMA": True})
    keys = app.extensions["bearer_auth"].verifier.keys
    old_kid, new_kid = rotate_key_pair(private, public, retain_seconds=910)
    keys.reload()
    assert keys.get(old_kid) is not None and keys.get(new_kid) is not None
    assert thumbprint(keys.get(new_kid)) == new_kid
