"""RSA keys: generation, rotation, the JWKS document and a key ring that reloads.

Layout on disk (the default ``keys/`` directory, never committed)::

    keys/private.pem                  active signing key (PRIVATE_KEY_PATH)
    keys/public.pem                   its public half (PUBLIC_KEY_PATH)
    keys/retired/<epoch>-<kid>.pem    public halves of earlier signing keys

A retired key stays published (and trusted) until every token it signed has
expired: ``epoch + access-token lifetime + leeway``. The ``kid`` is the RFC 7638
thumbprint of the public key, so every process derives the same one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from common.config import ConfigError

log = logging.getLogger(__name__)

KEY_SIZE = 2048
RETIRED_DIR = "retired"


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of an RSA public key, base64url without padding."""
    numbers = public_key.public_numbers()
    canonical = json.dumps(
        {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def public_jwk(public_key: rsa.RSAPublicKey) -> dict:
    """The public key as a JWK for signature verification with RS256."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    return {
        "kty": "RSA",
        "kid": thumbprint(public_key),
        "use": "sig",
        "alg": "RS256",
        "n": jwk["n"],
        "e": jwk["e"],
    }


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def generate_key_pair(private_path: Path, public_path: Path, *, force: bool = False) -> str | None:
    """Write a new RSA key pair unless one exists; returns its kid, or None if kept."""
    if private_path.exists() and not force:
        return None
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    _write_atomically(public_path, _public_pem(key.public_key()), 0o644)
    _write_atomically(private_path, _private_pem(key), 0o600)
    return thumbprint(key.public_key())


def rotate_key_pair(
    private_path: Path, public_path: Path, *, retain_seconds: int
) -> tuple[str, str]:
    """Retire the active key (its public half stays trusted) and make a new one active.

    Retired keys older than ``retain_seconds`` are deleted, since no live token
    can carry their signature any more. Returns ``(old_kid, new_kid)``.
    """
    old = load_public_key(public_path.read_bytes(), "PUBLIC_KEY_PATH")
    old_kid = thumbprint(old)
    retired = public_path.parent / RETIRED_DIR
    retired.mkdir(exist_ok=True)
    now = int(time.time())
    _write_atomically(retired / f"{now}-{old_kid}.pem", _public_pem(old), 0o644)
    new_kid = generate_key_pair(private_path, public_path, force=True)
    for path in retired.glob("*.pem"):
        epoch = _retired_epoch(path)
        if epoch is not None and epoch + retain_seconds < now:
            path.unlink(missing_ok=True)
    return old_kid, new_kid  # type: ignore[return-value]


def _retired_epoch(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def load_private_key(pem: bytes, variable: str) -> rsa.RSAPrivateKey:
    """Parse a PEM private key, insisting on RSA of at least 2048 bits."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{variable} does not hold a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ConfigError(f"{variable} must be an RSA key of at least 2048 bits")
    return key


def load_public_key(pem: bytes, variable: str) -> rsa.RSAPublicKey:
    """Parse a PEM public key, insisting on RSA of at least 2048 bits."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ConfigError(f"{variable} does not hold a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ConfigError(f"{variable} must be an RSA key of at least 2048 bits")
    return key


def _read(path: Path, variable: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{variable}: no such file {path}{hint}") from None
    except OSError as error:
        raise ConfigError(f"{variable}: cannot read {path}: {error.strerror}") from None


class SigningKeys(Protocol):
    """What an issuer signs with and publishes: a KeyRing, or the auth database's key store."""

    def signing_key(self) -> tuple[str, rsa.RSAPrivateKey]:  # pragma: no cover - protocol
        """``(kid, private key)`` to sign with now."""

    def get(self, kid: str) -> rsa.RSAPublicKey | None:  # pragma: no cover - protocol
        """The public key with this kid, if it may still verify live tokens."""

    def jwks(self) -> dict:  # pragma: no cover - protocol
        """The RFC 7517 key set of every key whose tokens may still be alive."""


@dataclass
class _Loaded:
    signing: tuple[str, rsa.RSAPrivateKey] | None
    public: dict[str, rsa.RSAPublicKey]
    expiry: dict[str, float]  # kid -> time after which a retired key is no longer trusted
    stamp: tuple = field(default_factory=tuple)


class KeyRing:
    """The keys one process signs or verifies with, loaded once and reloaded on change.

    Give it files (paths) or PEM text (for platforms without files). Files are
    checked for changes at most every ``reload_interval`` seconds, so a
    ``keys rotate`` reaches running processes without a restart; a reload that
    fails keeps the keys already loaded.
    """

    GENERATE_HINT = " (run `flask --app auth_app keys generate`)"

    def __init__(
        self,
        *,
        private_path: Path | None = None,
        public_path: Path | None = None,
        private_pem: str | None = None,
        public_pem: str | None = None,
        retain_seconds: int = 910,
        reload_interval: float = 2.0,
        need_private: bool = False,
    ):
        self.private_path = private_path
        self.public_path = public_path
        self.private_pem = private_pem
        self.public_pem = public_pem
        self.retain_seconds = retain_seconds
        self.reload_interval = reload_interval
        self.need_private = need_private
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._loaded = self._load()

    # -- loading -------------------------------------------------------------
    def _files(self) -> list[Path]:
        files = [p for p in (self.private_path, self.public_path) if p is not None]
        if self.public_path is not None and self.public_pem is None:
            retired = self.public_path.parent / RETIRED_DIR
            if retired.is_dir():
                files.extend(sorted(retired.glob("*.pem")))
        return files

    def _stamp(self) -> tuple:
        stamp: list[tuple[str, int | None, int | None]] = []
        for path in self._files():
            try:
                st = path.stat()
                stamp.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append((str(path), None, None))
        return tuple(stamp)

    def _load(self) -> _Loaded:
        stamp = self._stamp()
        signing = None
        public: dict[str, rsa.RSAPublicKey] = {}
        expiry: dict[str, float] = {}
        if self.private_pem is not None:
            private = load_private_key(self.private_pem.encode(), "JWT_PRIVATE_KEY")
        elif self.private_path is not None:
            pem = _read(self.private_path, "PRIVATE_KEY_PATH", self.GENERATE_HINT)
            private = load_private_key(pem, "PRIVATE_KEY_PATH")
        else:
            private = None
        if private is not None:
            signing = (thumbprint(private.public_key()), private)
            public[signing[0]] = private.public_key()
        elif self.need_private:
            raise ConfigError("PRIVATE_KEY_PATH or JWT_PRIVATE_KEY must be set")
        if self.public_pem is not None:
            key = load_public_key(self.public_pem.encode(), "JWT_PUBLIC_KEY")
            public[thumbprint(key)] = key
        elif self.public_path is not None and (private is None or self.public_path.exists()):
            pem = _read(self.public_path, "PUBLIC_KEY_PATH", self.GENERATE_HINT)
            key = load_public_key(pem, "PUBLIC_KEY_PATH")
            public[thumbprint(key)] = key
            retired = self.public_path.parent / RETIRED_DIR
            for path in sorted(retired.glob("*.pem")) if retired.is_dir() else []:
                epoch = _retired_epoch(path)
                if epoch is None:
                    continue
                try:
                    old = load_public_key(path.read_bytes(), str(path))
                except (ConfigError, OSError):
                    log.warning("skipping unreadable retired key %s", path.name)
                    continue
                kid = thumbprint(old)
                if kid not in public:
                    public[kid] = old
                    expiry[kid] = epoch + self.retain_seconds
        if not public:
            raise ConfigError("PUBLIC_KEY_PATH or JWT_PUBLIC_KEY must be set")
        return _Loaded(signing, public, expiry, stamp)

    def _maybe_reload(self) -> None:
        if self.reload_interval < 0:
            return
        now = time.monotonic()
        if now - self._checked < self.reload_interval:
            return
        with self._lock:
            if now - self._checked < self.reload_interval:
                return
            self._checked = now
            if self._stamp() == self._loaded.stamp:
                return
            try:
                self._loaded = self._load()
                log.info("key ring reloaded: %d public keys", len(self._loaded.public))
            except ConfigError as error:
                log.warning("key reload failed, keeping the loaded keys: %s", error)

    def reload(self) -> None:
        """Reload from the files now (after a rotation in the same process)."""
        self._checked = float("-inf")
        self._maybe_reload()

    # -- use -----------------------------------------------------------------
    def signing_key(self) -> tuple[str, rsa.RSAPrivateKey]:
        """``(kid, private key)`` of the active signing key."""
        self._maybe_reload()
        if self._loaded.signing is None:
            raise ConfigError("PRIVATE_KEY_PATH or JWT_PRIVATE_KEY must be set")
        return self._loaded.signing

    def _live(self) -> dict[str, rsa.RSAPublicKey]:
        self._maybe_reload()
        now = time.time()
        loaded = self._loaded
        return {
            kid: key
            for kid, key in loaded.public.items()
            if kid not in loaded.expiry or loaded.expiry[kid] > now
        }

    def get(self, kid: str) -> rsa.RSAPublicKey | None:
        """The public key with this kid, if it may still verify live tokens."""
        key = self._live().get(kid)
        # An unknown kid may be a key another process (a sibling gunicorn
        # worker, the rotate CLI) just put on disk: look at the files now, or
        # its fresh tokens would be refused here until the next periodic check.
        if key is None and self.reload_interval >= 0 and self._stamp() != self._loaded.stamp:
            self.reload()
            key = self._live().get(kid)
        return key

    def jwks(self) -> dict:
        """The RFC 7517 key set of every key whose tokens may still be alive."""
        return {"keys": [public_jwk(key) for key in self._live().values()]}
