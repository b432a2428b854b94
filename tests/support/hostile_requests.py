"""What a hostile client sends either service, and where, from its OpenAPI document (tests only).

Bodies Python's JSON parser cannot load, odd ``Authorization`` and
``X-Request-ID`` values, and the places a client's strings go in.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

NUL, SURROGATE = "\u0000", "\ud800"
DEEP = "[" * 30_000 + "]" * 30_000
HUGE = "9" * 5_000

#: JSON text that json.loads refuses with RecursionError or ValueError, not JSONDecodeError.
UNLOADABLE = {
    "nested 30,000 deep": DEEP,
    "nested 30,000 deep in a field": '{"name": ' + DEEP + "}",
    "an integer of 5,000 digits": HUGE,
    "an integer of 5,000 digits in a field": '{"name": ' + HUGE + "}",
    "a negative one in an array": "[-" + HUGE + "]",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


#: Authorization values that are no valid access token: each must be a 401.
ODD_AUTHORIZATION = {
    "bearer only": "Bearer",
    "bearer and spaces": "Bearer    ",
    "basic": "Basic dXNlcjpwYXNz",
    "two tokens": "Bearer a.b.c d.e.f",
    "latin-1": "Bearer \xe9\xe9.\xe9.\xe9",
    "nul": "Bearer a.b\x00.c",
    "too long": "Bearer " + "a" * 10_000,
    # Headers json.loads cannot read: RecursionError, ValueError (within the 8 KiB limit).
    "header nested deep": "Bearer " + _b64(b"[" * 6_000) + ".e30.c2ln",
    "header object nested deep": "Bearer " + _b64(b'{"kid": ' + b"[" * 6_000) + ".e30.c2ln",
    "header of a huge number": "Bearer " + _b64(HUGE.encode()) + ".e30.c2ln",
}

#: X-Request-ID values a service must replace with its own id.
ODD_REQUEST_IDS = {
    "empty": "",
    "space": " ",
    "too long": "x" * 10_000,
    "nul": "\x00",
    "latin-1": "caf\xe9",
    "tab": "a\tb",
    "delete": "id\x7f",
    "trailing newline": "abc\n",
}


def send_json(client: Any, method: str, path: str, body: object, headers: dict | None = None):
    """Send ``body`` (JSON text, or a value to encode) with the JSON content type.

    ``json.dumps`` writes NUL and lone surrogates as ``\\u0000`` and ``\\ud800`` escapes.
    """
    text = body if isinstance(body, str) else json.dumps(body)
    return client.open(
        path, method=method.upper(), data=text, content_type="application/json", headers=headers
    )


def json_operations(document: dict) -> list[tuple[str, str]]:
    """``(method, path)`` of every operation of the document that takes a JSON body."""
    return [
        (method, path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if isinstance(operation, dict)
        and "application/json" in operation.get("requestBody", {}).get("content", {})
    ]


def _resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        *_, name = schema["$ref"].split("/")
        schema = document["components"]["schemas"][name]
    return schema


def _strings(document: dict, schema: dict, where: str) -> Iterator[tuple[str, dict]]:
    schema = _resolve(document, schema)
    if schema.get("type") == "string":
        yield where, schema
    if schema.get("readOnly"):
        return
    for name, inner in schema.get("properties", {}).items():
        inner = _resolve(document, inner)
        if not inner.get("readOnly"):
            yield from _strings(document, inner, f"{where}.{name}")
    if "items" in schema:
        yield from _strings(document, schema["items"], f"{where}[]")


def request_strings(document: dict) -> Iterator[tuple[str, dict]]:
    """``(where, schema)`` of each string in a request body or a query parameter.

    Path parameters are left out: an id in the path names a row or is a 404.
    """
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            name = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query":
                    where = f"{name} ?{parameter['name']}"
                    yield from _strings(document, parameter.get("schema", {}), where)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                yield from _strings(document, media.get("schema", {}), f"{name} body")


def strings_that_may_hold_nul(document: dict) -> list[str]:
    """Where the document lets a request string hold a NUL character (no pattern refuses it)."""
    return [
        where
        for where, schema in request_strings(document)
        if re.search(schema.get("pattern", ""), "a\x00b") is not None
    ]
