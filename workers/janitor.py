"""``python -m workers.janitor auth|user``: remove what a service no longer needs, on a schedule.

Every ``JANITOR_INTERVAL_SECONDS`` (an hour) it deletes, in batches of
``JANITOR_BATCH_SIZE`` rows, each batch its own short transaction
(:func:`common.db.delete_in_batches`), so the tables that logins, refreshes and
consumers write to are never locked for long:

- auth: refresh tokens past their expiry; login sessions whose tokens can no
  longer be alive (past their end, ended, or idle past a refresh token's life),
  which takes their refresh tokens along; durable revocation entries past the
  lifetime of the token they concern; expired mailed tokens and ``mfa_token``\\ s;
  mails sent or given up more than a day ago; security events older than
  ``SECURITY_EVENT_RETENTION_DAYS``;
- both: outbox rows published more than a day ago, and processed message ids
  older than ``PROCESSED_MESSAGE_RETENTION_DAYS`` (7: far longer than any
  redelivery, which happens within minutes);
- user: revoked sessions whose tokens have long expired.

Nothing is removed while it still matters: each cut-off leaves the clock
leeway (and, for anything a token check may read, an access token's life) on
top. Several janitors may run at once: on PostgreSQL each batch skips the rows
another holds. Each run logs and counts what it removed (``janitor_*`` metrics
on ``METRICS_PORT``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import or_
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from auth_app import models as auth
from auth_app.config import AuthSettings
from auth_app.config import load_settings as load_auth_settings
from common.config import Env, WebSettings, exit_on_config_error
from common.db import delete_in_batches, make_engine, utcnow
from common.logging import configure_logging_from_env
from common.metrics import janitor_metrics, start_metrics_server
from user_app import models as users
from user_app.config import load_settings as load_user_settings
from user_app.sync import FORGET_AFTER_SECONDS
from workers.broker import Stopper

log = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)
#: Published outbox rows and finished mails are kept this long, for whoever looks.
KEEP_DONE = timedelta(days=1)


@dataclass(frozen=True)
class Sweep:
    """One kind of row to remove: its table's key, and what makes a row removable now."""

    name: str
    key: Any
    condition: Callable[[], list[Any]]
    order_by: Any = None


def outbox_and_processed(outbox: Any, processed: Any, retention: timedelta) -> list[Sweep]:
    """The sweeps every service has: its published outbox rows and processed message ids."""
    return [
        Sweep(
            "outbox",
            outbox.seq,
            lambda: [outbox.published_at < utcnow() - KEEP_DONE],
            outbox.published_at,
        ),
        Sweep(
            "processed_messages",
            processed.message_id,
            lambda: [processed.processed_at < utcnow() - retention],
            processed.processed_at,
        ),
    ]


def auth_sweeps(settings: AuthSettings, retention: timedelta) -> list[Sweep]:
    """What the auth service's janitor removes."""
    # A token check may read a session or a revocation entry until every
    # access token it concerns has expired: an access token's life, plus leeway.
    token_life = timedelta(seconds=settings.access_token_ttl + settings.jwt_leeway_seconds)
    leeway = timedelta(seconds=settings.jwt_leeway_seconds)
    sessions = auth.LoginSession
    events_kept = timedelta(days=settings.security_event_retention_days)
    return [
        Sweep(
            "refresh_tokens",
            auth.RefreshToken.token_hash,
            lambda: [auth.RefreshToken.expires_at < utcnow() - leeway],
            auth.RefreshToken.expires_at,
        ),
        Sweep(
            "login_sessions",
            sessions.id,
            lambda: [
                or_(
                    sessions.expires_at < utcnow() - token_life,
                    sessions.revoked_at < utcnow() - token_life,
                    sessions.last_used_at < utcnow() - settings.refresh_token_ttl - token_life,
                )
            ],
        ),
        Sweep(
            "revoked_tokens",
            auth.RevokedToken.jti,
            lambda: [auth.RevokedToken.expires_at < utcnow() - leeway],
            auth.RevokedToken.expires_at,
        ),
        Sweep(
            "account_tokens",
            auth.AccountToken.token_hash,
            lambda: [auth.AccountToken.expires_at < utcnow() - leeway],
        ),
        Sweep(
            "mfa_challenges",
            auth.MfaChallenge.token_hash,
            lambda: [auth.MfaChallenge.expires_at < utcnow() - leeway],
        ),
        Sweep(
            "mails",
            auth.Mail.id,
            lambda: [
                or_(
                    auth.Mail.sent_at < utcnow() - KEEP_DONE,
                    auth.Mail.failed_at < utcnow() - KEEP_DONE,
                )
            ],
        ),
        Sweep(
            "security_events",
            auth.SecurityEvent.id,
            lambda: [auth.SecurityEvent.at < utcnow() - events_kept],
            auth.SecurityEvent.at,
        ),
        *outbox_and_processed(auth.OutboxEvent, auth.ProcessedMessage, retention),
    ]


