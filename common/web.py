"""Flask plumbing both services share: the API object, request ids, errors, health.

``create_api`` wires one service: flask-smorest's Api (which owns the error
JSON), the client's address behind trusted proxies, request ids on every
response and log line, security headers, CORS, offline Swagger UI
(:mod:`common.docs`) and the ``/health`` endpoints. Every resource is a
:class:`ServiceBlueprint`, whose parser answers any body Python cannot load
with a 400.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import swagger_ui_bundle
from apispec import BasePlugin
from flask import Flask, Response, g, request, send_from_directory
from flask.views import MethodView
from flask_cors import CORS
from flask_smorest import Api, Blueprint, abort, pagination
from marshmallow import Schema, fields
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import (
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    default_exceptions,
)
from werkzeug.middleware.proxy_fix import ProxyFix

from common.config import S, WebSettings, split_overrides
from common.docs import install_docs
from common.logging import configure_logging, request_id_var

log = logging.getLogger("request")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,127}$")
SWAGGER_ASSETS = "/docs/assets/"
BEARER_SCHEME = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


class ErrorResponsesPlugin(BasePlugin):
    """Document the errors an operation can answer besides its own, by status code.

    flask-smorest's catch-all ``default`` error response is off (it makes any
    status code "documented"); instead every operation lists what it can
    really answer: 503 when a dependency is down, and for a request body 400
    (not JSON) and 413 (over the size limit).
    """

    def operation_helper(
        self, path: str | None = None, operations: dict | None = None, **kwargs: Any
    ) -> None:
        """Add the shared error responses to each operation of ``path``."""
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            shared = {}
            if path is not None and path.startswith("/api/"):
                shared["503"] = "SERVICE_UNAVAILABLE"
            if "requestBody" in operation:
                shared.update({"400": "BAD_REQUEST", "413": "REQUEST_ENTITY_TOO_LARGE"})
            # An operation's own response for the status (keyed by int or str) wins.
            documented = {str(status) for status in responses}
            for status, response in shared.items():
                if status not in documented:
                    responses[status] = response


class JsonBodyParser(FlaskParser):
    """webargs' Flask parser, answering 400 for every body that is not JSON Python can load.

    webargs turns invalid JSON into a 400, but ``json.loads`` refuses more than
    that: nesting deeper than the interpreter's recursion limit (RecursionError)
    and an integer of more than ``sys.get_int_max_str_digits()`` digits, 4300
    by default (ValueError). Those would end as 500s.
    """

    def _raw_load_json(self, req: Any) -> Any:
        try:
            return super()._raw_load_json(req)
        except json.JSONDecodeError:
            raise  # webargs' own answer (a 400, or nothing for an empty body)
        except RecursionError:
            _invalid_json("JSON nested too deeply.")
        except ValueError:
            _invalid_json("A number in the JSON has too many digits.")

    def _handle_invalid_json_error(self, error: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
        _invalid_json("Not valid JSON.")


def _invalid_json(reason: str) -> NoReturn:
    abort(400, message=f"Invalid JSON body: {reason}", errors={"json": [reason]})


class PaginationMetadataSchema(pagination.PaginationMetadataSchema):
    """flask-smorest's X-Pagination, plus the cursor of a listing that pages by cursor."""

    page_size = fields.Int(metadata={"description": "Items per page (cursor pages only)."})
    cursor = fields.Str(
        metadata={
            "description": "Opaque: pass it as `after` for the next page. Absent on the last page."
        }
    )


def set_cursor(page_params: Any, cursor: str | None, *, keyset: bool = False) -> None:
    """Put ``cursor`` (the next page's ``after``) in this answer's X-Pagination.

    ``keyset``: the page was read by cursor, so X-Pagination holds only
    ``page_size`` and ``cursor``, no totals (nothing was counted).
    """
    page_params.cursor = cursor
    if keyset:
        page_params.keyset = True
        # flask-smorest writes X-Pagination only once a count is set; none is shown.
        page_params.item_count = 0


class ServiceBlueprint(Blueprint):
    """flask-smorest's Blueprint, reading bodies with :class:`JsonBodyParser`.

    Every blueprint of both services is one (``ServiceApi`` refuses any other).
    """

    ARGUMENTS_PARSER = JsonBodyParser()

    def _set_pagination_metadata(self, page_params: Any, result: Any, headers: Any) -> Any:
        if getattr(page_params, "keyset", False):
            metadata: dict[str, Any] = {"page_size": page_params.page_size}
        else:
            metadata = self._make_pagination_metadata(
                page_params.page, page_params.page_size, page_params.item_count
            )
        cursor = getattr(page_params, "cursor", None)
        if cursor:
            metadata["cursor"] = cursor
        headers = {} if headers is None else headers
        headers[self.PAGINATION_HEADER_NAME] = json.dumps(metadata)
        return result, headers


