"""``python -m workers.user_worker``: apply the auth service's events to the user service.

Consumes ``user_app.user_events`` (the queue of ``user.sync`` in the catalogue) with
the handlers of :mod:`user_app.sync`.
"""

from __future__ import annotations

import sys

from sqlalchemy.engine import Engine

from common.config import exit_on_config_error
from user_app.config import UserSettings, load_settings
from user_app.models import ProcessedMessage
from user_app.sync import HANDLERS, future_times
from workers.consumer import Consumer
from workers.settings import BrokerSettings, start_worker


def build_consumer(engine: Engine, broker: BrokerSettings, settings: UserSettings) -> Consumer:
    """The user worker's consumer over the user database ``engine``."""
    return Consumer(
        "user_worker",
        HANDLERS,
        engine,
        ProcessedMessage,
        broker,
        leeway=settings.jwt_leeway_seconds,
        sender=broker.auth_broker_user,
        check=future_times(settings),
    )


@exit_on_config_error
def main() -> int:
    """Entry point: consume until SIGTERM."""
    broker, settings, engine = start_worker(load_settings)
    return build_consumer(engine, broker, settings).run()


if __name__ == "__main__":
    sys.exit(main())
