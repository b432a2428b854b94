"""schemathesis's CLI against both real services: every check, every phase, a real token.

The Procfile's processes run as in the rest of tests/e2e (gunicorn, relays,
workers; fresh databases). ``st run`` reads each service's own
``/openapi.json`` and sends it the document's examples, boundary and
invalid values of every parameter and body (coverage), generated valid and
invalid requests (fuzzing) and sequences following the document's links
(stateful). Every check but response time runs on every answer: never a 500,
statuses, headers, content types and bodies as documented, valid input
accepted and invalid input refused, authentication enforced, 405 with
``Allow`` for a method a path does not have, a deleted resource gone. Any
failure fails the test, with schemathesis's report of it.

Every request carries a real account's token (tests/e2e/schemathesis_hooks.py
logs in again whenever the run's own logouts kill it); the user service's run
is an administrator's, so the admin endpoints are exercised too.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
import uuid
from collections import Counter

import pytest

from tests.conftest import ROOT
from tests.e2e.client import call, poll
from tests.e2e.conftest import BIN

pytestmark = pytest.mark.slow

CONFIG = ROOT / "tests" / "e2e" / "schemathesis.toml"
HOOKS = "tests.e2e.schemathesis_hooks"
# Every check. Response time is one only with --max-response-time, which this run leaves out.
CHECKS = ("--checks", "all")
PHASES = "examples,coverage,fuzzing,stateful"
# Examples per operation and phase: bounded so both runs stay within about two minutes.
MAX_EXAMPLES = 60
# Fixed, so a failure found here is found again on the next run (and with `st run --seed`).
SEED = 13
RUN_TIMEOUT = 300
# A run that tried fewer cases than this has not exercised its service in earnest.
MIN_TEST_CASES = 300


@pytest.fixture(scope="module")
def system_env() -> dict[str, str]:
    """The limiter and the login throttle stay on, with room for the run from one address.

    The run logs in again after each of its logouts, and guesses its own account's
    password at password change and account deletion (wrong guesses, which count
    as failed logins): with the default 5 its own logins would soon be refused.
    """
    return {"RATELIMIT_AUTH": "100000/minute", "LOGIN_MAX_FAILURES": "100000"}


def register(system, label: str) -> dict[str, str]:
    """A new account at the auth service: its email and password."""
    name = f"{label}_{uuid.uuid4().hex[:8]}"
    account = {"email": f"{name}@example.com", "password": f"Fuzz-{uuid.uuid4().hex}"}
    answer = call("POST", f"{system.auth}/api/v1/auth/register", json={**account, "username": name})
    assert answer.status == 201, answer.json
    return account


def login(system, account: dict[str, str]) -> str:
    """A fresh access token of ``account``."""
    answer = call("POST", f"{system.auth}/api/v1/auth/login", json=account)
    assert answer.status == 200, answer.json
    return answer.json["access_token"]


def documented_exemptions() -> list[tuple[str, str]]:
    """(operation, status) for every rule tests/e2e/schemathesis.toml lets refuse valid input."""
    config = tomllib.loads(CONFIG.read_text())
    found = []
    for entry in config["operations"]:
        names = entry["include-name"]
        statuses = entry["checks"]["positive_data_acceptance"]["expected-statuses"]
        for name in [names] if isinstance(names, str) else names:
            found.append((name, statuses[-1]))
    return found


def assert_exemptions_documented(base_url: str) -> None:
    """Each status schemathesis is told to accept for valid input is one the document names."""
    document = call("GET", f"{base_url}/openapi.json").json
    for name, status in documented_exemptions():
        method, path = name.split(" ", 1)
        operation = document["paths"].get(path, {}).get(method.lower())
        if operation is not None:
            assert status in operation["responses"], f"{name} does not document {status}"


def run_schemathesis(
    system, base_url: str, account: dict[str, str], tmp_path, capsys, label: str
) -> dict:
    """``st run`` against ``base_url``'s document; returns its JSON report, prints its summary."""
    report_path = tmp_path / f"schemathesis-{label.replace(' ', '-')}.json"
    env = {
        **system.env,
        "SCHEMATHESIS_HOOKS": HOOKS,
        "FUZZ_LOGIN_URL": f"{system.auth}/api/v1/auth/login",
        "FUZZ_EMAIL": account["email"],
        "FUZZ_PASSWORD": account["password"],
        "FUZZ_CLIENT": system.env["INTROSPECTION_CLIENTS"].split(",")[0],
    }
    command = [
        str(BIN / "st"),
        "--config-file",
        str(CONFIG),
        "run",
        f"{base_url}/openapi.json",
        *CHECKS,
        "--phases",
        PHASES,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        "--no-color",
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    elapsed = time.monotonic() - started
    assert report_path.exists(), f"st wrote no report:\n{result.stdout}\n{result.stderr}"
    report = json.loads(report_path.read_text())
    by_check = Counter()
    for group in report["failures"]:
        by_check[f"{group['code']} {group['title']}"] += group["count"]
    operations = report["operations"] or {}
    phases = report["phases"] or {}
    summary = (
        f"schemathesis {label}: {operations.get('tested')}/{operations.get('total')} operations, "
        f"{report['test_cases']['generated']} test cases, "
        f"{sum(by_check.values())} failures"
        + "".join(f", {count} {check}" for check, count in sorted(by_check.items()))
        + "; phases: "
        + ", ".join(f"{name} {phase['status']}" for name, phase in phases.items())
        + f"; {report['auth']['reauth_count']} re-logins, {elapsed:.0f}s"
    )
    with capsys.disabled():
        print("\n" + summary)
    # schemathesis's own account of each finding, with long lines (a generated megabyte) cut.
    output = "\n".join(line[:400] for line in (result.stdout + result.stderr).splitlines())
    details = f"{summary}\n{output[-40000:]}"
    assert not report["failures"] and not report["errors"], details
    assert result.returncode == 0, details
    for phase in PHASES.split(","):
        assert phases.get(phase, {}).get("status") == "success", (phase, phases, details)
    assert operations.get("tested") == operations.get("total"), details
    assert report["test_cases"]["generated"] >= MIN_TEST_CASES, details
    return report


def test_the_auth_service_answers_as_its_document_says(system, tmp_path, capsys):
    assert_exemptions_documented(system.auth)
    account = register(system, "fuzz")
    run_schemathesis(system, system.auth, account, tmp_path, capsys, "auth service")


def test_the_user_service_answers_as_its_document_says(system, tmp_path, capsys):
    assert_exemptions_documented(system.user)
    admin = register(system, "fuzzadmin")
    granted = system.cli("users", "grant-role", admin["email"], "admin")
    assert granted.returncode == 0, granted.stderr
    # People for the admin endpoints to list, read, edit and delete.
    for _ in range(3):
        someone = register(system, "someone")
        assert call("GET", f"{system.user}/api/v1/users/me", token=login(system, someone)).status
    listing = poll(
        lambda: call("GET", f"{system.user}/api/v1/users", token=login(system, admin)),
        until=lambda answer: answer.status == 200,
    )
    assert listing.status == 200, listing.json
    run_schemathesis(system, system.user, admin, tmp_path, capsys, "user service")
