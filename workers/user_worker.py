"""``python -m workers.user_worker``: apply the auth service's events to the user service.

Consumes ``user_app.user_events`` with the handlers of :mod:`user_app.sync`.
"""

from __future__ import annotations

import sys

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from common.config import Env, exit_on_config_error
from common.db import make_engine
from common.events import USER_QUEUE
from common.logging import configure_logging_from_env
from user_app.config import user_database_url
from user_app.models import ProcessedMessage
from user_app.sync import HANDLERS
from workers.consumer import Consumer
from workers.settings import BrokerSettings


def build_consumer(engine: Engine, settings: BrokerSettings) -> Consumer:
    """The user worker's consumer over the user database ``engine``."""
    return Consumer(
        name="user_worker",
        queue=USER_QUEUE,
        handlers=HANDLERS,
        session_factory=sessionmaker(engine, expire_on_commit=False),
        processed_model=ProcessedMessage,
        settings=settings,
    )


@exit_on_config_error
def main() -> int:
    """Entry point: consume until SIGTERM."""
    env = Env()
    configure_logging_from_env(env)
    engine = make_engine(user_database_url(env.environ), pool_size=2, max_overflow=2)
    return build_consumer(engine, BrokerSettings.from_env(env)).run()


if __name__ == "__main__":
    sys.exit(main())
