"""``python -m workers.mailer``: send the mails the auth service wrote to its ``mails`` table.

Requests never talk to SMTP: they write each mail in their own transaction
(:mod:`auth_app.mail`). This process hands the committed ones to ``SMTP_URL``
with :mod:`smtplib`, one mail per database transaction:

1. take the oldest due mail, locked (``FOR UPDATE SKIP LOCKED``, so several
   mailers share the work and never hold the same mail);
2. send it, the row still locked;
3. mark it sent and erase its bodies (the link in them), then commit.

A mailer that dies between 2 and 3 leaves the mail pending, and it is sent
again: at least once, never lost. While SMTP is unreachable (or refuses the
connection, the login or TLS) nothing is marked and the mailer retries with
capped backoff; a mail the server refuses for now (4xx) is retried later on
its own, up to ``MAILER_MAX_ATTEMPTS``; a permanent refusal (5xx) marks that
mail failed and the mailer goes on with the next. On PostgreSQL a ``LISTEN``
wakes it as soon as a request commits a mail; on SQLite (one mailer only) it
polls. Logs name mails by id and kind: never an address's mail, a link or a token.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
import select
import smtplib
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from enum import Enum
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import Select, and_, func
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from auth_app.config import database_url_from_env
from auth_app.mail import MAIL_CHANNEL
from auth_app.models import Mail
from common.config import ConfigError, Env, exit_on_config_error
from common.db import backlog_reader, make_engine, utcnow
from common.logging import configure_logging_from_env, log_context
from common.metrics import mailer_metrics, start_metrics_server
from workers.broker import Stopper
from workers.listener import Listener

log = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)
#: The development sink ``make run`` starts (aiosmtpd's debugging server).
DEVELOPMENT_SMTP_URL = "smtp://127.0.0.1:1025"
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
#: Backoff while SMTP or the database is unreachable: doubles from the first to the cap.
OUTAGE_BACKOFF = (0.5, 30.0)
#: A mail refused for now (4xx) waits this long, doubling per attempt up to the cap.
RETRY_BACKOFF = (timedelta(seconds=30), timedelta(hours=1))
IDLE_POLL_SECONDS = 0.5
LISTEN_TIMEOUT_SECONDS = 5.0


class SmtpUnavailable(Exception):
    """The SMTP server cannot be reached, or refused the connection, TLS or the login."""


class Security(Enum):
    """How the connection to the SMTP server is protected."""

    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"  # smtps://: TLS from the first byte


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send: parsed from ``SMTP_URL``."""

    host: str
    port: int
    security: Security = Security.NONE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        """``smtp://[user:password@]host[:port][?starttls=true]`` or ``smtps://...``.

        A password is never sent in the clear to another host: it needs
        ``smtps://`` or ``?starttls=true``, unless the server is on loopback.
        """
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ConfigError("SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
        query = parse_qs(parts.query)
        unknown = set(query) - {"starttls", "timeout"}
        if unknown:
            raise ConfigError(f"SMTP_URL: unknown option {sorted(unknown)[0]!r}")
        starttls = query.get("starttls", ["false"])[-1].lower()
        if starttls not in ("true", "false"):
            raise ConfigError("SMTP_URL: starttls must be true or false")
        security = Security.TLS if parts.scheme == "smtps" else Security.NONE
        if starttls == "true":
            if security is Security.TLS:
                raise ConfigError("SMTP_URL: starttls is for smtp://, smtps:// is TLS already")
            security = Security.STARTTLS
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
            timeout = float(query.get("timeout", ["10"])[-1])
        except ValueError:
            raise ConfigError("SMTP_URL: the port and timeout must be numbers") from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if password and security is Security.NONE and not _loopback(parts.hostname):
            raise ConfigError(
                "SMTP_URL would send its password without TLS: use smtps:// or ?starttls=true"
            )
        return cls(parts.hostname, port, security, username, password, timeout)

    def describe(self) -> str:
        """Where mails go, for the log: never the credentials."""
        return f"{self.host}:{self.port} ({self.security.value})"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MailerSettings:
    """Everything the mailer is configured with."""

    database_url: str
    smtp: SmtpSettings
    max_attempts: int = 10

    @classmethod
    def from_env(cls, env: Env | None = None) -> MailerSettings:
        """``AUTH_DATABASE_URL`` (and its fallbacks), ``SMTP_URL``, ``MAILER_MAX_ATTEMPTS``.

        ``SMTP_URL`` defaults to the development sink only under ``APP_ENV=development``.
        """
        env = env or Env()
        url = env.str("SMTP_URL")
        if url is None:
            if env.str("APP_ENV", "production").lower() != "development":
                raise ConfigError("SMTP_URL must be set (smtp://host:port or smtps://host:port)")
            url = DEVELOPMENT_SMTP_URL
        return cls(
            database_url=database_url_from_env(env.environ),
            smtp=SmtpSettings.from_url(url),
            max_attempts=env.int("MAILER_MAX_ATTEMPTS", 10, minimum=1, maximum=100),
        )


def _answer(error: BaseException) -> str:
    """An SMTP error as ``code text`` (the server's words, cut short), or its type."""
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return f"{error.smtp_code} {' '.join(str(text).split())}"[:200]
    return type(error).__name__


class SmtpConnection:
    """One SMTP session, opened when a mail needs it and reused for the mails that follow."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        settings = self.settings
        context = ssl.create_default_context()
        smtp: smtplib.SMTP | None = None
        try:
            if settings.security is Security.TLS:
                smtp = smtplib.SMTP_SSL(
                    settings.host, settings.port, timeout=settings.timeout, context=context
                )
            else:
                smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
            smtp.ehlo()
            if settings.security is Security.STARTTLS:
                smtp.starttls(context=context)
                smtp.ehlo()
            if settings.username:
                smtp.login(settings.username, settings.password or "")
        except (OSError, smtplib.SMTPException) as error:
            if smtp is not None:
                smtp.close()
            raise SmtpUnavailable(_answer(error)) from None
        return smtp

    def send(self, message: EmailMessage) -> None:
        """Hand ``message`` to the server, reconnecting once if it hung up meanwhile.

        Raises SmtpUnavailable when the server cannot take mail at all, and
        smtplib's refusals (a response with its code) for this mail alone.
        """
        for attempt in (1, 2):
            if self._smtp is None:
                self._smtp = self._open()
            try:
                self._smtp.send_message(message)
                return
            except smtplib.SMTPServerDisconnected as error:
                self.close()
                if attempt == 2:
                    raise SmtpUnavailable(_answer(error)) from None
            except smtplib.SMTPResponseException as error:
                if error.smtp_code != 421:  # 421: the service is closing the channel
                    raise
                self.close()
                raise SmtpUnavailable(_answer(error)) from None
            except smtplib.SMTPException:
                raise  # refused recipients, no SMTPUTF8: this mail's own trouble
            except OSError as error:  # the socket (smtplib's errors are OSErrors too)
                self.close()
                if attempt == 2:
                    raise SmtpUnavailable(_answer(error)) from None

    def close(self) -> None:
        """End the session (politely if the server is still there)."""
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                self._smtp.close()
            self._smtp = None


def build_message(mail: Mail) -> EmailMessage:
    """The RFC 5322 message of a queued mail: a text part and, if it has one, an HTML part.

    Its ``Message-ID`` is made from the mail's id, so a copy sent again after
    a crash is recognisably the same mail.
    """
    message = EmailMessage()
    message["From"] = mail.sender
    message["To"] = mail.recipient
    message["Subject"] = mail.subject
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(mail.sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = f"<{mail.id}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    text = mail.text_body or ""
    # Plain ASCII goes as it is, so a link stays whole in a raw view (the
    # development sink's console); anything else as quoted-printable.
    readable = text.isascii() and all(len(line) <= 998 for line in text.splitlines())
    message.set_content(text, cte="7bit" if readable else "quoted-printable")
    if mail.html_body:
        message.add_alternative(mail.html_body, subtype="html")
    return message


class Outcome(Enum):
    """What became of one mail."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


@dataclass
class Mailer:
    """Send due mails until stopped."""

    engine: Engine
    settings: MailerSettings
    stopper: Stopper = field(default_factory=Stopper)

    def __post_init__(self) -> None:
        self.postgres = self.engine.dialect.name == "postgresql"
        self.smtp = SmtpConnection(self.settings.smtp)
        self.listener = Listener(self.engine, MAIL_CHANNEL)
        self.metrics = mailer_metrics()

    def _due(self, now: datetime) -> Select[Mail]:
        pending = and_(Mail.sent_at.is_(None), Mail.failed_at.is_(None))
        query = (
            sql_select(Mail)
            .where(pending, Mail.next_attempt_at <= now)
            .order_by(Mail.next_attempt_at, Mail.id)
            .limit(1)
        )
        return query.with_for_update(skip_locked=True) if self.postgres else query

    def send_one(self) -> Outcome | None:
        """Send the oldest due mail, in its own transaction; None when none is due.

        Raises SmtpUnavailable (the mail stays as it was) and the database's errors.
        """
        with Session(self.engine) as session, session.begin():
            now = utcnow()
            mail = session.scalars(self._due(now)).first()
            if mail is None:
                return None
            # Its log lines carry the id of the request that wrote it.
            with log_context(request_id=mail.correlation_id or "-"):
                return self._send(mail, now)

    def _send(self, mail: Mail, now: datetime) -> Outcome:
        """Send ``mail`` and record what became of it; the caller's transaction commits."""
        try:
            self.smtp.send(build_message(mail))
        except (smtplib.SMTPException, ValueError) as error:
            # A refusal of this mail alone: smtplib's errors with a code, the
            # recipients refused, or an address the server cannot take (SMTPUTF8).
            return self._refused(mail, error, now)
        mail.attempts += 1
        mail.sent_at = now
        _erase(mail)
        self.metrics.sent.inc()
        log.info("mail sent mail_id=%s kind=%s", mail.id, mail.kind)
        return Outcome.SENT

    def _refused(self, mail: Mail, error: Exception, now: datetime) -> Outcome:
        codes = [_code(error)]
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _text in error.recipients.values()]
            error = smtplib.SMTPResponseException(*next(iter(error.recipients.values())))
        mail.attempts += 1
        mail.last_error = _answer(error)
        permanent = (
            any(code >= 500 for code in codes) or mail.attempts >= self.settings.max_attempts
        )
        if permanent:
            mail.failed_at = now
            _erase(mail)
            self.metrics.failed.inc()
            log.warning(
                "mail failed mail_id=%s kind=%s code=%s attempts=%d",
                mail.id,
                mail.kind,
                codes[0],
                mail.attempts,
            )
            return Outcome.FAILED
        first, cap = RETRY_BACKOFF
        mail.next_attempt_at = now + min(cap, first * 2 ** (mail.attempts - 1))
        self.metrics.retried.inc()
        log.info(
            "mail refused for now mail_id=%s kind=%s code=%s attempts=%d",
            mail.id,
            mail.kind,
            codes[0],
            mail.attempts,
        )
        return Outcome.RETRY

    def send_due(self) -> int:
        """Send every due mail, one after another; how many were sent."""
        sent = 0
        while not self.stopper.stopping:
            outcome = self.send_one()
            if outcome is None:
                break
            sent += outcome is Outcome.SENT
        return sent

    def next_due_in(self) -> float | None:
        """Seconds until the earliest pending mail is due (0 if one is), or None."""
        with Session(self.engine) as session:
            earliest = session.scalar(
                sql_select(func.min(Mail.next_attempt_at)).where(
                    Mail.sent_at.is_(None), Mail.failed_at.is_(None)
                )
            )
        if earliest is None:
            return None
        return max(0.0, (earliest - utcnow()).total_seconds())

    def wait(self) -> None:
        """Sleep until a mail may be due: a commit's NOTIFY, a retry's time, or a stop."""
        if self.listener.take():  # a commit notified meanwhile, or the LISTEN is new
            return
        fd = self.listener.fileno()
        due_in = self.next_due_in()
        timeout = LISTEN_TIMEOUT_SECONDS if fd is not None else IDLE_POLL_SECONDS
        if due_in is not None:
            timeout = min(timeout, due_in)
        if timeout <= 0:
            return
        watched = [self.stopper.wake_fd] + ([fd] if fd is not None else [])
        select.select(watched, [], [], timeout)
        self.listener.take()

    def run(self, *, install_signals: bool = True) -> int:
        """Send until SIGTERM/SIGINT; returns 0."""
        if install_signals:
            self.stopper.install()
        log.info("mailer sending to %s", self.settings.smtp.describe())
        first, cap = OUTAGE_BACKOFF
        delay = first
        try:
            while not self.stopper.stopping:
                try:
                    self.send_due()
                    self.smtp.close()  # idle until the next mail; servers drop idle sessions
                    delay = first
                    self.wait()
                except SmtpUnavailable as error:
                    self.metrics.retried.inc()
                    log.warning("SMTP unavailable (%s); retrying in %.1fs", error, delay)
                except DB_ERRORS as error:
                    log.warning("mail database unavailable (%s); retrying", type(error).__name__)
                    self.listener.drop()
                else:
                    continue
                self.smtp.close()
                self.stopper.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
                delay = min(cap, delay * 2)
        finally:
            self.smtp.close()
            self.listener.drop()
        log.info("mailer stopped")
        return 0


