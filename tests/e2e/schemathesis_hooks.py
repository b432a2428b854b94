"""schemathesis hooks for runs against the real services.

Loaded with ``SCHEMATHESIS_HOOKS=tests.e2e.schemathesis_hooks``.

Every request carries an access token of a real account, got from the auth
service's login with the email and password in ``FUZZ_EMAIL`` and
``FUZZ_PASSWORD`` (``FUZZ_LOGIN_URL`` says where to log in); an operation
secured by the introspection clients' scheme gets HTTP Basic credentials of
one of them instead (``FUZZ_CLIENT``, ``id:secret``). The run itself
logs out, logs out everywhere and ends sessions, so a token dies on the way:
its next request answers 401, schemathesis logs in again and sends that
request once more with the new token (``retry_on``). A 401 that a fresh token
gets too (a wrong password at ``DELETE /api/v1/auth/me``) is the answer that
stands and is checked.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request

import schemathesis

# A token lives 15 minutes; a run is far shorter, and a dead one is replaced on its 401.
REFRESH_SECONDS = 600
# The auth service's security scheme of the clients allowed to introspect.
CLIENT_SCHEME = "introspectionClient"


def _client_secured(case) -> bool:
    security = case.operation.definition.raw.get("security", [])
    return any(CLIENT_SCHEME in requirement for requirement in security)


@schemathesis.auth(refresh_interval=REFRESH_SECONDS, retry_on=[401])
class RealLogin:
    """A fresh access token from ``POST /api/v1/auth/login`` of the auth service."""

    def get(self, case, context) -> str:
        url = os.environ["FUZZ_LOGIN_URL"]
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"FUZZ_LOGIN_URL is not an http(s) URL: {url}")
        body = {"email": os.environ["FUZZ_EMAIL"], "password": os.environ["FUZZ_PASSWORD"]}
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return json.load(answer)["access_token"]

    def set(self, case, data: str, context) -> None:
        if _client_secured(case):
            client = base64.b64encode(os.environ["FUZZ_CLIENT"].encode()).decode()
            credentials = f"Basic {client}"
        else:
            credentials = f"Bearer {data}"
        case.headers = {**(case.headers or {}), "Authorization": credentials}
