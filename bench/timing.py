"""Whether an answer's time tells if an account exists: login, and password/forgot.

Login: an unknown email against a known one with a wrong password (both cost
one bcrypt). Forgot: a known address (a token and a mail written, in the
request's transaction) against an unknown one (nothing written). Requests of
the two kinds alternate on one kept-alive connection, each account asked once,
so neither the resend interval nor the login throttle shapes the figures.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from urllib.parse import urlsplit

from bench.system import PASSWORD, BenchError


def _timed_post(connection: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, float]:
    payload = json.dumps(body)
    started = time.perf_counter()
    connection.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status, time.perf_counter() - started


def register_accounts(auth_base: str, count: int) -> list[str]:
    """``count`` fresh accounts; their emails."""
    parts = urlsplit(auth_base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    emails = []
    try:
        for _ in range(count):
            name = "t" + uuid.uuid4().hex[:16]
            body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
            status, _ = _timed_post(connection, "/api/v1/auth/register", body)
            if status != 201:
                raise BenchError(f"register answered {status}")
            emails.append(body["email"])
    finally:
        connection.close()
    return emails


def answer_times(auth_base: str, emails: list[str]) -> dict[str, list[float]]:
    """Seconds per answer of each case (``login_unknown``, ``forgot_known``, ...), alternating."""
    parts = urlsplit(auth_base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    times: dict[str, list[float]] = {
        "login_unknown": [],
        "login_wrong_password": [],
        "forgot_known": [],
        "forgot_unknown": [],
    }
    cases = [
        (
            "login_wrong_password",
            "/api/v1/auth/login",
            401,
            lambda e: {"email": e, "password": "wrong-" + PASSWORD},
        ),
        (
            "login_unknown",
            "/api/v1/auth/login",
            401,
            lambda e: {"email": "x" + e, "password": PASSWORD},
        ),
        ("forgot_known", "/api/v1/auth/password/forgot", 202, lambda e: {"email": e}),
        ("forgot_unknown", "/api/v1/auth/password/forgot", 202, lambda e: {"email": "x" + e}),
    ]
    try:
        for email in emails:
            for label, path, expected, body in cases:
                status, seconds = _timed_post(connection, path, body(email))
                if status != expected:
                    raise BenchError(f"{label} answered {status}, not {expected}")
                times[label].append(seconds)
    finally:
        connection.close()
    return times
