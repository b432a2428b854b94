"""A key set fetched from the auth service's JWKS endpoint, for services without key files.

PyJWT's ``PyJWKClient`` does the caching: the key set is kept for ``max_age``
(its ``lifespan``), and its lock makes concurrent misses wait for one fetch
instead of each making their own (every lookup waits while a fetch is under
way, bounded by ``timeout``). Nothing is fetched before first use, so this
service starts even while the auth service is down.

An unknown kid (the auth service rotated its key) forces one refetch, unless
another unknown kid forced one within ``cooldown``. PyJWKClient starts that
cooldown at every fetch, the first and the hourly ones included, so a key
rotated in within a minute of either would be refused for the rest of it:
here only a refetch for an unknown kid starts it, which still holds a flood of
made-up kids to one fetch per cooldown.

``JWKSKeySet`` adds what PyJWKClient lacks: a bounded response, only RSA keys
of at least 2048 bits for RS256 signatures, and the last good key set kept
through a failed fetch, with failed fetches spaced by the cooldown too.

Needs PyJWT 2.15: ``cooldown_duration`` came in 2.14, and only since 2.15 does
``get_jwk_set`` cache what a replaced ``fetch_data`` returns.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK, PyJWKClient, PyJWKClientError, PyJWKSet, PyJWTError
from jwt.algorithms import RSAAlgorithm

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 64 * 1024
MAX_KID_LENGTH = 128
MIN_KEY_SIZE = 2048


class JWKSError(PyJWKClientError):
    """The key set could not be fetched or holds no usable key."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> None:
        """Follow no redirect: it could point the verifier at keys nobody configured."""
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


class JWKSKeySet(PyJWKClient):
    """The KeySet (``get(kid)``) of a remote JWKS: a PyJWKClient that keeps its last good keys.

    ``cooldown`` is the least time between two fetches triggered by unknown
    kids (a routine fetch does not count), and between a failed fetch and the
    next attempt; ``max_age`` the age
    after which even a known kid triggers one (so a key the auth service
    withdrew stops being trusted). Raises ValueError for a URL that is not
    http(s) or a cooldown or max_age PyJWKClient refuses.
    """

    def __init__(
        self,
        url: str,
        cooldown: float = 60.0,
        timeout: float = 5.0,
        *,
        max_age: float = 3600.0,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        try:
            super().__init__(
                url,
                # Its per-kid LRU never expires, so a withdrawn key would outlive max_age.
                cache_keys=False,
                # PyJWKClient skips its cooldown without the set cache.
                cache_jwk_set=True,
                lifespan=max_age,
                headers={"Accept": "application/json"},
                timeout=timeout,
                cooldown_duration=cooldown,
            )
        except PyJWKClientError as error:
            raise ValueError(str(error)) from None
        self.max_bytes = max_bytes
        self._fetches = 0
        self._refetched_at: float | None = None
        self._last_good: PyJWKSet | None = None
        self._failed_at: float | None = None
        self._state_lock = threading.Lock()

    @property
    def cooldown(self) -> float:
        """The least time in seconds between two refetches (PyJWKClient's cooldown_duration)."""
        return self.cooldown_duration

    def get(self, kid: str) -> rsa.RSAPublicKey | None:
        """The key for ``kid``, fetching the key set again if it is unknown or stale."""
        try:
            key = self.get_signing_key(kid).key
        except PyJWTError:
            return None
        # fetch_data only ever hands PyJWKClient RSA keys.
        return cast(rsa.RSAPublicKey, key)

    def get_signing_key(self, kid: str) -> PyJWK:
        """The key for ``kid``; one refetch if it is unknown (see the cooldown above).

        No refetch when this very lookup fetched the set (a first use, a stale
        set): it is as new as a refetch would be. Raises PyJWKClientError when
        the kid is still unknown.
        """
        with self._client_lock:
            fetches = self._fetches
            key = self.match_kid(self.get_signing_keys(), kid)
            if key is None and self._fetches == fetches and self._may_refetch():
                self._refetched_at = time.monotonic()
                key = self.match_kid(self.get_signing_keys(refresh=True), kid)
            if key is None:
                raise PyJWKClientError(f"no signing key with kid {kid!r}")
            return key

    def _may_refetch(self) -> bool:
        return (
            self._refetched_at is None
            or time.monotonic() - self._refetched_at >= self.cooldown_duration
        )

    def get_jwk_set(self, refresh: bool = False) -> PyJWKSet:
        """The cached key set, refetched when stale or ``refresh``; the last good one if that fails.

        Raises JWKSError when no fetch has succeeded yet.
        """
        with self._state_lock:
            # A failed fetch starts no refetch cooldown, and PyJWKClient fetches
            # an expired set on every call: without this, a down auth service
            # would be asked once per request.
            waiting = (
                self._failed_at is not None
                and time.monotonic() - self._failed_at < self.cooldown_duration
            )
            if not waiting:
                try:
                    self._last_good = super().get_jwk_set(refresh)
                    self._failed_at = None
                except PyJWTError as error:
                    self._failed_at = time.monotonic()
                    kept = len(self._last_good.keys) if self._last_good else 0
                    log.warning(
                        "JWKS fetch from %s failed, keeping %d keys: %s", self.uri, kept, error
                    )
            if self._last_good is None:
                raise JWKSError("no JWKS fetched yet")
            return self._last_good

    def fetch_data(self) -> dict[str, Any]:
        """The usable signing keys at the JWKS URL, as a JWKS; reads at most ``max_bytes``.

        Replaces PyJWKClient's fetch, which reads a response of any size. Raises
        JWKSError when the endpoint cannot be read or holds no usable key.
        """
        # PyJWKClient refused any scheme but http and https.
        request = urllib.request.Request(self.uri, headers=self.headers)  # noqa: S310
        try:
            with urllib.request.build_opener(_NoRedirect).open(
                request, timeout=self.timeout
            ) as response:
                body = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as error:
            error.close()
            raise JWKSError(f"HTTP {error.code}") from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise JWKSError(f"{type(error).__name__}: {error}") from None
        if len(body) > self.max_bytes:
            raise JWKSError(f"JWKS larger than {self.max_bytes} bytes")
        keys = parse_jwks(body)
        self._fetches += 1
        log.info("JWKS fetched from %s: %d keys", self.uri, len(keys))
        # PyJWKClient builds and caches its key set from what this returns: only
        # the vetted keys, with nothing else their JWKs carried.
        return {
            "keys": [
                {**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": kid, "alg": "RS256", "use": "sig"}
                for kid, key in keys.items()
            ]
        }
