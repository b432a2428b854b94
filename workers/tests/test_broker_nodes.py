"""A broker URL that lists a cluster's nodes: every connection goes to the first that answers.

The nodes that are down here are ports where nothing listens; the one that
answers is the real RabbitMQ. The failover of a real three-node cluster under
load is ``tests/integration/test_broker_cluster.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pytest

from common.config import EXIT_CONFIG_ERROR
from common.events import USER_QUEUE
from tests.support.broker import broker_settings, drain
from tests.support.servers import free_port
from workers.broker import broker_user, connect, declare_queue
from workers.publisher import ConfirmingPublisher, Message

ROOT = Path(__file__).resolve().parents[2]


def down_node(url: str) -> str:
    """``url`` with its port changed to one where nothing listens."""
    parts = urlsplit(url)
    return parts._replace(
        netloc=f"{parts.username}:{parts.password}@127.0.0.1:{free_port()}"
    ).geturl()


def test_a_consumer_connection_passes_over_nodes_that_are_down(vhost_url):
    settings = broker_settings(f"{down_node(vhost_url)},{down_node(vhost_url)},{vhost_url}")
    connection = connect(settings, "test")
    try:
        channel = connection.channel()
        declare_queue(channel, USER_QUEUE, settings)
        assert channel.queue_declare(USER_QUEUE, passive=True).method.message_count == 0
    finally:
        connection.close()


def test_the_publisher_passes_over_a_node_that_is_down_and_is_confirmed(vhost_url):
    settings = broker_settings(f"{down_node(vhost_url)},{vhost_url}")
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    connection.channel().queue_declare("nodes.p", durable=True)
    connection.close()
    publisher = ConfirmingPublisher(settings, "test")
    try:
        properties = pika.BasicProperties(message_id=str(uuid.uuid4()), delivery_mode=2)
        answer = publisher.publish([Message("", "nodes.p", b"{}", properties)])
        assert answer.outcomes == [True] and answer.error is None
    finally:
        publisher.close()
    assert [props.message_id for props, _ in drain(vhost_url, "nodes.p", 1)] == [
        properties.message_id
    ]


def test_with_every_node_down_both_raise_a_connection_error_for_the_retry_loop(vhost_url):
    settings = broker_settings(f"{down_node(vhost_url)},{down_node(vhost_url)}")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        connect(settings, "test")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        ConfirmingPublisher(settings, "test")


def test_the_sender_is_the_user_every_node_is_reached_as(vhost_url):
    assert broker_user(broker_settings(f"{down_node(vhost_url)},{vhost_url}")) == "guest"


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "RABBITMQ_URL",
            "amqp://u:secret@mq1/%2F,http://mq2",
            "RABBITMQ_URL (URL 2 of 2) must be an amqp:// or amqps:// URL",
        ),
        (
            "AUTH_DATABASE_URL",
            "postgresql://u@db1,db2/auth?target_session_attrs=standby",
            "AUTH_DATABASE_URL: target_session_attrs=standby may choose a standby, where "
            "nothing can be written (use read-write)",
        ),
    ],
    ids=["broker", "database"],
)
def test_a_bad_host_list_stops_a_worker_at_start_with_one_line(variable, value, line):
    result = subprocess.run(
        [sys.executable, "-m", "workers.relay", "auth"],
        env={**os.environ, variable: value},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_CONFIG_ERROR
    assert result.stderr == f"configuration error: {line}\n"
