"""A key set fetched from the auth service's JWKS endpoint, for services without key files.

Keys are cached by ``kid``. A token signed with an unknown kid (the auth
service rotated its key) triggers a refetch, at most one per cooldown however
many requests miss at once, so a flood of made-up kids cannot turn into a
flood of requests to the auth service. A failed fetch keeps the last good key
set; the first fetch happens on first use, so this service starts even while
the auth service is down.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 64 * 1024
MAX_KID_LENGTH = 128
MIN_KEY_SIZE = 2048


class JWKSError(Exception):
    """The key set could not be fetched or holds no usable key."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could point the verifier at keys nobody configured.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def parse_jwks(document: bytes) -> dict[str, rsa.RSAPublicKey]:
    """The usable signing keys of a JWKS document, by kid.

    Only RSA keys of at least 2048 bits meant for RS256 signatures are kept:
    ``alg`` RS256 or absent, ``use`` sig or absent, ``key_ops`` absent or
    including verify. Raises JWKSError when the document is malformed or has
    no usable key.
    """
    try:
        raw = json.loads(document)
    except (ValueError, RecursionError):
        raise JWKSError("JWKS is not JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise JWKSError("JWKS has no keys list")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for jwk in raw["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
            continue
        if jwk.get("alg", "RS256") != "RS256" or jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            continue
        if "d" in jwk:
            # A private key published by mistake is not something to trust.
            continue
        try:
            key = RSAAlgorithm.from_jwk({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]})
        except Exception as error:  # noqa: BLE001 - a malformed key is skipped, the rest count
            log.warning("skipping malformed JWK %s: %s", kid, type(error).__name__)
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_KEY_SIZE:
            keys[kid] = key
    if not keys:
        raise JWKSError("JWKS holds no usable RS256 signing key")
    return keys


class JWKSKeySet:
    """The KeySet (``get(kid)``) of a remote JWKS, cached with a bounded refetch rate.

    ``cooldown`` is the least time between two fetches triggered by unknown
    kids; ``max_age`` the age after which even a known kid triggers one (so a
    key the auth service withdrew stops being trusted). ``clock`` is for tests.
    """

    def __init__(
        self,
        url: str,
        cooldown: float = 60.0,
        timeout: float = 5.0,
        *,
        max_age: float = 3600.0,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ):
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("a JWKS URL must be http:// or https://")
        self.url = url
        self.cooldown = cooldown
        self.timeout = timeout
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.clock = clock
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect)

    def get(self, kid: str) -> rsa.RSAPublicKey | None:
        """The key for ``kid``, fetching the key set again if it is unknown or stale."""
        key = self._keys.get(kid)
        stale = self._fetched_at is None or self.clock() - self._fetched_at > self.max_age
        if key is None or stale:
            self._refresh()
            key = self._keys.get(kid)
        return key

    def _refresh(self) -> None:
        # Concurrent misses queue on the lock; the first fetches, the rest find
        # the attempt fresh and read its result.
        with self._lock:
            now = self.clock()
            if self._attempted_at is not None and now - self._attempted_at < self.cooldown:
                return
            self._attempted_at = now
            try:
                keys = parse_jwks(self._fetch())
            except JWKSError as error:
                log.warning(
                    "JWKS fetch from %s failed, keeping %d keys: %s",
                    self.url,
                    len(self._keys),
                    error,
                )
                return
            self._keys = keys
            self._fetched_at = now
            log.info("JWKS fetched from %s: %d keys", self.url, len(keys))

    def _fetch(self) -> bytes:
        # The scheme was checked in __init__: only http and https reach here.
        request = urllib.request.Request(  # noqa: S310
            self.url, headers={"Accept": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:  # noqa: S310
                if response.status != 200:
                    raise JWKSError(f"HTTP {response.status}")
                body = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as error:
            raise JWKSError(f"HTTP {error.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise JWKSError(f"{type(error).__name__}: {error}") from None
        if len(body) > self.max_bytes:
            raise JWKSError(f"JWKS larger than {self.max_bytes} bytes")
        return body
