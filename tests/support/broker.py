"""Broker-side test support: a consumer or relay in a thread, and reading queues.

Against the real RabbitMQ, in a vhost of the test run's own.
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import pika

from workers.broker import node_parameters
from workers.settings import BrokerSettings


def broker_settings(url: str, **overrides: Any) -> BrokerSettings:
    """Settings for a test broker connection: quorum queues, few tries, small batches."""
    values = {"url": url, "queue_type": "quorum", "max_tries": 3, "prefetch": 10}
    values.update(overrides)
    return BrokerSettings(**values)


class Running:
    """A relay or consumer running in a thread until stopped."""

    def __init__(self, target):
        self.target = target
        self.thread = threading.Thread(target=lambda: target.run(install_signals=False))

    def __enter__(self):
        self.thread.start()
        return self.target

    def __exit__(self, *exc):
        self.target.stopper.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "worker thread did not stop"


def drain(url: str, queue: str, expected: int, timeout: float = 20.0) -> list:
    """Read (and ack) up to ``expected`` messages from ``queue``, waiting at most ``timeout``."""
    connection = pika.BlockingConnection(node_parameters(url))
    try:
        channel = connection.channel()
        got = []
        for method, properties, body in channel.consume(queue, inactivity_timeout=timeout):
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            got.append((properties, body))
            if len(got) >= expected:
                break
        channel.cancel()
        return got
    finally:
        connection.close()


def queue_depth(url: str, queue: str) -> int:
    """How many ready messages ``queue`` holds (``url`` may list a cluster's nodes)."""
    connection = pika.BlockingConnection(node_parameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def connection_ports(url: str, name: str) -> list[int]:
    """The client ports of the open connections named ``name`` in the vhost of ``url``."""
    vhost = unquote(urlsplit(url).path.lstrip("/")) or "/"
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "-p", vhost, "peer_port", "client_properties"]
        + ["--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return sorted(
        row["peer_port"]
        for row in json.loads(listing)
        if ["connection_name", "longstr", name] in row["client_properties"]
    )
