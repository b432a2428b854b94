"""Logging in JSON or text, with the request id (or message correlation id) on every line.

The id lives in a context variable so the same formatter serves web requests
and worker messages. A last-resort filter masks anything shaped like a JWT or a
``password=``/``token=`` pair, in case a library logs one.

In JSON every line of every process is one object with the same keys:
``time, level, logger, message, request_id, message_id``. gunicorn's own
lines go through the same handler (gunicorn.conf.py's ``logconfig_dict``), and
its access lines add ``method, path, status, duration_ms`` (the path without
its query string) with the response's request id.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from common.config import LOG_LEVELS, Env

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
message_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "message_id", default=None
)

_SECRET_PATTERNS = [
    # JWTs and JWT-shaped strings.
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    # key=value or "key": "value" pairs whose key names a secret.
    re.compile(
        r"""(?ix)
        (["']?(?:password|passwd|new_password|current_password|refresh_token|access_token|
        token|secret|authorization)["']?\s*[:=]\s*)
        (?:"[^"]*"|'[^']*'|Bearer\s+\S+|[^\s,&}]+)
        """
    ),
]


def redact(text: str) -> str:
    """Mask JWTs and secret-named values in a log message."""
    text = _SECRET_PATTERNS[0].sub("[redacted-token]", text)
    return _SECRET_PATTERNS[1].sub(lambda m: m.group(1) + "[redacted]", text)


class AccessLogFields(logging.Filter):
    """gunicorn's access lines as fields: ``method, path, status, duration_ms, request_id``.

    gunicorn logs each access with its atoms as the record's arguments; only
    these are taken (the atoms also hold every request header, the
    Authorization header included). The path is ``PATH_INFO``, without the
    query string a client may have put a token in; the request id is the one
    the app answered with.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if record.name == "gunicorn.access" and isinstance(atoms, Mapping):
            status = str(atoms.get("s", ""))
            record.method = atoms.get("m") or "-"
            record.path = atoms.get("U") or "-"
            record.status = int(status) if status.isdigit() else status
            micros = atoms.get("D")
            record.duration_ms = round(micros / 1000, 1) if isinstance(micros, int) else 0
            record.request_id = atoms.get("{x-request-id}o") or "-"
        return True


class ContextFilter(logging.Filter):
    """Put the current request and message ids on the record and mask secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        # An access line brings the id it answered with (AccessLogFields).
        record.request_id = getattr(record, "request_id", None) or request_id_var.get() or "-"
        record.message_id = message_id_var.get() or "-"
        if isinstance(record.msg, str) and record.args:
            try:
                record.msg = record.msg % record.args
                record.args = None
            except (TypeError, ValueError):
                pass
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class _RedactExceptions(logging.Formatter):
    """Mask secrets in tracebacks too: an exception message may quote a token."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        """The traceback, masked."""
        return redact(super().formatException(ei))


class TextFormatter(logging.Formatter):
    """Plain text lines for humans, masked whole (a cached traceback included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonLineFormatter(_RedactExceptions, JsonFormatter):
    """One JSON object per line for log pipelines."""


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def service_handler(fmt: str = "json") -> logging.Handler:
    """The one handler every line goes through: stderr, in ``fmt``, with ids and redaction.

    gunicorn.conf.py names it in ``logconfig_dict`` for gunicorn's own loggers.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler._service_handler = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(
            JsonLineFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(message_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    handler.addFilter(AccessLogFields())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every logger's records to stderr in one format, with ids and redaction.

    Safe to call more than once (tests build many apps): the handler is replaced.
    Python's warnings go through it too, so not even they leave a line of
    another shape.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_service_handler", False):
            root.removeHandler(handler)
    root.addHandler(service_handler(fmt))
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    # pika is chatty at INFO about every connection step.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))


@contextmanager
def log_context(request_id: str | None = None, message_id: str | None = None) -> Iterator[None]:
    """Bind ids for the log lines written inside the block (used by workers)."""
    tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]] = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if message_id is not None:
        tokens.append((message_id_var, message_id_var.set(message_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def configure_logging_from_env(env: Env) -> None:
    """Configure logging from ``LOG_LEVEL`` and ``LOG_FORMAT`` (worker processes)."""
    configure_logging(
        env.choice("LOG_LEVEL", "info", LOG_LEVELS),
        env.choice("LOG_FORMAT", "json", ("json", "text")),
    )
