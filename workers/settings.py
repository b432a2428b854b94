"""Settings every worker process reads from the environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from common.config import Env, S, rabbitmq_url
from common.db import IDLE_PING_SECONDS, make_engine
from common.logging import configure_logging_from_env
from common.metrics import start_metrics_server


@dataclass(frozen=True)
class BrokerSettings:
    """How a worker talks to RabbitMQ."""

    url: str
    queue_type: str = "quorum"
    max_tries: int = 5
    prefetch: int = 100
    heartbeat: int = 30
    # The broker users the services publish as; when set, a consumer refuses any other sender.
    auth_broker_user: str | None = None
    user_broker_user: str | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> BrokerSettings:
        """Read RABBITMQ_* and the worker knobs; a bad value raises ConfigError."""
        env = env or Env()
        return cls(
            url=rabbitmq_url(env),
            queue_type=env.choice("RABBITMQ_QUEUE_TYPE", "quorum", ("quorum", "classic")),
            max_tries=env.int("WORKER_MAX_TRIES", 5, minimum=1, maximum=100),
            prefetch=env.int("WORKER_PREFETCH", 100, minimum=1, maximum=1000),
            heartbeat=env.int("RABBITMQ_HEARTBEAT", 30, minimum=0, maximum=600),
            auth_broker_user=env.str("AUTH_BROKER_USER"),
            user_broker_user=env.str("USER_BROKER_USER"),
        )


def start_worker(
    load_settings: Callable[..., S], *, max_overflow: int = 2
) -> tuple[BrokerSettings, S, Engine]:
    """What every worker does first: logging, its settings and engine, its metrics server.

    The engine is a small pool on the service's database. Metrics are served
    on ``METRICS_PORT`` when it is set. A bad value raises ConfigError. A worker
    checks out a connection per batch, so, as a web app's, its pooled connections
    are pinged only when they may be dead, not on each checkout (a round trip per
    batch otherwise); a worker retries a batch that a dead connection failed.
    """
    env = Env()
    configure_logging_from_env(env)
    settings = load_settings(environ=env.environ)
    broker = BrokerSettings.from_env(env)
    engine = make_engine(
        settings.database_url,
        pool_size=2,
        max_overflow=max_overflow,
        ping_idle_after=IDLE_PING_SECONDS,
    )
    start_metrics_server(env)
    return broker, settings, engine
