"""``python -m workers.user_worker``: apply ``user.sync`` messages to the user service.

Consumes ``user_app.user_events``. ``created`` creates or merges the profile
and answers with ``user.created`` through the user service's outbox, in the
same transaction; ``deleted`` removes the profile and leaves a tombstone;
``sessions_revoked`` stores the time before which the user's tokens are dead.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.config import Env, exit_on_config_error
from common.db import make_engine
from common.events import AUTH_EVENTS, Envelope, InvalidMessage, emit
from common.logging import configure_logging_from_env
from user_app import profiles
from user_app.config import user_database_url
from user_app.models import OutboxEvent, ProcessedMessage
from workers.broker import USER_QUEUE
from workers.consumer import Consumer
from workers.settings import BrokerSettings

SOURCE = "user_app"


def _answer_created(session: Session, envelope: Envelope, profile) -> None:
    # user.created, in the same transaction: the auth service marks the account provisioned.
    if profile is not None:
        emit(
            session,
            OutboxEvent,
            exchange=AUTH_EVENTS,
            event_type="user.created",
            source=SOURCE,
            data={"user_id": profile.id, "profile_created_at": profile.created_at.isoformat()},
            correlation_id=envelope.id,
        )


def handle_user_sync(envelope: Envelope, session: Session) -> None:
    """Apply one ``user.sync`` message in the caller's transaction."""
    data = envelope.data
    action = data.get("action")
    occurred_at = datetime.fromisoformat(envelope.occurred_at)
    try:
        if action == "created":
            profile = profiles.apply_user_created(session, data, occurred_at)
            _answer_created(session, envelope, profile)
        elif action == "deleted":
            profiles.apply_user_deleted(session, data.get("user_id"), occurred_at)
        elif action == "sessions_revoked":
            profiles.apply_sessions_revoked(
                session, data.get("user_id"), data.get("revoked_before")
            )
        else:
            raise InvalidMessage(f"unknown user.sync action {action!r}")
    except profiles.InvalidEventData as error:
        raise InvalidMessage(str(error)) from None


def handle_user_sync_batch(envelopes: list[Envelope], session: Session) -> None:
    """Apply ``user.sync`` messages in the caller's transaction, as one by one would.

    The ``created`` messages of users that come only once in the batch, most of
    a backlog, go through ``apply_users_created`` together; every other message
    is applied by ``handle_user_sync``. Messages of different users touch
    different rows, so only each user's own order matters, and it is kept.
    """
    counts = Counter(_user_of(envelope) for envelope in envelopes)
    together = []
    for envelope in envelopes:
        if envelope.data.get("action") == "created" and counts[_user_of(envelope)] == 1:
            together.append(envelope)
        else:
            handle_user_sync(envelope, session)
    if not together:
        return
    try:
        created = profiles.apply_users_created(
            session,
            [(e.data, datetime.fromisoformat(e.occurred_at)) for e in together],
        )
    except profiles.InvalidEventData as error:
        raise InvalidMessage(str(error)) from None
    for envelope, profile in zip(together, created, strict=True):
        _answer_created(session, envelope, profile)


def _user_of(envelope: Envelope) -> str:
    user_id = envelope.data.get("user_id")
    return profiles.normalise_user_id(user_id) or repr(user_id)


def build_consumer(engine: Engine, settings: BrokerSettings) -> Consumer:
    """The user worker's consumer over the user database ``engine``."""
    return Consumer(
        name="user_worker",
        queue=USER_QUEUE,
        handlers={"user.sync": handle_user_sync},
        batch_handlers={"user.sync": handle_user_sync_batch},
        sessions=sessionmaker(engine, expire_on_commit=False),
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
