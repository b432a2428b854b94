"""``python -m workers.auth_worker``: apply the user service's events to the auth service.

Consumes ``auth_app.auth_events`` with the handlers of :mod:`auth_app.sync`.
"""

from __future__ import annotations

import sys

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from auth_app.config import AuthSettings, load_settings
from auth_app.models import ProcessedMessage
from auth_app.revocation import RevocationStore, connect_redis
from auth_app.sync import handlers
from common.config import Env, exit_on_config_error
from common.db import make_engine
from common.events import AUTH_QUEUE
from common.logging import configure_logging_from_env
from workers.consumer import Consumer
from workers.settings import BrokerSettings


def revocation_store(settings: AuthSettings) -> RevocationStore:
    """The same Redis revocation store the auth web app uses."""
    return RevocationStore.for_settings(connect_redis(settings, health_check_interval=30), settings)


def build_consumer(
    engine: Engine, settings: BrokerSettings, revocation: RevocationStore
) -> Consumer:
    """The auth worker's consumer over the auth database ``engine``."""
    return Consumer(
        name="auth_worker",
        queue=AUTH_QUEUE,
        handlers=handlers(revocation),
        session_factory=sessionmaker(engine, expire_on_commit=False),
        processed_model=ProcessedMessage,
        settings=settings,
    )


@exit_on_config_error
def main() -> int:
    """Entry point: consume until SIGTERM."""
    env = Env()
    configure_logging_from_env(env)
    settings = load_settings(environ=env.environ)
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=2)
    consumer = build_consumer(engine, BrokerSettings.from_env(env), revocation_store(settings))
    return consumer.run()


if __name__ == "__main__":
    sys.exit(main())