def watch_backlog(read: Callable[[], tuple[int, float]]) -> None:
    """Make ``mail_pending`` and ``mail_oldest_pending_age_seconds`` read ``read`` when scraped.

    Both come from one read per scrape; a read that fails (the database is
    down) reports NaN rather than failing the scrape.
    """
    metrics = mailer_metrics()
    latest: dict[str, tuple[float, tuple[float, float]]] = {}

    def value(index: int) -> float:
        cached = latest.get("read")
        if cached is None or time.monotonic() - cached[0] > 1.0:
            try:
                pending, age = read()
                cached = (time.monotonic(), (float(pending), age))
            except Exception as error:  # noqa: BLE001 - a scrape must not fail on it
                log.warning("mail backlog unreadable (%s)", type(error).__name__)
                return math.nan
            latest["read"] = cached
        return cached[1][index]

    metrics.pending.set_function(lambda: value(0))
    metrics.oldest_pending_age.set_function(lambda: value(1))


def _code(error: Exception) -> int:
    if isinstance(error, smtplib.SMTPResponseException):
        return int(error.smtp_code)
    # No code: an address the server cannot take (no SMTPUTF8), or a message
    # smtplib cannot send. Sending it again would fail the same way.
    return 554


def _erase(mail: Mail) -> None:
    """Forget the bodies, and with them the link: the mail is sent or given up."""
    mail.text_body = None
    mail.html_body = None


@exit_on_config_error
def main() -> int:
    """Entry point: send mails until SIGTERM."""
    env = Env()
    configure_logging_from_env(env)
    settings = MailerSettings.from_env(env)
    engine = make_engine(settings.database_url, pool_size=2, max_overflow=0)
    if start_metrics_server(env) is not None:
        metrics_engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        pending = (Mail.sent_at.is_(None), Mail.failed_at.is_(None))
        watch_backlog(backlog_reader(metrics_engine, Mail.created_at, *pending))
    return Mailer(engine, settings).run()


if __name__ == "__main__":
    sys.exit(main())
