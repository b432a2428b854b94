"""Env getters and the URL precedence of the contract."""

from __future__ import annotations

import pytest

from common.config import ConfigError, Env, database_url, rabbitmq_url, redis_url


def test_database_url_precedence(tmp_path, monkeypatch):
    env = Env({"USER_DATABASE_URL": "postgres://a@h/db", "DATABASE_URL": "sqlite:///x.db"})
    assert database_url(env, "USER", "user") == "postgresql://a@h/db"
    env = Env({"DATABASE_URL": "sqlite:///x.db", "USER_POSTGRES_HOST": "h"})
    assert database_url(env, "USER", "user") == "sqlite:///x.db"
    env = Env({"USER_POSTGRES_HOST": "db", "USER_POSTGRES_PASSWORD": "p@ss/word"})
    assert (
        database_url(env, "USER", "user")
        == "postgresql+psycopg2://postgres:p%40ss%2Fword@db:5432/user"
    )
    monkeypatch.chdir(tmp_path)
    assert database_url(Env({}), "AUTH", "auth") == f"sqlite:///{tmp_path}/var/auth.db"


def test_database_url_refuses_other_schemes():
    with pytest.raises(ConfigError, match="AUTH_DATABASE_URL"):
        database_url(Env({"AUTH_DATABASE_URL": "mysql://x"}), "AUTH", "auth")


def test_broker_and_redis_urls_from_parts():
    env = Env(
        {
            "RABBITMQ_HOST": "mq",
            "RABBITMQ_USER": "u",
            "RABBITMQ_PASSWORD": "p w",
            "RABBITMQ_VHOST": "/",
        }
    )
    assert rabbitmq_url(env) == "amqp://u:p%20w@mq:5672/%2F"
    assert rabbitmq_url(Env({"CLOUDAMQP_URL": "amqps://x"})) == "amqps://x"
    with pytest.raises(ConfigError, match="RABBITMQ_URL"):
        rabbitmq_url(Env({"RABBITMQ_URL": "http://x"}))
    env = Env({"AUTH_REDIS_HOST": "r", "AUTH_REDIS_DB": "3", "AUTH_REDIS_PASSWORD": "s"})
    assert redis_url(env) == "redis://:s@r:6379/3"
    with pytest.raises(ConfigError, match="REDIS_URL"):
        redis_url(Env({"REDIS_URL": "http://x"}))


@pytest.mark.parametrize(
    ("getter", "value", "message"),
    [
        (lambda e: e.int("N", 1, minimum=2), "1", "N must be at least 2"),
        (lambda e: e.int("N", 1, maximum=2), "3", "N must be at most 2"),
        (lambda e: e.float("N", 1.0), "x", "N must be a number"),
        (lambda e: e.float("N", 1.0, minimum=0), "-1", "N must be at least 0"),
        (lambda e: e.bool("N", True), "maybe", "N must be true or false"),
        (lambda e: e.choice("N", "a", ("a", "b")), "c", "N must be one of a, b"),
    ],
)
def test_a_bad_value_names_the_variable(getter, value, message):
    with pytest.raises(ConfigError, match=message):
        getter(Env({"N": value}))


def test_getters_read_values_and_defaults():
    env = Env({"B": "off", "F": "2.5", "L": "a, b,,c", "S": "  x  ", "E": "  "})
    assert env.bool("B", True) is False
    assert env.float("F", 0.0) == 2.5
    assert env.list("L") == ["a", "b", "c"]
    assert env.str("S") == "x"
    assert env.str("E", "default") == "default"
    assert env.list("MISSING") == []
