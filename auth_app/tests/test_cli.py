"""``flask --app auth_app keys ...`` and ``users ...``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flask.cli import ScriptInfo

from auth_app.tests.conftest import bearer

FLASK = str(Path(sys.executable).with_name("flask"))


def test_keys_generate_is_a_no_op_when_keys_exist(runner):
    result = runner.invoke(args=["keys", "generate"])
    assert result.exit_code == 0
    assert "already exists" in result.output


def app_of_cli(make_app, **settings) -> ScriptInfo:
    """The app as ``flask --app auth_app`` builds it: inside the command, with ``settings``."""
    return ScriptInfo(create_app=lambda: make_app(**settings))


def test_keys_generate_then_rotate_keeps_the_old_key_published(make_app, runner, tmp_path):
    keys = {
        "PRIVATE_KEY_PATH": tmp_path / "private.pem",
        "PUBLIC_KEY_PATH": tmp_path / "public.pem",
    }
    cli_app = app_of_cli(make_app, **keys)
    result = runner.invoke(args=["keys", "generate"], obj=cli_app)
    assert result.exit_code == 0, result.output
    assert "Generated key pair" in result.output
    assert (tmp_path / "private.pem").exists()
    result = runner.invoke(args=["keys", "rotate"], obj=cli_app)
    assert result.exit_code == 0, result.output
    assert "Rotated signing key" in result.output
    assert len(list((tmp_path / "retired").glob("*.pem"))) == 1


def test_keys_rotate_without_keys_says_how_to_make_them(make_app, runner, tmp_path):
    cli_app = app_of_cli(
        make_app, PUBLIC_KEY_PATH=tmp_path / "public.pem", PRIVATE_KEY_PATH=tmp_path / "private.pem"
    )
    result = runner.invoke(args=["keys", "rotate"], obj=cli_app)
    assert result.exit_code != 0
    assert "keys generate" in result.output


def test_keys_commands_refuse_pem_from_the_environment(make_app, runner, key_paths):
    cli_app = app_of_cli(make_app, JWT_PRIVATE_KEY=key_paths[0].read_text())
    result = runner.invoke(args=["keys", "generate"], obj=cli_app)
    assert result.exit_code != 0
    assert "JWT_PRIVATE_KEY" in result.output


def test_grant_and_revoke_role(client, runner, accounts):
    user, tokens = accounts.register_and_login("admin.to.be")
    result = runner.invoke(args=["users", "grant-role", user["email"].upper(), "admin"])
    assert result.exit_code == 0, result.output
    assert "admin" in result.output
    me = client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    assert me.json["roles"] == ["admin", "user"]
    result = runner.invoke(args=["users", "revoke-role", user["email"], "admin"])
    assert result.exit_code == 0, result.output
    # Revoking a role ends the sessions whose tokens carried it.
    assert client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 401
    fresh = accounts.login(user["email"])
    assert client.get("/api/v1/auth/me", headers=bearer(fresh["access_token"])).json["roles"] == [
        "user"
    ]


def test_role_commands_explain_bad_input(runner, accounts):
    user = accounts.register()
    unknown = runner.invoke(args=["users", "grant-role", "nobody@example.com", "admin"])
    assert unknown.exit_code != 0
    assert "No account with email nobody@example.com" in unknown.output
    invalid = runner.invoke(args=["users", "grant-role", user["email"], "Bad Role!"])
    assert invalid.exit_code != 0
    assert "invalid role" in invalid.output


def test_flask_cli_generates_keys_on_a_fresh_checkout(tmp_path):
    env = {
        **os.environ,
        "PRIVATE_KEY_PATH": str(tmp_path / "k" / "private.pem"),
        "PUBLIC_KEY_PATH": str(tmp_path / "k" / "public.pem"),
        "AUTH_DATABASE_URL": "sqlite://",
    }
    result = subprocess.run(
        [FLASK, "--app", "auth_app", "keys", "generate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k" / "private.pem").exists()


def test_flask_cli_stops_with_one_line_on_bad_config(tmp_path):
    env = {**os.environ, "BCRYPT_ROUNDS": "many", "AUTH_DATABASE_URL": "sqlite://"}
    result = subprocess.run(
        [FLASK, "--app", "auth_app", "users", "grant-role", "a@example.com", "admin"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip() == "configuration error: BCRYPT_ROUNDS must be an integer, got 'many'"
    )
