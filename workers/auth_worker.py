"""``python -m workers.auth_worker``: apply the user service's events to the auth service.

Consumes ``auth_app.auth_events``: ``user.created`` marks the account as
provisioned, ``user.updated`` applies an administrator's ``is_active`` and
``roles`` changes (deactivation revokes every session and token, and login
then answers 403), ``user.deleted`` removes the account and revokes
everything.
"""

from __future__ import annotations

import functools
import sys
import uuid
from datetime import datetime

import redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_app import accounts
from auth_app.config import load_config
from auth_app.models import ProcessedMessage
from auth_app.revocation import RevocationStore
from common.config import Env, exit_on_config_error
from common.db import make_engine
from common.events import Envelope, InvalidMessage
from common.logging import configure_logging_from_env
from workers.broker import AUTH_QUEUE
from workers.consumer import Consumer
from workers.settings import BrokerSettings


def _user_id(envelope: Envelope) -> str:
    value = envelope.data.get("user_id")
    if isinstance(value, str) and len(value) <= 36:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidMessage("user_id must be a UUID string")


def handle_user_created(envelope: Envelope, session: Session) -> None:
    """``user.created``: the user service holds a profile for this account."""
    user_id = _user_id(envelope)
    accounts.mark_provisioned(session, user_id, datetime.fromisoformat(envelope.occurred_at))


def handle_users_created(envelopes: list[Envelope], session: Session) -> None:
    """``user.created`` for a batch: every account marked in one statement."""
    times: dict[str, datetime] = {}
    for envelope in envelopes:
        # The first answer for a user wins, as it would one by one.
        times.setdefault(_user_id(envelope), datetime.fromisoformat(envelope.occurred_at))
    accounts.mark_many_provisioned(session, times)


def handle_user_updated(envelope: Envelope, session: Session, revocation: RevocationStore) -> None:
    """``user.updated``: an administrator changed ``is_active`` or ``roles``."""
    user_id = _user_id(envelope)
    changes = envelope.data.get("changes")
    if not isinstance(changes, dict) or not changes or set(changes) - {"is_active", "roles"}:
        raise InvalidMessage("changes must be an object of is_active and/or roles")
    try:
        accounts.apply_admin_changes(
            session, revocation, user_id, changes, datetime.fromisoformat(envelope.occurred_at)
        )
    except ValueError as error:
        raise InvalidMessage(str(error)) from None


def handle_user_deleted(envelope: Envelope, session: Session, revocation: RevocationStore) -> None:
    """``user.deleted``: an administrator deleted the user; the account goes too."""
    accounts.delete_account_from_user_service(session, revocation, _user_id(envelope))


def handlers(revocation: RevocationStore) -> dict:
    """The auth worker's handlers by message type, bound to a revocation store."""
    return {
        "user.created": handle_user_created,
        "user.updated": functools.partial(handle_user_updated, revocation=revocation),
        "user.deleted": functools.partial(handle_user_deleted, revocation=revocation),
    }


def revocation_store(config: dict) -> RevocationStore:
    """The same Redis revocation store the auth web app uses."""
    client = redis.Redis.from_url(
        config["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
    )
    return RevocationStore(
        client,
        config["REDIS_KEY_PREFIX"],
        access_ttl=config["ACCESS_TOKEN_EXPIRE_MINUTES"] * 60,
        leeway=config["JWT_LEEWAY_SECONDS"],
    )


def build_consumer(
    engine: Engine, settings: BrokerSettings, revocation: RevocationStore
) -> Consumer:
    """The auth worker's consumer over the auth database ``engine``."""
    return Consumer(
        name="auth_worker",
        queue=AUTH_QUEUE,
        handlers=handlers(revocation),
        batch_handlers={"user.created": handle_users_created},
        sessions=sessionmaker(engine, expire_on_commit=False),
        processed_model=ProcessedMessage,
        settings=settings,
    )


@exit_on_config_error
def main() -> int:
    """Entry point: consume until SIGTERM."""
    env = Env()
    configure_logging_from_env(env)
    config = load_config(environ=env.environ)
    engine = make_engine(config["DATABASE_URL"], pool_size=2, max_overflow=2)
    consumer = build_consumer(engine, BrokerSettings.from_env(env), revocation_store(config))
    return consumer.run()


if __name__ == "__main__":
    sys.exit(main())
