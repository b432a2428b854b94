"""A small JSON-over-HTTP client on urllib: the e2e suite talks to the services only through it."""

from __future__ import annotations

import json as jsonlib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


@dataclass
class Response:
    """What the service answered: status, headers (lower-cased names) and the body.

    ``json`` is the body parsed, unless it is text (``text/*``, e.g. /metrics);
    ``text`` is the body as it came.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    json: object = None
    text: str = ""


def call(
    method: str,
    url: str,
    json: object = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> Response:
    """Send one request and return the answer; an HTTP error status is an answer, not an error."""
    headers = dict(headers or {})
    data = None
    if json is not None:
        data = jsonlib.dumps(json).encode()
        headers.setdefault("Content-Type", "application/json")
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            status, raw, answer_headers = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as error:
        status, raw, answer_headers = error.code, error.read(), error.headers
    headers = {k.lower(): v for k, v in answer_headers.items()}
    is_text = headers.get("content-type", "").startswith("text/")
    body = jsonlib.loads(raw) if raw.strip() and not is_text else None
    return Response(status, headers, body, raw.decode(errors="replace"))


def poll(fetch, until, timeout: float = 20.0, interval: float = 0.2):
    """Call ``fetch()`` until ``until(result)`` holds or ``timeout`` passes; return the last result.

    Events between the services are asynchronous: the caller asserts on the
    returned value, so a timeout fails with the last answer in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval)
