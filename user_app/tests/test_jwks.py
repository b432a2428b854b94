"""Keys from the auth service's JWKS endpoint, served here by a real local HTTP server."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import jwt.api_jwk
import jwt.jwk_set_cache
import jwt.jwks_client
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import common.jwks
from common.jwks import JWKSError, JWKSKeySet, parse_jwks
from common.keys import public_jwk
from user_app import create_app
from user_app.tests.conftest import Signer, app_config, bearer

ME = "/api/v1/users/me"


class JWKSServer:
    """A JWKS endpoint on 127.0.0.1 that counts requests and can go down and come back."""

    def __init__(self):
        self.document: bytes = b'{"keys": []}'
        self.status = 200
        self.requests = 0
        self.delay = 0.0
        self.redirect_to: str | None = None
        self._lock = threading.Lock()
        self.httpd = self._bind(0)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self.thread: threading.Thread | None = None

    def _bind(self, port: int) -> ThreadingHTTPServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                with server._lock:
                    server.requests += 1
                if server.delay:
                    time.sleep(server.delay)  # widen the window in which misses overlap
                if server.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.end_headers()
                    return
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.document)))
                self.end_headers()
                self.wfile.write(server.document)

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        return ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def serve(self, *signers: Signer) -> None:
        self.document = json.dumps(
            {"keys": [{**public_jwk(s.key.public_key()), "kid": s.kid} for s in signers]}
        ).encode()

    def start(self) -> None:
        if self.httpd is None:
            self.httpd = self._bind(self.port)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
            self.thread = None
        if self.httpd is not None:
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture
def jwks_server():
    server = JWKSServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rotated_signer() -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# PyJWKClient reads time.monotonic itself (the key set's age in jwt.api_jwk and
# jwt.jwk_set_cache, the refetch cooldown in jwt.jwks_client), as does the retry
# gate in common.jwks, so the test clock stands in for it in those modules only.
TIMEKEEPERS = (jwt.api_jwk, jwt.jwk_set_cache, jwt.jwks_client, common.jwks)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    for module in TIMEKEEPERS:
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=clock))
    return clock


def jwks_app(signer, server, cooldown: float = 60.0):
    return create_app(
        app_config(
            signer,
            JWT_PUBLIC_KEY=None,
            AUTH_JWKS_URL=server.url,
            JWKS_REFETCH_COOLDOWN_SECONDS=cooldown,
            JWKS_TIMEOUT_SECONDS=2.0,
        )
    )


def test_tokens_verify_against_the_fetched_key_set(signer, jwks_server):
    jwks_server.serve(signer)
    client = jwks_app(signer, jwks_server).test_client()
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200
    assert jwks_server.requests == 1


def test_a_rotation_at_the_auth_service_is_picked_up_with_one_fetch(
    signer, rotated_signer, jwks_server
):
    jwks_server.serve(signer)
    client = jwks_app(signer, jwks_server, cooldown=0).test_client()
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200
    jwks_server.serve(rotated_signer, signer)
    assert client.get(ME, headers=bearer(rotated_signer.token())).status_code == 200
    assert client.get(ME, headers=bearer(rotated_signer.token())).status_code == 200
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200
    assert jwks_server.requests == 2


def test_an_unknown_kid_flood_fetches_at_most_once_per_cooldown(signer, jwks_server):
    jwks_server.serve(signer)
    jwks_server.delay = 0.05
    client = jwks_app(signer, jwks_server, cooldown=60).test_client()
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def flood():
        barrier.wait()
        for _ in range(5):
            token = signer.token(headers={"kid": uuid.uuid4().hex})
            statuses.append(client.get(ME, headers=bearer(token)).status_code)

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) == {401}
    assert jwks_server.requests <= 2  # the first fetch, then at most one refetch


def test_concurrent_misses_coalesce_into_one_fetch(signer, jwks_server):
    jwks_server.serve(signer)
    jwks_server.delay = 0.1
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2)
    barrier = threading.Barrier(10)
    found = []

    def miss():
        barrier.wait()
        found.append(keys.get(signer.kid))

    threads = [threading.Thread(target=miss) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert jwks_server.requests == 1
    assert all(key is not None for key in found)


def test_a_key_rotated_in_just_after_the_first_fetch_is_fetched_at_once(
    signer, rotated_signer, jwks_server, clock
):
    jwks_server.serve(signer)
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2)
    assert keys.get(signer.kid) is not None
    jwks_server.serve(rotated_signer, signer)
    clock.now += 1
    # The first fetch starts no cooldown: only a refetch for an unknown kid does.
    assert keys.get(rotated_signer.kid) is not None
    assert jwks_server.requests == 2


def test_a_key_rotated_in_just_after_the_hourly_refresh_is_fetched_at_once(
    signer, rotated_signer, jwks_server, clock
):
    jwks_server.serve(signer)
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2, max_age=300)
    assert keys.get(signer.kid) is not None
    clock.now += 301
    assert keys.get(signer.kid) is not None  # the stale set is fetched again
    jwks_server.serve(rotated_signer, signer)
    assert keys.get(rotated_signer.kid) is not None
    assert jwks_server.requests == 3


def test_an_unknown_kid_met_on_first_use_fetches_once(signer, jwks_server):
    jwks_server.serve(signer)
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2)
    assert keys.get("made-up") is None
    assert jwks_server.requests == 1


def test_after_the_cooldown_an_unknown_kid_may_fetch_again(
    signer, rotated_signer, jwks_server, clock
):
    jwks_server.serve(signer)
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2)
    assert keys.get(signer.kid) is not None
    assert keys.get("made-up") is None  # a refetch, which starts the cooldown
    assert jwks_server.requests == 2
    jwks_server.serve(rotated_signer)
    assert keys.get(rotated_signer.kid) is None  # within the cooldown: no fetch
    assert jwks_server.requests == 2
    clock.now += 61
    assert keys.get(rotated_signer.kid) is not None
    assert jwks_server.requests == 3


def test_a_stale_key_set_is_refreshed_and_a_withdrawn_key_dropped(
    signer, rotated_signer, jwks_server, clock
):
    jwks_server.serve(signer)
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2, max_age=300)
    assert keys.get(signer.kid) is not None
    jwks_server.serve(rotated_signer)
    clock.now += 301
    assert keys.get(signer.kid) is None
    assert keys.get(rotated_signer.kid) is not None


def test_the_auth_service_going_down_keeps_the_last_good_keys(signer, jwks_server):
    jwks_server.serve(signer)
    client = jwks_app(signer, jwks_server, cooldown=0).test_client()
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200
    jwks_server.stop()
    unknown = signer.token(headers={"kid": "rotated-but-unreachable"})
    assert client.get(ME, headers=bearer(unknown)).status_code == 401
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200


@pytest.mark.parametrize(
    "status, document",
    [(500, b"oops"), (200, b"not json"), (200, b'{"keys": "none"}'), (200, b'{"keys": []}')],
    ids=["http-500", "not-json", "keys-not-list", "no-keys"],
)
def test_a_bad_answer_keeps_the_last_good_keys(signer, jwks_server, clock, status, document):
    jwks_server.serve(signer)
    keys = JWKSKeySet(jwks_server.url, cooldown=1, timeout=2)
    assert keys.get(signer.kid) is not None
    jwks_server.status, jwks_server.document = status, document
    clock.now += 2
    assert keys.get("some-new-kid") is None
    assert jwks_server.requests == 2
    assert keys.get(signer.kid) is not None


def test_a_failed_fetch_is_retried_only_after_the_cooldown(signer, jwks_server, clock):
    jwks_server.serve(signer)
    jwks_server.status = 500
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2)
    assert keys.get(signer.kid) is None
    assert keys.get(signer.kid) is None
    assert jwks_server.requests == 1
    jwks_server.status = 200
    clock.now += 61
    assert keys.get(signer.kid) is not None
    assert jwks_server.requests == 2


def test_a_stale_key_set_outlives_a_failed_refetch(signer, jwks_server, clock):
    jwks_server.serve(signer)
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2, max_age=300)
    assert keys.get(signer.kid) is not None
    jwks_server.status = 500
    clock.now += 301
    assert keys.get(signer.kid) is not None
    assert keys.get(signer.kid) is not None  # within the cooldown of the failure: no fetch
    assert jwks_server.requests == 2


def test_the_service_starts_while_the_auth_service_is_down_and_recovers(signer, jwks_server):
    jwks_server.serve(signer)
    jwks_server.stop()
    app = jwks_app(signer, jwks_server, cooldown=0)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    response = client.get(ME, headers=bearer(signer.token()))
    assert response.status_code == 401
    jwks_server.start()
    assert client.get(ME, headers=bearer(signer.token())).status_code == 200


def test_an_oversized_key_set_is_refused(signer, jwks_server):
    jwks_server.serve(signer)
    document = json.loads(jwks_server.document)
    document["padding"] = "x" * 70_000
    jwks_server.document = json.dumps(document).encode()
    keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2)
    assert keys.get(signer.kid) is None


def test_a_redirect_is_not_followed(signer, jwks_server):
    other = JWKSServer()
    other.serve(signer)
    other.start()
    try:
        jwks_server.redirect_to = other.url
        keys = JWKSKeySet(jwks_server.url, cooldown=60, timeout=2)
        assert keys.get(signer.kid) is None
        assert other.requests == 0
    finally:
        other.stop()


def test_only_http_urls_are_accepted():
    with pytest.raises(ValueError):
        JWKSKeySet("file:///etc/passwd")


def jwk(signer: Signer, **changes) -> dict:
    key = {**public_jwk(signer.key.public_key()), "kid": signer.kid}
    for name, value in changes.items():
        if value is None:
            key.pop(name, None)
        else:
            key[name] = value
    return key


def test_only_rsa_rs256_signing_keys_are_kept(signer):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    small_jwk = {**public_jwk(small.public_key()), "kid": "small"}
    document = {
        "keys": [
            jwk(signer, kid="plain"),
            jwk(signer, kid="no-alg-no-use", alg=None, use=None),
            jwk(signer, kid="verify-op", key_ops=["verify"]),
            jwk(signer, kid="rs512", alg="RS512"),
            jwk(signer, kid="enc", use="enc"),
            jwk(signer, kid="sign-only", key_ops=["sign"]),
            jwk(signer, kid="private", d="AQAB"),
            jwk(signer, kid="bad-n", n="!!!"),
            jwk(signer, kid=None),
            jwk(signer, kid="k" * 200),
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            small_jwk,
            "not an object",
        ]
    }
    keys = parse_jwks(json.dumps(document).encode())
    assert set(keys) == {"plain", "no-alg-no-use", "verify-op"}


@pytest.mark.parametrize("document", [b"[]", b"{}", b"\xff", b'{"keys": [{"kty": "oct"}]}'])
def test_unusable_documents_are_errors(document):
    with pytest.raises(JWKSError):
        parse_jwks(document)