class ServiceApi(Api):
    """flask-smorest's Api, with a ``message`` on every error body (404 and 405 included)."""

    # Each operation documents its own error statuses (see ErrorResponsesPlugin).
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_pagination_header(self) -> None:
        # X-Pagination carries JSON text: OpenAPI 3 says so with ``content``,
        # where flask-smorest's ``schema`` would describe a structured value.
        self.spec.components.header(
            "PAGINATION",
            {
                "description": "Pagination metadata, as JSON",
                "content": {"application/json": {"schema": PaginationMetadataSchema}},
            },
            lazy=True,
        )

    def register_blueprint(self, blp: Blueprint, **options: Any) -> None:
        """Register ``blp``, which must be a :class:`ServiceBlueprint`."""
        if not isinstance(blp, ServiceBlueprint):
            raise TypeError(f"blueprint {blp.name!r} is not a common.web.ServiceBlueprint")
        super().register_blueprint(blp, **options)

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Answer any HTTP error in flask-smorest's shape with a human-readable message.

        A 405 keeps werkzeug's ``Allow`` (the path's methods, RFC 9110), which
        flask-smorest's handler would drop.
        """
        payload, code, headers = super().handle_http_exception(error)
        if "message" not in payload:
            if isinstance(error, InternalServerError):
                payload["message"] = "The server could not complete the request."
            else:
                payload["message"] = error.description or error.name
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers = {**headers, "Allow": ", ".join(sorted(error.valid_methods))}
        return payload, code, headers

    def map_errors(self, app: Flask, mapping: dict[type[Exception], tuple[int, str]]) -> None:
        """Answer dependency failures (database, Redis down) with a status and a clear message."""
        for exc_type, (code, message) in mapping.items():

            def _handler(error: Exception, code: int = code, message: str = message) -> Any:
                log.warning("%s (%s)", message, type(error).__name__)
                http_error: Any = default_exceptions[code]()
                http_error.data = {"message": message}
                return self.handle_http_exception(http_error)

            app.register_error_handler(exc_type, _handler)


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The caller's request id when it is 1-128 printable characters, else a new one."""
    if value and _REQUEST_ID_RE.fullmatch(value) and value == value.strip():
        return value
    return new_request_id()


# Set on every answer unless the view set them itself; Cache-Control only under /api/.
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
API_CACHE_HEADER = ("Cache-Control", "no-store")
_REQUEST_ID_ENVIRON_KEY = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")


def _install_request_ids(app: Flask) -> None:
    # These run on every request: each header is looked up once, in one pass
    # (werkzeug's Headers.setdefault raises and catches an HTTPException for
    # every header that is missing, which is the usual case here).
    @app.before_request
    def _bind_request_id() -> None:
        request_id = accept_request_id(request.environ.get(_REQUEST_ID_ENVIRON_KEY))
        context = g._get_current_object()
        context.request_id = request_id
        context.request_id_token = request_id_var.set(request_id)
        context.request_started = time.perf_counter()

    @app.after_request
    def _stamp_response(response: Response) -> Response:
        context = g._get_current_object()
        headers = response.headers
        headers.set(REQUEST_ID_HEADER, getattr(context, "request_id", None) or new_request_id())
        path = request.path
        present = {name.lower() for name, _value in headers.items()}
        for name, value in SECURITY_HEADERS:
            if name.lower() not in present:
                headers.add(name, value)
        if path.startswith("/api/") and "cache-control" not in present:
            headers.add(*API_CACHE_HEADER)
        started = getattr(context, "request_started", None)
        if (
            started is not None
            and log.isEnabledFor(logging.INFO)
            and not path.startswith(SWAGGER_ASSETS)
        ):
            log.info(
                "%s %s %s %.1fms",
                request.method,
                path,
                response.status_code,
                (time.perf_counter() - started) * 1000,
            )
        return response

    @app.teardown_request
    def _unbind_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def _install_swagger_assets(app: Flask) -> None:
    folder = swagger_ui_bundle.swagger_ui_path

    def swagger_asset(filename: str) -> Response:
        return send_from_directory(folder, filename, max_age=86400)

    app.add_url_rule(SWAGGER_ASSETS + "<path:filename>", "swagger_asset", swagger_asset)


def openapi_config(title: str, version: str = "1.0.0") -> dict:
    """The flask-smorest settings that serve ``/openapi.json`` (``/docs`` is common.docs')."""
    return {
        "API_TITLE": title,
        "API_VERSION": version,
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
    }


def init_cors(app: Flask, origins: list[str]) -> None:
    """Allow the configured origins only; credentials never go with a wildcard."""
    if not origins:
        return
    wildcard = "*" in origins
    CORS(
        app,
        resources={r"/api/*": {"origins": "*" if wildcard else origins}},
        supports_credentials=not wildcard,
        # Answer a wildcard with "*" itself, not the caller's origin echoed back:
        # browsers never send credentials to "*", whatever else is configured.
        send_wildcard=wildcard,
        expose_headers=[REQUEST_ID_HEADER, "X-Pagination", "Retry-After"],
        allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
        max_age=600,
    )


_PEER_ENVIRON_KEY = "common.web.peer"


