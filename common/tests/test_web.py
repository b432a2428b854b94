"""The web plumbing both services share: an unexpected error, request ids in the logs."""

from __future__ import annotations

import logging

from flask import Flask

from common.logging import ContextFilter
from common.web import create_api


def make_app() -> Flask:
    app = Flask("probe")
    app.config["API_TITLE"] = "probe"

    @app.get("/boom")
    def boom():
        raise RuntimeError("SELECT password FROM users WHERE token='eyJhbGciOi.eyJzdWIiOi.sig'")

    create_api(app)
    return app


def test_an_unexpected_error_is_a_500_without_internals_and_logged_with_the_request_id(caplog):
    app = make_app()
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    body = response.get_json()
    assert body == {
        "code": 500,
        "status": "Internal Server Error",
        "message": "The server could not complete the request.",
    }
    assert response.headers["X-Request-ID"] == "boom-1"
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert records and all(r.request_id == "boom-1" for r in records)


def test_a_request_id_that_is_too_long_or_unprintable_is_replaced():
    client = make_app().test_client()
    for bad in ("x" * 129, "tab\there", " leading"):
        echoed = client.get("/nothing", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert echoed != bad and len(echoed) == 32
    assert (
        client.get("/nothing", headers={"X-Request-ID": "x" * 128}).headers["X-Request-ID"]
        == "x" * 128
    )


def test_log_lines_mask_tokens_and_passwords_in_messages_and_tracebacks(capsys):
    from common.logging import configure_logging

    for fmt in ("json", "text"):
        configure_logging("INFO", fmt)
        log = logging.getLogger("probe")
        log.info("login password=hunter2 token: eyJhbGciOi.eyJzdWIiOi.c2ln")
        try:
            raise ValueError("refresh_token=abc123 eyJhbGciOi.eyJzdWIiOi.c2ln")
        except ValueError:
            log.exception("failed")
        err = capsys.readouterr().err
        for secret in ("hunter2", "abc123", "eyJhbGciOi.eyJzdWIiOi"):
            assert secret not in err, (fmt, err)
        assert "[redacted" in err
