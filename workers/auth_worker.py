"""``python -m workers.auth_worker``: apply the user service's events to the auth service.

Consumes ``auth_app.auth_events`` (the queue of ``user.created``, ``user.updated``
and ``user.deleted`` in the catalogue) with the handlers of :mod:`auth_app.sync`.
"""

from __future__ import annotations

import sys

from sqlalchemy.engine import Engine

from auth_app.config import AuthSettings, load_settings
from auth_app.models import ProcessedMessage
from auth_app.revocation import RevocationStore
from auth_app.sync import handlers
from common.config import exit_on_config_error
from workers.consumer import Consumer
from workers.settings import BrokerSettings, start_worker


def revocation_store(settings: AuthSettings) -> RevocationStore:
    """The same revocation store the auth web app uses (this worker only revokes)."""
    return RevocationStore.connect(settings, health_check_interval=30)


def build_consumer(
    engine: Engine, broker: BrokerSettings, revocation: RevocationStore, settings: AuthSettings
) -> Consumer:
    """The auth worker's consumer over the auth database ``engine``."""
    return Consumer(
        "auth_worker",
        handlers(revocation, settings.roles),
        engine,
        ProcessedMessage,
        broker,
        leeway=settings.jwt_leeway_seconds,
        sender=broker.user_broker_user,
    )


@exit_on_config_error
def main() -> int:
    """Entry point: consume until SIGTERM."""
    broker, settings, engine = start_worker(load_settings)
    return build_consumer(engine, broker, revocation_store(settings), settings).run()


if __name__ == "__main__":
    sys.exit(main())