def _ip_address(value: str | None) -> str | None:
    """``value`` as a normalised IP address, a port some routers add dropped; None if it is none."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("["):  # [2001:db8::1]:443
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # 192.0.2.1:443
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


class TrustedProxies:
    """WSGI middleware: the client's address as ``count`` trusted reverse proxies saw it.

    Werkzeug's ProxyFix with ``x_for=count`` takes the address ``count`` hops
    from the right of X-Forwarded-For (each proxy appends the peer it saw;
    whatever a client wrote further left is never read), and the peer when the
    header has fewer entries. Only X-Forwarded-For is trusted: the services
    build no URL from the request's scheme or host (the issuer and every link
    come from settings), so X-Forwarded-Proto/Host would only be one more
    input to spoof. A value that is not an IP address (a proxy miscounted)
    leaves the peer's address, so nothing but an address reaches a rate-limit
    key, a log line or a stored record.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], count: int) -> None:
        self.app = app
        self.fix = ProxyFix(self._checked, x_for=count, x_proto=0, x_host=0, x_port=0, x_prefix=0)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        environ[_PEER_ENVIRON_KEY] = environ.get("REMOTE_ADDR")
        return self.fix(environ, start_response)

    def _checked(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        peer = environ[_PEER_ENVIRON_KEY]
        if environ.get("REMOTE_ADDR") != peer:
            environ["REMOTE_ADDR"] = _ip_address(environ.get("REMOTE_ADDR")) or peer
        return self.app(environ, start_response)


def trust_proxies(app: Flask, count: int) -> None:
    """Take the client's address from X-Forwarded-For when ``count`` (TRUSTED_PROXY_COUNT) > 0."""
    if count > 0:
        app.wsgi_app = TrustedProxies(app.wsgi_app, count)  # type: ignore[method-assign]


def client_address() -> str:
    """The current request's client address (behind ``TRUSTED_PROXY_COUNT`` proxies)."""
    return request.remote_addr or "-"


def service_app(
    import_name: str,
    config: Mapping[str, Any] | None,
    load_settings: Callable[[Mapping[str, Any]], S],
    settings_type: type[S],
    *,
    title: str,
) -> tuple[Flask, ServiceApi, S]:
    """A service's Flask app, its Api and its settings, from ``create_app``'s overrides.

    ``config`` is keyed by variable name: settings among it override the
    environment, anything else (``TESTING``) goes to Flask's config.
    """
    overrides, flask_config = split_overrides(config, settings_type)
    settings = load_settings(overrides)
    app = Flask(import_name)
    app.config.update(flask_config)
    return app, create_api(app, settings, title=title), settings


def create_api(app: Flask, settings: WebSettings, *, title: str) -> ServiceApi:
    """Wire logging, request ids, headers, errors and API docs into ``app``; return its Api."""
    configure_logging(settings.log_level, settings.log_format)
    for key, value in openapi_config(title).items():
        app.config.setdefault(key, value)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    trust_proxies(app, settings.trusted_proxy_count)
    _install_request_ids(app)
    _install_swagger_assets(app)
    api = ServiceApi(
        app,
        spec_kwargs={"servers": [{"url": "/"}], "extra_plugins": [ErrorResponsesPlugin()]},
    )
    api.spec.components.security_scheme("bearerAuth", BEARER_SCHEME)
    install_docs(
        app,
        title=app.config["API_TITLE"],
        spec_url="/openapi.json",
        assets=SWAGGER_ASSETS,
        ui_config=app.config.get("OPENAPI_SWAGGER_UI_CONFIG"),
    )
    init_cors(app, list(settings.cors_origins))
    return api


class HealthSchema(Schema):
    """Liveness answer."""

    status = fields.String(required=True, metadata={"example": "ok"})


class ReadinessSchema(Schema):
    """Readiness answer: one entry per dependency."""

    status = fields.String(required=True, metadata={"example": "ok"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


def health_blueprint(checks: dict[str, Callable[[], object]]) -> Blueprint:
    """``GET /health`` (no dependency touched) and ``GET /health/ready`` (each check run)."""
    blp = ServiceBlueprint(
        "health", __name__, url_prefix="/health", description="Liveness and readiness"
    )

    @blp.route("")
    class Liveness(MethodView):
        @blp.response(200, HealthSchema)
        def get(self) -> dict[str, str]:
            """The process is up. Touches no dependency."""
            return {"status": "ok"}

    @blp.route("/ready")
    class Readiness(MethodView):
        @blp.response(200, ReadinessSchema)
        @blp.alt_response(503, schema=ReadinessSchema, description="A dependency is unavailable")
        def get(self) -> tuple[dict[str, Any], int]:
            """Every dependency of this service answers."""
            results = {}
            for name, check in checks.items():
                try:
                    check()
                    results[name] = "ok"
                except Exception as error:  # noqa: BLE001 - any failure means not ready
                    log.warning("readiness check %s failed: %s", name, type(error).__name__)
                    results[name] = "unavailable"
            ok = all(value == "ok" for value in results.values())
            return {"status": "ok" if ok else "unavailable", "checks": results}, (
                200 if ok else 503
            )

    return blp
