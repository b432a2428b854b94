"""RabbitMQ's users for compose (deploy/rabbitmq/definitions.json), tried on the real broker.

A copy of the definitions, with a vhost and user names of this run's own, is
imported into the local RabbitMQ. Then each service's user declares what its
workers declare and publishes what its relay publishes, and is refused the
other service's exchange and queues: neither can forge the other's events.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import quote

import pika
import pytest
import yaml

from common.events import AUTH_EVENTS, AUTH_QUEUE, USER_EVENTS, USER_QUEUE
from tests.conftest import ROOT
from tests.support.servers import RABBITMQ_HOST, RABBITMQ_PORT, run_id, server_down
from workers.broker import declare_queue
from workers.settings import BrokerSettings

DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
DEVELOPMENT = ROOT / "deploy" / "rabbitmq" / "definitions.development.json"
SERVICES = {"auth-service": (USER_EVENTS, AUTH_QUEUE), "user-service": (AUTH_EVENTS, USER_QUEUE)}


def definitions() -> dict:
    return json.loads(DEFINITIONS.read_text())


def import_definitions(document: dict, users: list[str]) -> None:
    """Import ``document`` into the local RabbitMQ and wait until its ``users`` exist.

    The broker node reads the file itself, as its own system user, so the file
    is one that user can read. (This RabbitMQ reads no definitions from standard
    input.) The import runs asynchronously.
    """
    fd, name = tempfile.mkstemp(prefix="definitions-", suffix=".json", dir="/tmp")
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(document, file)
        os.chmod(name, 0o644)
        try:
            result = subprocess.run(
                ["rabbitmqctl", "-q", "import_definitions", name],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as error:
            server_down("RabbitMQ", f"{RABBITMQ_HOST}:{RABBITMQ_PORT}", error)
        assert result.returncode == 0, result.stdout + result.stderr
        for _ in range(100):
            listed = subprocess.run(
                ["rabbitmqctl", "-q", "list_users"], capture_output=True, text=True, timeout=60
            ).stdout
            if all(user in listed for user in users):
                return
            time.sleep(0.1)
        raise AssertionError(f"the definitions' users did not appear: {users}")
    finally:
        os.unlink(name)


def test_each_hash_is_of_the_development_password_compose_uses():
    for user in definitions()["users"]:
        raw = base64.b64decode(user["password_hash"])
        salt, digest = raw[:4], raw[4:]
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert hashlib.sha256(salt + user["name"].encode()).digest() == digest, user["name"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    urls = {
        name: service["environment"]["RABBITMQ_URL"]
        for name, service in compose["services"].items()
        if "RABBITMQ_URL" in service.get("environment", {})
    }
    assert set(urls) == {"auth_relay", "auth_worker", "user_relay", "user_worker"}
    for name, url in urls.items():
        user = "auth-service" if name.startswith("auth") else "user-service"
        assert url.startswith(f"amqp://{user}:${{"), (name, url)


def test_the_development_broker_adds_only_the_guest_user_make_run_uses():
    base, development = definitions(), json.loads(DEVELOPMENT.read_text())
    [guest] = [user for user in development["users"] if user["name"] == "guest"]
    assert {**development, "users": base["users"], "permissions": base["permissions"]} == base
    assert [u for u in development["users"] if u["name"] != "guest"] == base["users"]
    raw = base64.b64decode(guest["password_hash"])
    assert hashlib.sha256(raw[:4] + b"guest").digest() == raw[4:]
    assert [p for p in development["permissions"] if p["user"] != "guest"] == base["permissions"]
    assert {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} in (
        development["permissions"]
    )
    # The development compose file loads them, and lets guest in through the published port.
    override = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())
    mounts = override["services"]["rabbitmq"]["volumes"]
    assert "./deploy/rabbitmq/definitions.development.json:/etc/rabbitmq/definitions.json:ro" in (
        mounts
    )
    conf = (ROOT / "deploy" / "rabbitmq" / "rabbitmq.development.conf").read_text()
    assert "loopback_users.guest = false" in conf
    assert "load_definitions = /etc/rabbitmq/definitions.json" in conf


@pytest.fixture(scope="module")
def imported() -> Iterator[dict[str, str]]:
    """The definitions imported under a vhost and user names of this run; URLs by service."""
    marker = run_id()
    vhost = f"test_definitions_{marker}"
    document = definitions()
    names = {user["name"]: f"test_{marker}_{user['name']}" for user in document["users"]}
    document["users"] = [{**user, "name": names[user["name"]]} for user in document["users"]]
    document["vhosts"] = [{"name": vhost}]
    document["permissions"] = [
        {**permission, "user": names[permission["user"]], "vhost": vhost}
        for permission in document["permissions"]
    ]
    import_definitions(document, list(names.values()))
    try:
        yield {
            service: f"amqp://{names[service]}:{service}@{RABBITMQ_HOST}:{RABBITMQ_PORT}/"
            f"{quote(vhost, safe='')}"
            for service in SERVICES
        }
    finally:
        for name in names.values():
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_user", name], capture_output=True, timeout=60
            )
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )


def open_channel(url: str):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    return connection, connection.channel()


def publish(url: str, exchange: str) -> None:
    connection, channel = open_channel(url)
    try:
        # With confirms, as the relay publishes: a refused publish closes the channel here.
        channel.confirm_delivery()
        channel.basic_publish(exchange, "user.sync", b"{}")
    finally:
        if connection.is_open:
            connection.close()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_declares_its_topology_and_publishes_to_its_own_exchange(imported, service):
    url = imported[service]
    exchange, queue = SERVICES[service]
    settings = BrokerSettings(url=url)
    connection, channel = open_channel(url)
    try:
        declare_queue(channel, queue, settings)
    finally:
        connection.close()
    publish(url, exchange)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_is_refused_the_other_services_exchange_and_queue(imported, service):
    url = imported[service]
    other = next(name for name in SERVICES if name != service)
    other_exchange, other_queue = SERVICES[other]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        publish(url, other_exchange)
    assert refused.value.reply_code == 403
    connection, channel = open_channel(url)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            declare_queue(channel, other_queue, BrokerSettings(url=url))
        assert refused.value.reply_code == 403
    finally:
        if connection.is_open:
            connection.close()
