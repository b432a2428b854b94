"""Ceilings measured in the same run: bcrypt alone, PyJWT alone (the drain's: drain_ceiling.py)."""

from __future__ import annotations

import threading
import time
import timeit
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import jwt
from cryptography.hazmat.primitives import serialization

from common.keys import KeyRing
from common.tokens import TokenVerifier


def bcrypt_rate(rounds: int, threads: int, seconds: float) -> float:
    """``checkpw`` calls per second at cost ``rounds`` on ``threads`` threads (GIL released)."""
    password = b"x" * 44  # the service checks a 44-byte base64 HMAC of the password
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds))
    counts = [0] * threads
    stop = threading.Event()

    def spin(index: int) -> None:
        while not stop.is_set():
            bcrypt.checkpw(password, hashed)
            counts[index] += 1

    workers = [threading.Thread(target=spin, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def verify_costs(token: str, public_key_path: Path, issuer: str, audience: str, number: int):
    """``(bare PyJWT seconds, TokenVerifier seconds)`` per verification, best of 3 loops."""
    key = serialization.load_pem_public_key(public_key_path.read_bytes())
    verifier = TokenVerifier(KeyRing(public_path=public_key_path), issuer=issuer, audience=audience)

    def bare():
        jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=issuer)

    def ours():
        verifier.verify(token)

    bare_cost = min(timeit.repeat(bare, number=number, repeat=3)) / number
    ours_cost = min(timeit.repeat(ours, number=number, repeat=3)) / number
    return bare_cost, ours_cost


@contextmanager
def count_pem_loads():
    """Count every PEM public-key parse in this process while the block runs.

    Both entry points are patched: cryptography's loader as the project's
    KeyRing calls it, and the name PyJWT imported for keys given as PEM bytes.
    """
    import jwt.algorithms

    counter = {"calls": 0}
    original = serialization.load_pem_public_key
    original_jwt = getattr(jwt.algorithms, "load_pem_public_key", None)

    def counting(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)

    serialization.load_pem_public_key = counting
    if original_jwt is not None:
        jwt.algorithms.load_pem_public_key = counting
    try:
        yield counter
    finally:
        serialization.load_pem_public_key = original
        if original_jwt is not None:
            jwt.algorithms.load_pem_public_key = original_jwt
