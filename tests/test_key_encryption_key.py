"""``KEY_STORE=database`` without a usable ``KEY_ENCRYPTION_KEY`` stops every auth process.

Each process that loads the auth service's settings (the web app under
gunicorn, the CLI, the worker, the relay, the janitor) is started here for
real, as the Procfile starts it, and must stop with one line that names the
variable and never quotes it.
"""

from __future__ import annotations

import subprocess

import pytest

from common.config import EXIT_CONFIG_ERROR
from tests.conftest import ROOT
from tests.e2e.processes import free_port
from tests.support.servers import run_id
from tests.test_web_line import BIN, web_environ

MISSING = (
    "configuration error: KEY_ENCRYPTION_KEY must be set with KEY_STORE=database (it encrypts "
    "the signing keys in the auth database): 32 random bytes in base64 or base64url, such as "
    "`openssl rand -base64 32` prints"
)
MALFORMED = (
    "configuration error: KEY_ENCRYPTION_KEY must be 32 random bytes in base64 or base64url, "
    "such as `openssl rand -base64 32` prints"
)
# Sixteen bytes: a well-formed secret of the wrong size.
SHORT_KEY = "c2l4dGVlbiBieXRlcyBrZXk="


@pytest.mark.parametrize(
    ("process", "key", "message"),
    [
        ("auth", None, MISSING),
        ("auth_worker", None, MISSING),
        ("auth_relay", None, MISSING),
        ("auth_janitor", None, MISSING),
        ("cli", None, MISSING),
        ("auth", SHORT_KEY, MALFORMED),
        ("cli", "not-base64!", MALFORMED),
    ],
    ids=["web", "worker", "relay", "janitor", "cli", "web-short", "cli-not-base64"],
)
def test_every_auth_process_stops_with_one_line(tmp_path, procfile, process, key, message):
    env = web_environ(tmp_path, run_id())
    env.update(KEY_STORE="database", AUTH_BIND=f"127.0.0.1:{free_port()}")
    env.pop("KEY_ENCRYPTION_KEY", None)
    if key is not None:
        env["KEY_ENCRYPTION_KEY"] = key
    if process == "cli":
        command = [str(BIN / "flask"), "--app", "auth_app", "keys", "rotate"]
    else:
        command = ["sh", "-c", procfile[process]]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    # gunicorn announces itself before the app is built; nothing else is said.
    said = [line for line in result.stderr.splitlines() if "] [INFO] Starting gunicorn" not in line]
    assert said == [message]
    assert result.stdout.strip() == ""
