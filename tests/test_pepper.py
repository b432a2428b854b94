"""The public development pepper is for ``APP_ENV=development`` alone.

Anywhere else (``APP_ENV`` unset means production) a missing, empty or
development ``PASSWORD_PEPPER`` stops every process that loads the auth
service's settings with one line: the web app under gunicorn, the CLI, the
auth worker and relay. Each is started here for real, as the Procfile starts it.
"""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import create_engine, text

from auth_app.config import DEV_PASSWORD_PEPPER, load_settings
from auth_app.passwords import PasswordHasher
from common.config import EXIT_CONFIG_ERROR, ConfigError
from tests.conftest import ROOT
from tests.e2e.client import call
from tests.e2e.processes import free_port, tail
from tests.support.servers import run_id
from tests.test_web_line import BIN, migrate, start_line, stop, wait_for_health, web_environ

MISSING = (
    "configuration error: PASSWORD_PEPPER must be set to a secret of its own (APP_ENV is "
    "'production'; only APP_ENV=development runs on the public development pepper)"
)
PUBLIC = (
    "configuration error: PASSWORD_PEPPER is the public development pepper; set a secret of "
    "its own (APP_ENV is 'production'; the development pepper needs APP_ENV=development)"
)
REAL_PEPPER = "a-pepper-of-this-deployment-9f2c41d7"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, MISSING),
        ({"PASSWORD_PEPPER": ""}, MISSING),
        ({"PASSWORD_PEPPER": "   "}, MISSING),
        ({"APP_ENV": "production"}, MISSING),
        ({"PASSWORD_PEPPER": DEV_PASSWORD_PEPPER}, PUBLIC),
        (
            {"APP_ENV": "staging", "PASSWORD_PEPPER": DEV_PASSWORD_PEPPER},
            PUBLIC.replace("'production'", "'staging'"),
        ),
    ],
    ids=["unset", "empty", "blank", "production-unset", "development-value", "staging"],
)
def test_outside_development_the_settings_refuse_a_public_or_missing_pepper(environ, message):
    with pytest.raises(ConfigError) as error:
        load_settings(environ=environ)
    assert f"configuration error: {error.value}" == message


@pytest.mark.parametrize(
    "environ",
    [
        {"APP_ENV": "development"},
        {"APP_ENV": "development", "PASSWORD_PEPPER": ""},
        {"APP_ENV": "development", "PASSWORD_PEPPER": DEV_PASSWORD_PEPPER},
    ],
    ids=["unset", "empty", "development-value"],
)
def test_in_development_the_public_pepper_is_the_default(environ):
    assert load_settings(environ=environ).password_pepper == DEV_PASSWORD_PEPPER


@pytest.mark.parametrize("app_env", [None, "production", "development"])
def test_a_pepper_of_its_own_is_used_everywhere(app_env):
    environ = {"PASSWORD_PEPPER": REAL_PEPPER}
    if app_env:
        environ["APP_ENV"] = app_env
    assert load_settings(environ=environ).password_pepper == REAL_PEPPER


def production_environ(tmp_path, pepper: str | None) -> dict[str, str]:
    """The platform-like environment of the web line's tests, production, with ``pepper``."""
    env = web_environ(tmp_path, run_id())
    env.pop("PASSWORD_PEPPER", None)
    env["APP_ENV"] = "production"
    if pepper is not None:
        env["PASSWORD_PEPPER"] = pepper
    return env


# Each process with an empty pepper (what compose passed), and the web app, the
# CLI with the development value: the rule is the settings loader's, tested above.
@pytest.mark.parametrize(
    ("process", "pepper", "message"),
    [
        ("auth", "", MISSING),
        ("auth_worker", "", MISSING),
        ("auth_relay", "", MISSING),
        ("cli", "", MISSING),
        ("auth", DEV_PASSWORD_PEPPER, PUBLIC),
        ("cli", DEV_PASSWORD_PEPPER, PUBLIC),
    ],
    ids=["web-empty", "worker-empty", "relay-empty", "cli-empty", "web-dev", "cli-dev"],
)
def test_every_auth_process_stops_with_one_line(tmp_path, procfile, process, pepper, message):
    env = production_environ(tmp_path, pepper)
    env["AUTH_BIND"] = f"127.0.0.1:{free_port()}"
    if process == "cli":
        command = [str(BIN / "flask"), "--app", "auth_app", "users", "grant-role", "a@b.c", "admin"]
    else:
        command = ["sh", "-c", procfile[process]]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    # gunicorn announces itself before the app is built; nothing else is said.
    said = [line for line in result.stderr.splitlines() if "] [INFO] Starting gunicorn" not in line]
    assert said == [message]
    assert result.stdout.strip() == ""


def test_the_web_app_serves_with_a_pepper_of_its_own(tmp_path, procfile):
    env = production_environ(tmp_path, REAL_PEPPER)
    migrate("auth", env)
    port = free_port()
    env["AUTH_BIND"] = f"127.0.0.1:{port}"
    log_path = tmp_path / "auth.log"
    process = start_line(procfile["auth"], env, log_path)
    base = f"http://127.0.0.1:{port}"
    marker = env["E2E_RUN_MARKER"]
    try:
        answer = wait_for_health(process, base)
        assert answer is not None and answer.status == 200, tail(log_path)
        password = "peppered-Horse-42"
        body = {"email": "pep@example.com", "username": "pep", "password": password}
        assert call("POST", f"{base}/api/v1/auth/register", json=body).status == 201
        login = {"email": body["email"], "password": password}
        assert call("POST", f"{base}/api/v1/auth/login", json=login).status == 200
    finally:
        left = stop(process, marker)
    assert left == {}
    # The stored hash is keyed with this deployment's pepper, not the public one.
    engine = create_engine(env["AUTH_DATABASE_URL"])
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT password_hash FROM users")).scalar_one()
    engine.dispose()
    assert PasswordHasher(4, REAL_PEPPER).verify(password, stored)
    assert not PasswordHasher(4, DEV_PASSWORD_PEPPER).verify(password, stored)
