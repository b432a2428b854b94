"""Fixtures for the tests across both services: the auth app's test fixtures, a broker vhost."""

from __future__ import annotations

import pytest

from auth_app.tests.conftest import key_paths, make_app, redis_client, redis_prefix
from tests.support.servers import fresh_vhost

__all__ = ["key_paths", "make_app", "redis_client", "redis_prefix"]


@pytest.fixture(scope="session")
def amqp_url():
    """A vhost of this run's own."""
    with fresh_vhost("integration") as url:
        yield url
