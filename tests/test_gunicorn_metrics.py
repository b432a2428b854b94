"""/metrics of a real gunicorn: every worker summed, worker recycling survived, its own files.

gunicorn.conf.py runs the web apps in prometheus_client's multiprocess mode:
each worker writes its values to files in a directory of the master's, and
/metrics, answered by whichever worker gets the request, sums them all.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.client import call
from tests.e2e.processes import free_port, tail
from tests.support.servers import run_id
from tests.test_web_line import migrate, start_line, stop, wait_for_health, web_environ

REQUESTS = 40
MAX_REQUESTS = 7


def samples(base: str) -> dict[str, list]:
    """``GET base/metrics`` parsed: sample name -> samples."""
    answer = call("GET", f"{base}/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def metrics_directories(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tmp").glob("authsvc-metrics-*"))


class UserService:
    """The user service under gunicorn.conf.py, two workers recycled every few requests."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.marker = run_id()
        self.log_path = tmp_path / "gunicorn.log"
        self.process = None

    def start(self, **extra: str) -> str:
        """Start it with ``extra`` in its environment; its base URL once it answers."""
        env = web_environ(self.tmp_path, self.marker)
        migrate("user", env)
        (self.tmp_path / "tmp").mkdir(exist_ok=True)
        # Where tempfile makes the metrics directory: this test's own, to look into.
        env.update(TMPDIR=str(self.tmp_path / "tmp"), **extra)
        port = free_port()
        command = (
            f"gunicorn --config gunicorn.conf.py --bind 127.0.0.1:{port} --workers 2 "
            f"--max-requests {MAX_REQUESTS} --max-requests-jitter 0 'user_app:create_app()'"
        )
        self.process = start_line(command, env, self.log_path)
        base = f"http://127.0.0.1:{port}"
        health = wait_for_health(self.process, base)
        assert health is not None and health.status == 200, tail(self.log_path)
        return base

    def stop(self) -> dict[int, str]:
        """SIGTERM it; what is left running (nothing, if it stopped)."""
        return stop(self.process, self.marker) if self.process is not None else {}


@pytest.fixture
def user_service(tmp_path):
    service = UserService(tmp_path)
    yield service
    assert service.stop() == {}


def test_metrics_sums_every_worker_and_survives_recycling(user_service, tmp_path):
    base = user_service.start()
    [directory] = metrics_directories(tmp_path)
    assert directory.startswith("authsvc-metrics-user-")
    # One connection per request (urllib): each counts toward a worker's max_requests.
    for _ in range(REQUESTS):
        assert call("GET", f"{base}/health").status == 200
    found = samples(base)

    health = [
        s
        for s in found["http_requests_total"]
        if s.labels == {"endpoint": "/health", "method": "GET", "status": "200"}
    ]
    # wait_for_health's own request is one more.
    assert [s.value for s in health] == [REQUESTS + 1]
    [count] = [
        s.value
        for s in found["http_request_duration_seconds_count"]
        if s.labels == {"endpoint": "/health", "method": "GET"}
    ]
    assert count == REQUESTS + 1
    # The user service's families, and not the auth service's.
    assert "user_token_checks_total" in found
    assert not any(name.startswith(("auth_", "worker_", "outbox_")) for name in found)
    # Two workers, each recycled after MAX_REQUESTS: far more than two have served.
    booted = re.findall(r"Booting worker with pid", user_service.log_path.read_text())
    assert len(booted) > REQUESTS // MAX_REQUESTS


def test_the_metrics_directory_goes_with_the_master(user_service, tmp_path):
    base = user_service.start()
    assert "http_requests_total" in samples(base)
    assert len(metrics_directories(tmp_path)) == 1
    assert user_service.stop() == {}
    assert metrics_directories(tmp_path) == []


def test_with_metrics_off_gunicorn_serves_no_metrics_and_makes_no_directory(user_service, tmp_path):
    base = user_service.start(METRICS_ENABLED="false")
    assert call("GET", f"{base}/metrics").status == 404
    assert metrics_directories(tmp_path) == []


def test_a_master_stopped_by_a_configuration_error_leaves_no_metrics_directory(
    user_service, tmp_path
):
    with pytest.raises(AssertionError):
        user_service.start(JWT_LEEWAY_SECONDS="many")
    assert user_service.process.wait(timeout=30) != 0
    assert "configuration error: JWT_LEEWAY_SECONDS" in user_service.log_path.read_text()
    assert metrics_directories(tmp_path) == []
