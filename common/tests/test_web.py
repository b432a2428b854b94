"""The web plumbing both services share: an unexpected error, request ids in the logs."""

from __future__ import annotations

import logging

import flask_smorest
import pytest
from flask import Flask

from common.config import WebSettings
from common.logging import ContextFilter
from common.web import ServiceBlueprint, create_api


def make_app() -> Flask:
    app = Flask("probe")

    @app.get("/boom")
    def boom():
        raise RuntimeError("SELECT password FROM users WHERE token='eyJhbGciOi.eyJzdWIiOi.sig'")

    @app.get("/api/plain")
    def plain():
        return {"ok": True}

    @app.get("/api/own-headers")
    def own_headers():
        return {"ok": True}, 200, {"cache-control": "max-age=60", "Referrer-Policy": "origin"}

    @app.get("/page")
    def page():
        return "page"

    create_api(app, WebSettings(database_url="sqlite://", log_format="text"), title="probe")
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


def test_security_headers_are_added_once_and_never_override_the_views_own():
    client = make_app().test_client()
    api = client.get("/api/plain")
    assert api.headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert api.headers.getlist("Referrer-Policy") == ["no-referrer"]
    assert api.headers.getlist("Cache-Control") == ["no-store"]
    assert len(api.headers.getlist("X-Request-ID")) == 1
    own = client.get("/api/own-headers")
    assert own.headers.getlist("Cache-Control") == ["max-age=60"]
    assert own.headers.getlist("Referrer-Policy") == ["origin"]
    assert own.headers.getlist("X-Content-Type-Options") == ["nosniff"]
    page = client.get("/page")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "Cache-Control" not in page.headers
    missing = client.get("/api/nothing-here", headers={"X-Request-ID": "trace-7"})
    assert missing.status_code == 404
    assert missing.headers["X-Request-ID"] == "trace-7"
    assert missing.headers["Cache-Control"] == "no-store"


def test_each_request_is_logged_once_with_its_id_and_status(caplog):
    client = make_app().test_client()
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.INFO, logger="request"):
        client.get("/api/plain", headers={"X-Request-ID": "line-1"})
    lines = [r for r in caplog.records if r.name == "request"]
    assert len(lines) == 1
    assert lines[0].getMessage().startswith("GET /api/plain 200 ")
    assert lines[0].request_id == "line-1"


def test_a_blueprint_without_the_services_json_parser_is_refused():
    # Only a ServiceBlueprint answers JSON Python cannot load with a 400, not a 500.
    app = Flask("probe")
    api = create_api(app, WebSettings(database_url="sqlite://", log_format="text"), title="probe")
    with pytest.raises(TypeError, match="ServiceBlueprint"):
        api.register_blueprint(flask_smorest.Blueprint("plain", __name__))
    api.register_blueprint(ServiceBlueprint("service", __name__))
