"""Settings every worker process reads from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import Env, rabbitmq_url


@dataclass(frozen=True)
class BrokerSettings:
    """How a worker talks to RabbitMQ."""

    url: str
    queue_type: str = "quorum"
    max_tries: int = 5
    prefetch: int = 100
    heartbeat: int = 30

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
        )
