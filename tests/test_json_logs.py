"""Under LOG_FORMAT=json a web app's process writes nothing but JSON lines of one shape.

The auth service runs under gunicorn as the Procfile runs it. Every line it
writes, gunicorn's own (starting, booting workers, stopping) and its access
lines included, is one JSON object with the same keys, so a log shipper needs
one parser; an access line adds the method, the path without its query, the
status, the duration and the request id.
"""

from __future__ import annotations

import json
import uuid

from tests.e2e.client import call
from tests.e2e.processes import free_port, tail
from tests.support.servers import run_id
from tests.test_web_line import migrate, start_line, stop, wait_for_health, web_environ

#: Every line's keys.
LINE_KEYS = {"time", "level", "logger", "message", "request_id", "message_id"}
#: What an access line adds.
ACCESS_KEYS = {"method", "path", "status", "duration_ms"}


def json_lines(text: str) -> list[dict]:
    """Each line parsed; fails naming the first line that is not one JSON object."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        assert isinstance(parsed, dict), f"line {number} is not a JSON object: {line!r}"
        lines.append(parsed)
    return lines


def test_every_line_of_a_web_process_is_json_of_one_shape(tmp_path, procfile):
    marker = run_id()
    env = web_environ(tmp_path, marker)
    migrate("auth", env)
    port = free_port()
    env.update(AUTH_BIND=f"127.0.0.1:{port}", LOG_FORMAT="json", LOG_LEVEL="info")
    env["WEB_CONCURRENCY"] = "2"
    log_path = tmp_path / "auth.log"
    base = f"http://127.0.0.1:{port}"
    request_id = f"logs-{uuid.uuid4().hex}"
    secret = uuid.uuid4().hex
    process = start_line(procfile["auth"], env, log_path)
    try:
        health = wait_for_health(process, base)
        assert health is not None and health.status == 200, tail(log_path)
        answer = call(
            "GET", f"{base}/health?access_token={secret}", headers={"X-Request-ID": request_id}
        )
        assert answer.status == 200
        name = f"logs_{uuid.uuid4().hex[:8]}"
        body = {"email": f"{name}@example.com", "username": name, "password": f"Pw-{secret}"}
        assert call("POST", f"{base}/api/v1/auth/register", json=body).status == 201
        assert call("GET", f"{base}/no/such/path").status == 404
    finally:
        left = stop(process, marker)
    assert left == {}

    text = log_path.read_text()
    lines = json_lines(text)
    for line in lines:
        assert LINE_KEYS <= set(line) <= LINE_KEYS | ACCESS_KEYS, line
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "gunicorn.access", "request", "auth_app.accounts"} <= loggers
    messages = [line["message"] for line in lines if line["logger"] == "gunicorn.error"]
    assert any(m.startswith("Starting gunicorn") for m in messages)
    assert any(m.startswith("Booting worker") for m in messages)
    assert any(m.startswith("Shutting down") for m in messages)

    [access] = [
        line
        for line in lines
        if line["logger"] == "gunicorn.access" and line["request_id"] == request_id
    ]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/health", 200)
    assert isinstance(access["duration_ms"], int | float) and access["duration_ms"] >= 0
    for line in lines:
        assert set(line) >= ACCESS_KEYS or line["logger"] != "gunicorn.access", line
    # Neither the query string's token nor the password reached a line.
    assert secret not in text
