"""Signing keys kept in the auth database (``KEY_STORE=database``), shared by every auth node.

- **At rest**: each key pair is a :class:`~auth_app.models.SigningKey` row. The
  public half is in clear; the private half is sealed with AES-GCM under
  ``KEY_ENCRYPTION_KEY`` (configuration, never the database), its kid the
  associated data, so a stolen database yields no key and a sealed key copied
  onto another row does not open.
- **Rotation** (:func:`rotate`) retires the active key and adds a new one in one
  transaction; the partial unique index on ``active`` refuses a second active
  key, so of two rotations at once the later one fails and is run again
  (:class:`ConcurrentChange`). :func:`generate` makes the first key: ``keys
  generate`` runs it, and so does the first node to start on an empty store.
- **Every node the same keys**: each process's :class:`DatabaseKeyRing` asks
  ``SELECT max(id)`` at most every ``KEY_CHECK_INTERVAL_SECONDS`` and reloads
  when a rotation added a row. A new key is published at once but signs only
  ``key_activation_seconds`` after its creation, by when every node has read
  it: a resource server that meets its kid finds it in any node's JWKS. A
  retired key stays published until every token it signed has expired.

Functions take the caller's session and never commit.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from auth_app.models import SigningKey
from common.config import ConfigError
from common.db import utcnow
from common.keys import KEY_SIZE, load_public_key, public_jwk, thumbprint

log = logging.getLogger(__name__)
T = TypeVar("T")

NONCE_BYTES = 12
# Associated data: what a sealed key is for, and whose it is.
_PURPOSE = b"authsvc signing key v1:"
GENERATE_HINT = "run `flask --app auth_app keys generate`"
#: The least time between two checks an unknown kid forces (they come from clients).
UNKNOWN_KID_CHECK_SECONDS = 0.5
#: Tries of a change that keeps meeting others committing at the same time.
COMMIT_ATTEMPTS = 5


class SealedKeyError(Exception):
    """A sealed private key does not open: another key sealed it, or sealed it for another kid."""


class NoSigningKey(Exception):
    """The store holds no active key yet (``keys generate`` makes the first)."""


class ConcurrentChange(Exception):
    """Another rotation or generation committed meanwhile; roll back and run it again."""


class KeySealer:
    """Seals private keys under ``KEY_ENCRYPTION_KEY`` with AES-GCM, each bound to its kid."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "KeySealer(<hidden>)"

    def seal(self, kid: str, private_key: rsa.RSAPrivateKey) -> str:
        """``private_key`` (PKCS #8 DER) under a fresh nonce, ``kid`` in the associated data."""
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, der, _PURPOSE + kid.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, kid: str, sealed: str) -> rsa.RSAPrivateKey:
        """The private key :meth:`seal` sealed for ``kid``; SealedKeyError if it does not open."""
        try:
            raw = base64.b64decode(sealed, validate=True)
            der = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _PURPOSE + kid.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise SealedKeyError(f"signing key {kid} does not open with this key") from None
        # The tag proved these bytes are a key sealed here: RSA's consistency
        # checks (tens of milliseconds a key) would find nothing new.
        key = serialization.load_der_private_key(
            der, password=None, unsafe_skip_rsa_key_validation=True
        )
        if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - only RSA is ever sealed
            raise SealedKeyError(f"signing key {kid} is not an RSA key")
        return key


