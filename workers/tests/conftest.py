"""Fixtures for the worker tests: a fresh RabbitMQ vhost and PostgreSQL database per run."""

from __future__ import annotations

import pytest

from tests.support.servers import fresh_postgres_database, fresh_vhost


@pytest.fixture(scope="session")
def amqp_url():
    """A vhost of this run's own."""
    with fresh_vhost("workers") as url:
        yield url


@pytest.fixture
def vhost_url():
    """A vhost for one test that needs an empty broker."""
    with fresh_vhost("workers_one") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database of this run's own."""
    with fresh_postgres_database("workers") as url:
        yield url
