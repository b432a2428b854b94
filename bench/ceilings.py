"""Ceilings measured in the same run: bcrypt alone, PyJWT alone, raw pika publish and consume."""

from __future__ import annotations

import threading
import time
import timeit
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import jwt
import pika
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


def pika_round_trip(amqp_url: str, body: bytes, count: int, *, queue_type: str, prefetch: int):
    """Raw pika: publish ``count`` messages with confirms one by one, then consume and ack them.

    Returns ``(publish msg/s, consume msg/s, both in sequence msg/s)``. The queue
    is the same type the workers declare, the messages persistent and mandatory,
    as the relay sends them.
    """
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        queue = f"bench.raw.{time.monotonic_ns()}"
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
        channel.confirm_delivery()
        properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
        )
        started = time.perf_counter()
        for _ in range(count):
            channel.basic_publish("", queue, body, properties=properties, mandatory=True)
        published = time.perf_counter() - started
        channel.basic_qos(prefetch_count=prefetch)
        received = 0
        started = time.perf_counter()
        for method, _properties, _body in channel.consume(queue, inactivity_timeout=10):
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            received += 1
            if received == count:
                break
        consumed = time.perf_counter() - started
        channel.cancel()
        channel.queue_delete(queue)
    finally:
        connection.close()
    return count / published, received / consumed, count / (published + consumed)
