"""The app a gunicorn master builds once and its workers serve: a HUP builds it again.

gunicorn.conf.py builds the app in the master before the workers fork (their
pages shared), so a new worker, or one replacing a recycled worker, does not
read the settings itself: ``kill -HUP`` makes the master build the app anew
from the settings then (gunicorn re-reads its configuration, ``raw_env``
included), and every worker after it serves that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.memory import children
from tests.conftest import ROOT
from tests.e2e.client import call
from tests.e2e.processes import free_port, tail
from tests.support.servers import run_id
from tests.test_web_line import migrate, start_line, stop, wait_for_health, web_environ

MAX_REQUESTS = 5
DISCOVERY = "/.well-known/openid-configuration"


def write_config(path, setting: str) -> None:
    """gunicorn.conf.py, with ``setting`` (NAME=value) set by gunicorn's own ``raw_env``."""
    path.write_text(
        "import runpy\n"
        f"globals().update(runpy.run_path({str(ROOT / 'gunicorn.conf.py')!r}))\n"
        f"raw_env = [{setting!r}]\n"
    )


@dataclass(frozen=True)
class Gunicorn:
    """A started gunicorn: its ``sh -c`` process, marker, configuration file, URL and log."""

    process: subprocess.Popen
    marker: str
    config: Path
    base: str
    log: Path


def issuer(base: str) -> str:
    answer = call("GET", base + DISCOVERY)
    assert answer.status == 200
    return answer.json["issuer"]


def start(tmp_path: Path, app: str, setting: str, options: str = "") -> Gunicorn:
    """gunicorn with two workers on ``app``, its configuration file setting ``setting``."""
    marker = run_id()
    env = web_environ(tmp_path, marker)
    migrate(app, env)
    config = tmp_path / "gunicorn.conf.py"
    write_config(config, setting)
    port = free_port()
    command = (
        f"gunicorn --config {config} --bind 127.0.0.1:{port} --workers 2 {options} "
        f"'{app}_app:create_app()'"
    )
    log_path = tmp_path / "gunicorn.log"
    process = start_line(command, env, log_path)
    running = Gunicorn(process, marker, config, f"http://127.0.0.1:{port}", log_path)
    health = wait_for_health(process, running.base)
    if health is None or health.status != 200:
        stop(process, marker)
        pytest.fail(tail(log_path))
    return running


def test_a_hup_rebuilds_the_app_with_the_new_settings_and_recycled_workers_keep_them(tmp_path):
    running = start(
        tmp_path,
        "auth",
        "JWT_ISSUER=http://one.example",
        f"--max-requests {MAX_REQUESTS} --max-requests-jitter 0",
    )
    process, config, base, log_path = running.process, running.config, running.base, running.log
    try:
        # Workers replacing recycled ones serve the master's app, before and after
        # the configuration changes on disk, until the HUP.
        assert {issuer(base) for _ in range(3 * MAX_REQUESTS)} == {"http://one.example"}
        write_config(config, "JWT_ISSUER=http://two.example")
        assert {issuer(base) for _ in range(3 * MAX_REQUESTS)} == {"http://one.example"}

        [master] = children(process.pid)
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while issuer(base) != "http://two.example" and time.monotonic() < deadline:
            time.sleep(0.1)
        # Every worker from then on, recycled ones too, serves the new settings.
        answers = {issuer(base) for _ in range(4 * MAX_REQUESTS)}
        assert answers == {"http://two.example"}, tail(log_path)
    finally:
        left = stop(process, running.marker)
    assert left == {}, f"still running after SIGTERM: {left}"


def test_a_hup_onto_a_bad_setting_stops_gunicorn_with_its_message(tmp_path):
    running = start(tmp_path, "user", "JWT_LEEWAY_SECONDS=30")
    process, config, log_path = running.process, running.config, running.log
    try:
        write_config(config, "JWT_LEEWAY_SECONDS=soon")
        [master] = children(process.pid)
        os.kill(master, signal.SIGHUP)
        # sh -c runs gunicorn: its status is the master's.
        assert process.wait(timeout=30) == 4, tail(log_path)
        assert "configuration error: JWT_LEEWAY_SECONDS must be" in log_path.read_text()
    finally:
        left = stop(process, running.marker)
    assert left == {}, f"still running after SIGTERM: {left}"