def _public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _add_key(session: Session, sealer: KeySealer, now: datetime) -> str:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    kid = thumbprint(private_key.public_key())
    session.add(
        SigningKey(
            kid=kid,
            public_key=_public_pem(private_key.public_key()),
            private_key=sealer.seal(kid, private_key),
            created_at=now,
            active=True,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        raise ConcurrentChange("another active key was added meanwhile") from None
    return kid


def _active(session: Session) -> SigningKey | None:
    return session.scalars(select(SigningKey).where(SigningKey.active)).one_or_none()


def generate(session: Session, sealer: KeySealer) -> tuple[str, bool]:
    """Make the first signing key unless there is an active one: ``(kid, made)``.

    An existing key is opened first, so a KEY_ENCRYPTION_KEY other than the one
    that sealed it is found here (SealedKeyError) and not at the next start.
    ConcurrentChange if another node made one meanwhile.
    """
    active = _active(session)
    if active is not None:
        sealer.open(active.kid, active.private_key)
        return active.kid, False
    return _add_key(session, sealer, utcnow()), True


def rotate(
    session: Session, sealer: KeySealer, *, retired_for: timedelta
) -> tuple[str, str, datetime]:
    """Retire the active key and make a new one active: ``(old kid, new kid, rotation time)``.

    Keys retired more than ``retired_for`` ago (its tokens' lifetime after
    their last signature) are deleted: no live token can carry their signature.
    The active key must open under ``sealer`` (SealedKeyError otherwise): a
    host with another KEY_ENCRYPTION_KEY would seal a key no node can use.
    NoSigningKey when there is none; ConcurrentChange when another rotation
    committed meanwhile.
    """
    active = _active(session)
    if active is None:
        raise NoSigningKey("no signing key to rotate")
    sealer.open(active.kid, active.private_key)
    now = utcnow()
    # Only the row still active now: a rotation that committed since the read
    # above (its UPDATE held this one waiting) leaves nothing to retire here.
    retired = session.execute(
        update(SigningKey)
        .where(SigningKey.id == active.id, SigningKey.active)
        .values(active=False, retired_at=now)
        .execution_options(synchronize_session=False)
    )
    if retired.rowcount != 1:  # type: ignore[attr-defined]
        raise ConcurrentChange("another rotation retired the key meanwhile")
    new_kid = _add_key(session, sealer, now)
    session.execute(
        delete(SigningKey)
        .where(SigningKey.retired_at < now - retired_for)
        .execution_options(synchronize_session=False)
    )
    return active.kid, new_kid, now


def commit_with_retry(
    session: Session, change: Callable[[Session], T], *, attempts: int = COMMIT_ATTEMPTS
) -> T:
    """Run ``change`` (generate, rotate) in ``session`` and commit: the commands' transaction.

    A change that met another one committing at the same time
    (ConcurrentChange) is rolled back and run again, on what that one left.
    """
    for attempt in range(1, attempts + 1):
        try:
            result = change(session)
            session.commit()
            return result
        except ConcurrentChange:
            session.rollback()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def version(session: Session) -> int | None:
    """The store's version: the newest row's id (every rotation adds one); None when empty."""
    return session.scalar(select(func.max(SigningKey.id)))


@dataclass(frozen=True)
class _Key:
    kid: str
    public: rsa.RSAPublicKey
    #: Epoch seconds from which it signs (if it is the newest such key).
    signs_from: float
    #: Epoch seconds after which it is no longer trusted (None: while active).
    trusted_until: float | None
    #: Opened only while the key may still sign.
    private: rsa.RSAPrivateKey | None


@dataclass(frozen=True)
class _Loaded:
    version: int | None
    keys: tuple[_Key, ...]  # oldest first


class DatabaseKeyRing:
    """The keys one process signs and verifies with, read from the database key store.

    Nothing is read before :meth:`load` or first use. Afterwards the store's
    version is read at most every ``check_interval`` seconds (and, at most
    every half second, for a kid nobody here knows) and the keys reloaded when
    it moved; a failed check or reload keeps the keys already loaded. A key
    signs from ``activation`` seconds after its creation; a retired one is
    trusted ``retain`` seconds after its last possible signature.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sealer: KeySealer,
        *,
        retain_seconds: float,
        activation_seconds: float,
        check_interval: float = 2.0,
    ) -> None:
        self._sessions = sessions
        self._sealer = sealer
        self.retain_seconds = retain_seconds
        self.activation_seconds = activation_seconds
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._checked = float("-inf")

    # -- loading -------------------------------------------------------------
    def load(self) -> None:
        """Read the keys now; on an empty store, make the first one (as ``keys generate`` does).

        Every node may do so at once: the store keeps one. ConfigError when
        the keys do not open under this node's KEY_ENCRYPTION_KEY.
        """
        with self._lock:
            self._loaded = self._read_or_make_first()
            self._checked = time.monotonic()

    def _read_or_make_first(self) -> _Loaded:
        try:
            return self._read()
        except NoSigningKey:
            with self._sessions() as session:
                try:
                    kid, made = commit_with_retry(session, lambda s: generate(s, self._sealer))
                except SealedKeyError as error:
                    raise self._unopened(error) from None
            if made:
                log.info("the key store was empty: made the first signing key %s", kid)
            return self._read()

    def _unopened(self, error: SealedKeyError) -> ConfigError:
        return ConfigError(
            f"KEY_ENCRYPTION_KEY: {error}; every auth node needs the one that sealed it"
        )

    def load_at_start(self) -> None:
        """Read the keys as a process starts (see :meth:`load`), so a wrong key stops it.

        A database that cannot be reached yet does not: the keys are read on
        first use instead. A store without its table is a configuration error.
        """
        try:
            self.load()
        except (ProgrammingError, OperationalError) as error:
            if isinstance(error, ProgrammingError) or "no such table" in str(error.orig):
                raise ConfigError(
                    "KEY_STORE=database: the auth database has no signing_keys table; "
                    "run `alembic -n auth upgrade head`"
                ) from None
            log.warning("signing keys not read at start (database unavailable); read on first use")

    def _read(self) -> _Loaded:
        with self._sessions() as session:
            rows = session.scalars(select(SigningKey).order_by(SigningKey.id)).all()
        if not any(row.active for row in rows):
            raise NoSigningKey(f"no signing key in the auth database; {GENERATE_HINT}")
        now = time.time()
        keys = []
        for row in rows:
            last_signature = None
            if row.retired_at is not None:
                last_signature = row.retired_at.timestamp() + self.activation_seconds
                if last_signature + self.retain_seconds < now:
                    continue
            private = None
            if last_signature is None or last_signature > now:
                try:
                    private = self._sealer.open(row.kid, row.private_key)
                except SealedKeyError as error:
                    raise self._unopened(error) from None
            keys.append(
                _Key(
                    kid=row.kid,
                    public=load_public_key(row.public_key.encode(), f"signing key {row.kid}"),
                    signs_from=row.created_at.timestamp() + self.activation_seconds,
                    trusted_until=(
                        None if last_signature is None else last_signature + self.retain_seconds
                    ),
                    private=private,
                )
            )
        return _Loaded(version=max(row.id for row in rows), keys=tuple(keys))

    def _check(self, *, at_least: float) -> None:
        """Reload if the store's version moved, unless checked within ``at_least`` seconds.

        Other threads meanwhile go on with the keys loaded; a failure keeps them.
        """
        if time.monotonic() - self._checked < at_least:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._checked < at_least:
                return
            self._checked = now
            loaded = self._loaded
            try:
                with self._sessions() as session:
                    if loaded is not None and version(session) == loaded.version:
                        return
                self._loaded = self._read()
                log.info("signing keys reloaded: %d keys", len(self._loaded.keys))
            except (ConfigError, NoSigningKey, SQLAlchemyError) as error:
                log.warning(
                    "signing key check failed, keeping the loaded keys: %s",
                    type(error).__name__ if isinstance(error, SQLAlchemyError) else error,
                )

    def _keys(self) -> tuple[_Key, ...]:
        loaded = self._loaded
        if loaded is None:
            # First use (nothing read at start): every thread waits for the one read.
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._read_or_make_first()
                    self._checked = time.monotonic()
                loaded = self._loaded
        else:
            self._check(at_least=self.check_interval)
            loaded = self._loaded or loaded
        return loaded.keys

    # -- use -----------------------------------------------------------------
    def signing_key(self) -> tuple[str, rsa.RSAPrivateKey]:
        """``(kid, private key)``: the newest key whose activation time has come.

        Before any has (a first key just made), the oldest that may sign.
        """
        now = time.time()
        candidates = [key for key in self._keys() if key.private is not None]
        if not candidates:  # pragma: no cover - _read keeps the active key's private half
            raise ConfigError(f"KEY_STORE=database: no key to sign with; {GENERATE_HINT}")
        ready = [key for key in candidates if key.signs_from <= now]
        chosen = ready[-1] if ready else candidates[0]
        assert chosen.private is not None
        return chosen.kid, chosen.private

    def _live(self) -> dict[str, rsa.RSAPublicKey]:
        now = time.time()
        return {
            key.kid: key.public
            for key in self._keys()
            if key.trusted_until is None or key.trusted_until > now
        }

    def get(self, kid: str) -> rsa.RSAPublicKey | None:
        """The public key with this kid, if it may still verify live tokens.

        An unknown kid may be a key another node has just begun to sign with:
        the store is asked at once (at most every half second) before refusing.
        """
        key = self._live().get(kid)
        if key is None:
            self._check(at_least=UNKNOWN_KID_CHECK_SECONDS)
            key = self._live().get(kid)
        return key

    def jwks(self) -> dict:
        """The RFC 7517 key set of every key whose tokens may still be alive, oldest first."""
        return {"keys": [public_jwk(key) for key in self._live().values()]}