def user_sweeps(settings: WebSettings, retention: timedelta) -> list[Sweep]:
    """What the user service's janitor removes (``settings``: nothing it needs yet)."""
    # A revoked session is refused until its tokens expire (epoch seconds), then
    # forgotten as long after that as the user worker waits (user_app.sync).
    return [
        Sweep(
            "revoked_sessions",
            users.RevokedSession.session_id,
            lambda: [users.RevokedSession.expires_at < time.time() - FORGET_AFTER_SECONDS],
            users.RevokedSession.expires_at,
        ),
        *outbox_and_processed(users.OutboxEvent, users.ProcessedMessage, retention),
    ]


@dataclass
class Janitor:
    """Run every sweep of one service's database, every ``interval`` seconds."""

    name: str
    engine: Engine
    sweeps: list[Sweep]
    interval: float = 3600.0
    batch_size: int = 1000
    stopper: Stopper = field(default_factory=Stopper)

    def run_once(self) -> dict[str, int]:
        """Every sweep once; rows removed per table."""
        metrics = janitor_metrics()
        removed = {}
        for sweep in self.sweeps:
            if self.stopper.stopping:
                break
            count = delete_in_batches(
                self.engine,
                sweep.key,
                *sweep.condition(),
                order_by=sweep.order_by,
                batch_size=self.batch_size,
                stop=lambda: self.stopper.stopping,
            )
            removed[sweep.name] = count
            metrics.deleted.labels(sweep.name).inc(count)
        return removed

    def run(self, *, install_signals: bool = True) -> int:
        """Sweep, wait, sweep again, until SIGTERM/SIGINT; returns 0."""
        if install_signals:
            self.stopper.install()
        metrics = janitor_metrics()
        log.info("%s sweeping every %.0fs", self.name, self.interval)
        while not self.stopper.stopping:
            started = time.monotonic()
            try:
                removed = self.run_once()
            except DB_ERRORS as error:
                metrics.runs.labels("failed").inc()
                log.warning(
                    "%s: database unavailable (%s); next run later", self.name, type(error).__name__
                )
            else:
                metrics.runs.labels("ok").inc()
                metrics.last_success.set_to_current_time()
                summary = " ".join(f"{table}={count}" for table, count in removed.items())
                log.info("%s removed %s in %.1fs", self.name, summary, time.monotonic() - started)
            self.stopper.sleep(self.interval)
        log.info("%s stopped", self.name)
        return 0


#: Each service's sweeps and settings, by the name ``python -m workers.janitor`` takes.
SERVICES: dict[str, tuple[Callable[..., list[Sweep]], Callable[..., WebSettings]]] = {
    "auth": (auth_sweeps, load_auth_settings),
    "user": (user_sweeps, load_user_settings),
}


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m workers.janitor auth|user``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in SERVICES:
        print("usage: python -m workers.janitor auth|user", file=sys.stderr)
        return 2
    env = Env()
    configure_logging_from_env(env)
    sweeps, load_settings = SERVICES[argv[0]]
    settings = load_settings(environ=env.environ)
    retention = timedelta(days=env.int("PROCESSED_MESSAGE_RETENTION_DAYS", 7, minimum=1))
    interval = env.float("JANITOR_INTERVAL_SECONDS", 3600.0, minimum=1.0)
    batch_size = env.int("JANITOR_BATCH_SIZE", 1000, minimum=1, maximum=100_000)
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    start_metrics_server(env)
    name = f"{argv[0]}_janitor"
    return Janitor(name, engine, sweeps(settings, retention), interval, batch_size).run()


if __name__ == "__main__":
    sys.exit(main())
