"""The Procfile: one process type per web app and per worker, and a release line."""

from __future__ import annotations

import shlex

import pytest

from tests.conftest import parse_procfile

PROCESS_TYPES = (
    "release",
    "web",
    "auth",
    "user",
    "auth_relay",
    "user_relay",
    "auth_worker",
    "user_worker",
    "mailer",
)


@pytest.mark.parametrize("process", PROCESS_TYPES)
def test_procfile_declares_every_process_type(procfile, process):
    assert procfile.get(process), f"the Procfile has no {process!r} line"


def test_release_runs_both_migrations_and_stops_at_the_first_failure(procfile):
    steps = [step.strip() for step in procfile["release"].split("&&")]
    assert steps == ["alembic -n auth upgrade head", "alembic -n user upgrade head"]


@pytest.mark.parametrize(
    ("process", "app", "port"), [("auth", "auth_app", 5001), ("user", "user_app", 5002)]
)
def test_each_web_app_runs_under_gunicorn_with_the_project_settings(procfile, process, app, port):
    argv = shlex.split(procfile[process])
    assert argv[:3] == ["gunicorn", "--config", "gunicorn.conf.py"]
    assert argv[-1] == f"{app}:create_app()"
    bind = argv[argv.index("--bind") + 1]
    assert bind == f"${{{process.upper()}_BIND:-127.0.0.1:{port}}}"


@pytest.mark.parametrize(
    ("process", "module"),
    [
        ("auth_relay", "workers.relay auth"),
        ("user_relay", "workers.relay user"),
        ("auth_worker", "workers.auth_worker"),
        ("user_worker", "workers.user_worker"),
        ("mailer", "workers.mailer"),
    ],
)
def test_each_worker_is_a_module_of_its_own(procfile, process, module):
    assert procfile[process] == f"python -m {module}"


def test_parser_skips_comments_and_blank_lines_and_refuses_duplicates():
    assert parse_procfile("# note\n\nweb: run it\n") == {"web": "run it"}
    with pytest.raises(AssertionError):
        parse_procfile("web: a\nweb: b\n")


def test_the_development_mail_sink_is_aiosmtpd_printing_on_loopback(procfile):
    argv = shlex.split(procfile["mailsink"])
    assert argv[:3] == ["python", "-m", "aiosmtpd"]
    assert argv[argv.index("-l") + 1] == "127.0.0.1:1025"
    assert argv[argv.index("-c") + 1] == "aiosmtpd.handlers.Debugging"
