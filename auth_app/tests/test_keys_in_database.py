"""``KEY_STORE=database``: ``keys generate`` and ``keys rotate``, and the app that signs with them.

The apps share one SQLite file, as auth nodes share one database; each CLI
call builds its app inside the command, as ``flask --app auth_app`` does.
"""

from __future__ import annotations

import base64
import os
import time

import jwt
import pytest
from sqlalchemy import create_engine, text

from auth_app.tests.conftest import Accounts, bearer
from auth_app.tests.test_cli import app_of_cli

KEY_ENCRYPTION_KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def store(tmp_path) -> dict:
    """Settings of an app on the database key store in a SQLite file of this test."""
    return {
        "KEY_STORE": "database",
        "KEY_ENCRYPTION_KEY": KEY_ENCRYPTION_KEY,
        "KEY_CHECK_INTERVAL_SECONDS": 0.1,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'auth.db'}",
    }


def keys(runner, make_app, store: dict, command: str, **settings):
    """Run ``flask --app auth_app keys COMMAND`` with the store's settings (and ``settings``)."""
    return runner.invoke(args=["keys", command], obj=app_of_cli(make_app, **store, **settings))


def stored_keys(store: dict) -> list[tuple[str, bool]]:
    engine = create_engine(store["DATABASE_URL"])
    try:
        with engine.connect() as connection:
            query = text("SELECT kid, active FROM signing_keys ORDER BY id")
            return [(kid, bool(active)) for kid, active in connection.execute(query)]
    finally:
        engine.dispose()


def published(app) -> list[str]:
    return [key["kid"] for key in app.test_client().get("/.well-known/jwks.json").json["keys"]]


def test_keys_generate_makes_the_first_key_once(runner, make_app, store):
    made = keys(runner, make_app, store, "generate")
    assert made.exit_code == 0, made.output
    assert made.output.startswith("Generated signing key ")
    again = keys(runner, make_app, store, "generate")
    assert again.exit_code == 0, again.output
    assert "already exists in the auth database; nothing to do" in again.output
    [(kid, active)] = stored_keys(store)
    assert active and kid in made.output and kid in again.output


def test_a_running_node_publishes_a_rotated_key_within_its_check_interval(runner, make_app, store):
    assert keys(runner, make_app, store, "generate").exit_code == 0
    node = make_app(**store)
    [first] = published(node)
    rotated = keys(runner, make_app, store, "rotate")
    assert rotated.exit_code == 0, rotated.output
    second = stored_keys(store)[-1][0]
    assert rotated.output.startswith(f"Rotated signing key {first} -> {second}.")
    assert "stays trusted 910s longer" in rotated.output
    time.sleep(0.2)
    assert published(node) == [first, second]
    assert stored_keys(store) == [(first, False), (second, True)]


def test_a_node_signs_with_the_stored_key_and_verifies_its_tokens(runner, make_app, store):
    assert keys(runner, make_app, store, "generate").exit_code == 0
    node = make_app(**store)
    client = node.test_client()
    _, tokens = Accounts(client).register_and_login()
    [kid] = published(node)
    assert jwt.get_unverified_header(tokens["access_token"])["kid"] == kid
    assert client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 200


def test_keys_rotate_under_another_key_encryption_key_changes_nothing(runner, make_app, store):
    assert keys(runner, make_app, store, "generate").exit_code == 0
    before = stored_keys(store)
    other = base64.b64encode(os.urandom(32)).decode()
    result = keys(runner, make_app, {**store, "KEY_ENCRYPTION_KEY": other}, "rotate")
    assert result.exit_code != 0
    assert "KEY_ENCRYPTION_KEY: signing key" in result.output
    assert "use the key every auth node was given" in result.output
    assert other not in result.output and KEY_ENCRYPTION_KEY not in result.output
    assert stored_keys(store) == before


def test_keys_rotate_before_any_key_says_how_to_make_one(runner, make_app, store):
    result = keys(runner, make_app, store, "rotate")
    assert result.exit_code != 0
    assert "run `flask --app auth_app keys generate` first" in result.output


def test_keys_commands_on_an_unmigrated_database_say_how_to_migrate(runner, make_app, store):
    result = keys(runner, make_app, store, "generate", CREATE_SCHEMA=False)
    assert result.exit_code != 0
    assert "no such table: signing_keys" in result.output
    assert "alembic -n auth upgrade head" in result.output


def test_the_first_node_on_an_empty_store_makes_the_key_the_next_one_shares(make_app, store):
    first = make_app(**store)
    [(kid, _)] = stored_keys(store)
    assert published(first) == [kid]
    assert published(make_app(**store)) == [kid]
    assert stored_keys(store) == [(kid, True)]


def test_a_web_process_with_another_key_encryption_key_stops_with_one_line(
    runner, make_app, store, capsys
):
    assert keys(runner, make_app, store, "generate").exit_code == 0
    capsys.readouterr()
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(SystemExit):
        make_app(**{**store, "KEY_ENCRYPTION_KEY": other})
    err = capsys.readouterr().err
    assert err.startswith("configuration error: KEY_ENCRYPTION_KEY: signing key ")
    assert err.count("\n") == 1
    assert other not in err
