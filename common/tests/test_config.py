"""Env getters and the URL precedence of the contract."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.engine import make_url

from common.config import (
    ConfigError,
    Env,
    RedisSentinel,
    database_url,
    rabbitmq_url,
    redis_sentinel,
    redis_url,
    split_broker_urls,
)


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


# -- several broker nodes ------------------------------------------------------


def test_a_broker_url_may_list_the_nodes_of_a_cluster():
    env = Env({"RABBITMQ_URL": " amqp://u:p@mq1:5672/%2F , amqp://u:p@mq2/%2F,amqps://u:q@mq3/%2F"})
    assert rabbitmq_url(env) == "amqp://u:p@mq1:5672/%2F,amqp://u:p@mq2/%2F,amqps://u:q@mq3/%2F"
    assert split_broker_urls(rabbitmq_url(env)) == [
        "amqp://u:p@mq1:5672/%2F",
        "amqp://u:p@mq2/%2F",
        "amqps://u:q@mq3/%2F",
    ]
    # One vhost however written: "/" is the path "", "/" or "/%2F".
    assert rabbitmq_url(Env({"RABBITMQ_URL": "amqp://a,amqp://guest@b/,amqp://c/%2F"}))
    cloud = Env({"CLOUDAMQP_URL": "amqps://u:p@a/v,amqps://u:p@b/v"})
    assert split_broker_urls(rabbitmq_url(cloud)) == ["amqps://u:p@a/v", "amqps://u:p@b/v"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("amqp://u:p@mq1/%2F,http://mq2", r"RABBITMQ_URL \(URL 2 of 2\) must be an amqp://"),
        (
            "amqp://u:p@mq1:many/%2F,amqp://u:p@mq2/%2F",
            r"RABBITMQ_URL \(URL 1 of 2\) has a bad port",
        ),
        ("amqp://u:p@mq1:99999/%2F", "RABBITMQ_URL has a bad port"),
        ("amqp://u:p@mq1/%2F,amqp://u:p@:5672/%2F", r"RABBITMQ_URL \(URL 2 of 2\) has no host"),
        (" , ", "RABBITMQ_URL must be an amqp:// or amqps:// URL"),
    ],
)
def test_each_broker_url_is_checked_and_named_by_its_place_in_the_list(value, message):
    with pytest.raises(ConfigError, match=message) as raised:
        rabbitmq_url(Env({"RABBITMQ_URL": value}))
    assert ":p@" not in str(raised.value)  # never the password


@pytest.mark.parametrize(
    "value",
    ["amqp://a:p@mq1/%2F,amqp://b:p@mq2/%2F", "amqp://a:p@mq1/%2F,amqp://a:p@mq2/other"],
    ids=["users", "vhosts"],
)
def test_the_nodes_of_a_broker_url_share_one_user_and_vhost(value):
    with pytest.raises(ConfigError, match="CLOUDAMQP_URL: every URL must name the same user"):
        rabbitmq_url(Env({"CLOUDAMQP_URL": value}))


# -- several database hosts ----------------------------------------------------


def test_a_database_url_in_libpqs_multi_host_form_becomes_one_sqlalchemy_reads():
    env = Env({"AUTH_DATABASE_URL": "postgres://u:p%40w@db1:5432,db2:5433/auth?sslmode=require"})
    url = database_url(env, "AUTH", "auth")
    assert url == (
        "postgresql://u:p%40w@/auth?host=db1,db2&port=5432,5433&sslmode=require"
        "&target_session_attrs=read-write"
    )
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.database) == ("u", "p@w", "auth")
    assert parsed.query["host"] == "db1,db2"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@db1,db2/auth",
        "postgresql+psycopg2://u@/auth?host=db1,db2&port=5432,5433",
        "postgresql+psycopg2://u@/auth?host=db1:5432&host=db2:5433",
    ],
)
def test_several_database_hosts_connect_to_the_primary_unless_told_otherwise(url):
    parsed = make_url(database_url(Env({"DATABASE_URL": url}), "USER", "user"))
    assert parsed.query["target_session_attrs"] == "read-write"
    primary = url + ("&" if "?" in url else "?") + "target_session_attrs=primary"
    given = database_url(Env({"DATABASE_URL": primary}), "USER", "user")
    assert make_url(given).query["target_session_attrs"] == "primary"


def test_a_single_database_host_is_left_as_it_is():
    url = "postgresql://u@db/auth?sslmode=require"
    assert database_url(Env({"DATABASE_URL": url}), "AUTH", "auth") == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@db1,db2/a?target_session_attrs=standby", "may choose a standby"),
        ("postgresql://u@db1,db2/a?target_session_attrs=prefer-standby", "may choose a standby"),
        ("postgresql://u@db1,,db2/a", "an empty host"),
        ("postgresql://u@db1:5432,db2:x/a", "bad port 'x'"),
        ("postgresql://u@db1,db2/a?host=db3", "both in the authority and in the query"),
    ],
)
def test_a_bad_host_list_stops_with_one_line_naming_the_variable(url, message):
    with pytest.raises(ConfigError, match=f"USER_DATABASE_URL: .*{message}"):
        database_url(Env({"USER_DATABASE_URL": url}), "USER", "user")


def test_postgres_host_may_list_several_hosts():
    env = Env(
        {
            "USER_POSTGRES_HOST": "db1, db2:5433,[2001:db8::1]",
            "USER_POSTGRES_PORT": "6432",
            "USER_POSTGRES_PASSWORD": "s,cret",
        }
    )
    url = make_url(database_url(env, "USER", "user"))
    assert url.query["host"] == "db1,db2,2001:db8::1"
    assert url.query["port"] == "6432,5433,6432"
    assert url.query["target_session_attrs"] == "read-write"
    assert (url.password, url.database) == ("s,cret", "user")
    with pytest.raises(ConfigError, match="USER_POSTGRES_HOST: an empty host"):
        database_url(Env({"USER_POSTGRES_HOST": "db1,"}), "USER", "user")


SENTINELS = {"REDIS_SENTINELS": "s1:26379, s2:26380,s1:26379", "REDIS_SENTINEL_MASTER": "auth-main"}


def test_without_redis_sentinels_redis_is_named_by_url():
    assert redis_sentinel(Env({"REDIS_URL": "redis://r:6379/0"})) is None


def test_redis_sentinels_name_the_sentinels_once_each_and_the_primary():
    sentinel = redis_sentinel(Env(SENTINELS))
    assert sentinel == RedisSentinel((("s1", 26379), ("s2", 26380)), "auth-main")
    assert sentinel.addresses == "s1:26379,s2:26380"
    assert sentinel.storage_uri() == "redis+sentinel://s1:26379,s2:26380/auth-main"


def test_the_data_nodes_take_the_redis_password_and_database_the_sentinels_their_own():
    env = Env(
        {
            **SENTINELS,
            "AUTH_REDIS_PASSWORD": "node pass/word",
            "AUTH_REDIS_DB": "2",
            "REDIS_SENTINEL_PASSWORD": "sentinel-pass",
            # Not read: the sentinels say where the primary is.
            "REDIS_URL": "redis://elsewhere:6379/0",
            "AUTH_REDIS_HOST": "elsewhere",
        }
    )
    sentinel = redis_sentinel(env)
    assert sentinel is not None
    assert (sentinel.password, sentinel.db, sentinel.sentinel_password) == (
        "node pass/word",
        2,
        "sentinel-pass",
    )
    # Neither password is in the URI the rate limiter is given, nor in a logged repr.
    assert "pass" not in sentinel.storage_uri()
    assert "pass" not in repr(sentinel)


def test_an_ipv6_sentinel_is_written_in_brackets():
    sentinel = redis_sentinel(Env({**SENTINELS, "REDIS_SENTINELS": "[::1]:26379,[fd00::7]:1"}))
    assert sentinel is not None
    assert sentinel.sentinels == (("::1", 26379), ("fd00::7", 1))
    assert sentinel.storage_uri() == "redis+sentinel://[::1]:26379,[fd00::7]:1/auth-main"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINEL_MASTER must name the primary"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS"),
        ({"REDIS_SENTINEL_PASSWORD": "p"}, "REDIS_SENTINEL_PASSWORD is set but REDIS_SENTINELS"),
        ({**SENTINELS, "REDIS_SENTINELS": "s1"}, "REDIS_SENTINELS entry 's1' is not host:port"),
        ({**SENTINELS, "REDIS_SENTINELS": "s1:0"}, "REDIS_SENTINELS entry 's1:0' is not"),
        ({**SENTINELS, "REDIS_SENTINELS": "s1:65536"}, "REDIS_SENTINELS entry 's1:65536'"),
        ({**SENTINELS, "REDIS_SENTINELS": "redis://s1:26379"}, "REDIS_SENTINELS entry"),
        ({**SENTINELS, "REDIS_SENTINELS": "s1:26379,::1:26379"}, "entry '::1:26379'"),
        ({**SENTINELS, "REDIS_SENTINEL_MASTER": "a/b"}, "REDIS_SENTINEL_MASTER must be 1-128"),
        ({**SENTINELS, "REDIS_SENTINEL_MASTER": "a b"}, "REDIS_SENTINEL_MASTER must be 1-128"),
        ({**SENTINELS, "AUTH_REDIS_DB": "-1"}, "AUTH_REDIS_DB must be at least 0"),
    ],
)
def test_a_bad_sentinel_setting_names_its_variable(environ, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        redis_sentinel(Env(environ))
