"""The mailer against a real SMTP server (aiosmtpd) and the auth database on PostgreSQL.

Mails are written as requests write them (:func:`auth_app.mail.write` in a
transaction); the mailer runs in process for the protocol details and as
``python -m workers.mailer``, as the Procfile runs it, for outages, crashes
and several mailers at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth_app import mail
from auth_app.config import load_settings
from auth_app.models import Mail, User
from common.db import make_engine, utcnow
from common.logging import log_context
from tests.integration.system import migrate, wait_until
from tests.support.servers import fresh_postgres_database
from tests.support.smtp import SmtpServer, self_signed
from workers.mailer import (
    Mailer,
    MailerSettings,
    Outcome,
    SmtpSettings,
    SmtpUnavailable,
    build_message,
)

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = "https://app.example"


@pytest.fixture(scope="module")
def database_url():
    """The auth service's database, migrated, of this module's own."""
    with fresh_postgres_database("mailer") as url:
        migrate("auth", url)
        yield url


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(Mail.__table__.delete())
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def settings(database_url):
    return load_settings({"DATABASE_URL": database_url, "FRONTEND_URL": FRONTEND})


def queue(engine, settings, count: int = 1, recipient: str = "ada@example.com") -> list[str]:
    """Write ``count`` reset mails in one committed transaction, as a request does; their ids."""
    with Session(engine) as session, session.begin():
        return [
            mail.write(
                session,
                settings,
                mail.RESET_PASSWORD,
                recipient if count == 1 else recipient.replace("@", f"+{n}@"),
                None,
                username="ada",
                link=mail.link(settings, mail.RESET_PASSWORD, f"secret-token-{n}"),
                valid_for="30 minutes",
            ).id
            for n in range(count)
        ]


def row(engine, mail_id: str) -> Mail:
    with Session(engine) as session:
        found = session.get(Mail, mail_id)
        assert found is not None
        session.expunge(found)
        return found


def mailer_for(engine, smtp_url: str, **settings) -> Mailer:
    return Mailer(
        engine,
        MailerSettings(database_url="unused", smtp=SmtpSettings.from_url(smtp_url), **settings),
    )


class MailerProcess:
    """``python -m workers.mailer`` with its own log file."""

    def __init__(self, database_url: str, smtp_url: str, log: Path, **env: str) -> None:
        self.log = log
        environ = {
            **os.environ,
            "AUTH_DATABASE_URL": database_url,
            "SMTP_URL": smtp_url,
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "info",
            **env,
        }
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers.mailer"],
                env=environ,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=20)

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def processes():
    started: list[MailerProcess] = []
    yield started
    for process in started:
        process.stop(signal.SIGKILL)


def start(processes, *args, **kwargs) -> MailerProcess:
    process = MailerProcess(*args, **kwargs)
    processes.append(process)
    return process


def message_ids(server: SmtpServer) -> Counter:
    return Counter(received.message["Message-ID"] for received in server.received)


# -- in process: the protocol and the bookkeeping ------------------------------


def test_a_committed_mail_is_sent_once_then_its_link_is_erased(engine, settings):
    with SmtpServer() as server:
        (mail_id,) = queue(engine, settings)
        mailer = mailer_for(engine, server.url())
        assert mailer.send_due() == 1
        assert mailer.send_due() == 0

    (received,) = server.received
    assert received.rcpt_tos == ("ada@example.com",)
    assert received.message["From"] == settings.mail_from
    assert received.message["Subject"] == "Reset your password"
    assert received.message["Message-ID"] == f"<{mail_id}@localhost>"
    assert received.message["Auto-Submitted"] == "auto-generated"
    assert received.link == f"{FRONTEND}/reset-password?token=secret-token-0"
    assert received.html is not None and 'href="https://app.example/reset-password' in received.html
    stored = row(engine, mail_id)
    assert stored.sent_at is not None and stored.attempts == 1
    assert stored.text_body is None and stored.html_body is None


def test_a_rolled_back_request_sends_nothing(engine, settings):
    with Session(engine) as session, session.begin():
        mail.write(
            session,
            settings,
            mail.VERIFY_EMAIL,
            "rolled@example.com",
            None,
            username="x",
            email="rolled@example.com",
            link="https://app.example/verify-email?token=t",
            valid_for="1 day",
        )
        session.rollback()
    with SmtpServer() as server:
        assert mailer_for(engine, server.url()).send_due() == 0
    assert server.received == []


def test_a_permanent_refusal_marks_the_mail_failed_and_the_next_is_sent(engine, settings):
    with SmtpServer() as server:
        server.refuse("gone@example.com")
        (refused,) = queue(engine, settings, recipient="gone@example.com")
        (accepted,) = queue(engine, settings, recipient="here@example.com")
        mailer = mailer_for(engine, server.url())
        assert mailer.send_one() is Outcome.FAILED
        assert mailer.send_one() is Outcome.SENT
    failed = row(engine, refused)
    assert failed.failed_at is not None and failed.sent_at is None
    assert failed.last_error.startswith("550 5.1.1")
    assert failed.text_body is None  # given up: its link is gone too
    assert [m.rcpt_tos for m in server.received] == [("here@example.com",)]
    assert row(engine, accepted).sent_at is not None


def test_a_temporary_refusal_is_tried_again_later_with_backoff(engine, settings):
    with SmtpServer() as server:
        server.refuse("busy@example.com", "450 4.2.1 Mailbox busy, try later")
        (mail_id,) = queue(engine, settings, recipient="busy@example.com")
        mailer = mailer_for(engine, server.url(), max_attempts=3)
        before = utcnow()
        assert mailer.send_one() is Outcome.RETRY
        waiting = row(engine, mail_id)
        assert waiting.attempts == 1 and waiting.sent_at is None and waiting.failed_at is None
        assert (waiting.next_attempt_at - before).total_seconds() >= 29
        assert waiting.text_body is not None
        assert mailer.send_one() is None  # not due yet
        assert 25 < mailer.next_due_in() <= 31

        del server.handler.refuse["busy@example.com"]
        with engine.begin() as connection:
            connection.execute(Mail.__table__.update().values(next_attempt_at=utcnow()))
        assert mailer.send_one() is Outcome.SENT
    assert len(server.to("busy@example.com")) == 1


def test_a_mail_refused_for_now_too_often_is_given_up(engine, settings):
    with SmtpServer() as server:
        server.refuse("busy@example.com", "451 4.3.0 Try later")
        (mail_id,) = queue(engine, settings, recipient="busy@example.com")
        mailer = mailer_for(engine, server.url(), max_attempts=2)
        assert mailer.send_one() is Outcome.RETRY
        with engine.begin() as connection:
            connection.execute(Mail.__table__.update().values(next_attempt_at=utcnow()))
        assert mailer.send_one() is Outcome.FAILED
    assert row(engine, mail_id).last_error.startswith("451")


@pytest.mark.parametrize("tls", ["starttls", "smtps"])
def test_tls_and_login_as_the_url_says(engine, settings, tmp_path, monkeypatch, tls):
    certificate = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with SmtpServer(tls=tls, certificate=certificate, credentials=("mailer", "s3cret")) as server:
        queue(engine, settings)
        assert mailer_for(engine, server.url()).send_due() == 1
    assert server.logins == ["mailer"]
    assert len(server.received) == 1


def test_an_untrusted_certificate_keeps_the_mail_pending(engine, settings, tmp_path):
    certificate = self_signed(tmp_path)  # not in the mailer's trust store
    with SmtpServer(tls="starttls", certificate=certificate) as server:
        (mail_id,) = queue(engine, settings)
        with pytest.raises(SmtpUnavailable, match="SSLCertVerificationError"):
            mailer_for(engine, server.url()).send_due()
    assert server.received == []
    assert row(engine, mail_id).attempts == 0


def test_a_wrong_smtp_password_keeps_the_mail_pending(engine, settings, tmp_path, monkeypatch):
    certificate = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with SmtpServer(
        tls="smtps", certificate=certificate, credentials=("mailer", "right")
    ) as server:
        (mail_id,) = queue(engine, settings)
        wrong = server.url().replace(":right@", ":wrong@")
        with pytest.raises(SmtpUnavailable):
            mailer_for(engine, wrong).send_due()
    assert server.received == [] and row(engine, mail_id).sent_at is None


def test_a_server_without_starttls_is_not_sent_to_in_the_clear(engine, settings):
    with SmtpServer() as server:
        (mail_id,) = queue(engine, settings)
        with pytest.raises(SmtpUnavailable, match="SMTPNotSupportedError"):
            mailer_for(engine, server.url(starttls=True)).send_due()
    assert server.received == [] and row(engine, mail_id).attempts == 0


def test_a_non_ascii_mail_travels_as_quoted_printable_and_arrives_whole(engine, settings):
    with Session(engine) as session, session.begin():
        mail_id = mail.write(
            session,
            settings,
            mail.VERIFY_EMAIL,
            "zoe@example.com",
            None,
            username="zoë",
            email="zoe@example.com",
            link="https://app.example/verify-email?token=" + "x" * 80,
            valid_for="1 day",
        ).id
    with Session(engine) as session:
        message = build_message(session.get(Mail, mail_id))
    assert message.get_body(("plain",))["Content-Transfer-Encoding"] == "quoted-printable"
    with SmtpServer() as server:
        mailer_for(engine, server.url()).send_due()
    assert "Hello zoë," in server.received[0].text
    assert server.received[0].token == "x" * 80


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mail.example", "must be smtp://host"),
        ("smtp://mail.example?tls=yes", "unknown option 'tls'"),
        ("smtp://mail.example?starttls=maybe", "starttls must be true or false"),
        ("smtps://mail.example?starttls=true", "smtps:// is TLS already"),
        ("smtp://u:p@mail.example", "without TLS"),
        ("smtp://mail.example:notaport", "must be numbers"),
    ],
)
def test_a_bad_smtp_url_stops_the_mailer_with_one_line(url, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "workers.mailer"],
        env={**os.environ, "SMTP_URL": url, "AUTH_DATABASE_URL": f"sqlite:///{tmp_path}/a.db"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: SMTP_URL") and message in line
    assert "p@" not in result.stderr


def test_production_without_smtp_url_stops_the_mailer(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SMTP_URL"}
    env.update(APP_ENV="production", AUTH_DATABASE_URL=f"sqlite:///{tmp_path}/a.db")
    result = subprocess.run(
        [sys.executable, "-m", "workers.mailer"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "configuration error: SMTP_URL must be set (smtp://host:port or smtps://host:port)"
    )


def test_credentials_to_a_loopback_server_may_go_without_tls():
    settings = SmtpSettings.from_url("smtp://dev:pw%40x@127.0.0.1:1025")
    assert (settings.username, settings.password, settings.port) == ("dev", "pw@x", 1025)
    assert "pw" not in repr(settings) and "pw" not in settings.describe()


# -- as the Procfile runs it --------------------------------------------------------


def test_a_mail_committed_while_smtp_is_down_arrives_once_after_it_comes_back(
    engine, settings, database_url, tmp_path, processes
):
    server = SmtpServer()  # not started: the port refuses connections
    log = tmp_path / "mailer.log"
    mailer = start(processes, database_url, server.url(), log)
    started = time.monotonic()
    (mail_id,) = queue(engine, settings)
    assert wait_until(lambda: log.read_text().count("SMTP unavailable") >= 3, timeout=30)
    server.start()
    back_at = time.monotonic() - started
    try:
        (received,) = server.wait_for(1, timeout=60)
        arrived_after = received.at - started
        time.sleep(1.5)  # room for a duplicate to show up
        assert len(server.received) == 1
    finally:
        server.stop()
    assert row(engine, mail_id).sent_at is not None
    assert mailer.stop() == 0
    retries = log.read_text().count("SMTP unavailable")
    print(
        f"\nSMTP outage: mail committed at 0.0s, SMTP down until {back_at:.1f}s "
        f"({retries} failed connections), mail arrived at {arrived_after:.1f}s, 1 copy"
    )
    assert "secret-token" not in log.read_text()


def test_two_mailers_share_200_mails_and_none_is_sent_twice(
    engine, settings, database_url, tmp_path, processes
):
    with SmtpServer() as server:
        for n in range(2):
            start(processes, database_url, server.url(), tmp_path / f"mailer{n}.log")
        queue(engine, settings, count=200)
        server.wait_for(200, timeout=120)
        time.sleep(1.0)
        ids = message_ids(server)
    assert len(ids) == 200 and set(ids.values()) == {1}
    senders = [p.text().count("mail sent") for p in processes]
    print(f"\ntwo mailers, 200 mails: {senders[0]} + {senders[1]} sent, none twice")
    assert sum(senders) == 200
    with Session(engine) as session:
        assert session.scalar(select(func.count()).where(Mail.sent_at.is_(None))) == 0
    for process in processes:
        assert "secret-token" not in process.text()


@pytest.mark.slow
def test_a_mailer_killed_mid_queue_loses_nothing(
    engine, settings, database_url, tmp_path, processes
):
    with SmtpServer() as server:
        first = start(processes, database_url, server.url(), tmp_path / "first.log")
        queue(engine, settings, count=200)
        server.wait_for(50, timeout=60)
        first.stop(signal.SIGKILL)
        before_kill = len(server.received)
        start(processes, database_url, server.url(), tmp_path / "second.log")
        assert wait_until(lambda: len(message_ids(server)) == 200, timeout=120)
        ids = message_ids(server)
    twice = [message for message, count in ids.items() if count > 1]
    # Only a mail in flight when the process died may arrive again.
    assert len(twice) <= 1
    print(f"\nmailer killed after {before_kill} mails: 200 arrived, {len(twice)} twice")


def test_the_mailer_recognises_a_mail_refused_by_the_server_process(
    engine, settings, database_url, tmp_path, processes
):
    with SmtpServer() as server:
        server.refuse("nobody@example.com")
        log = tmp_path / "mailer.log"
        start(processes, database_url, server.url(), log)
        with log_context(request_id="req-of-the-refused-mail"):
            (refused,) = queue(engine, settings, recipient="nobody@example.com")
        (accepted,) = queue(engine, settings, recipient="somebody@example.com")
        server.wait_for(1, address="somebody@example.com")
        assert wait_until(lambda: row(engine, refused).failed_at is not None, timeout=10)
    # The line names the mail, and the request that wrote it, never the address.
    assert re.search(
        rf"\[req-of-the-refused-mail\] mail failed mail_id={refused} kind=reset_password code=550",
        log.read_text(),
    )
    assert "nobody@example.com" not in log.read_text()
    # Marked sent in the transaction that follows the server's acceptance.
    assert wait_until(lambda: row(engine, accepted).sent_at is not None, timeout=10)


def test_user_deletion_takes_its_pending_mails_along(engine, settings):
    with Session(engine) as session, session.begin():
        user = User(
            email="leaving@example.com",
            username="leaving",
            username_key="leaving",
            password_hash="x",
            roles=["user"],
        )
        session.add(user)
        session.flush()
        mail.write(
            session,
            settings,
            mail.RESET_PASSWORD,
            user.email,
            user.id,
            username="leaving",
            link="https://app.example/reset-password?token=t",
            valid_for="30 minutes",
        )
    with Session(engine) as session, session.begin():
        session.delete(session.scalars(select(User).where(User.username == "leaving")).one())
    with SmtpServer() as server:
        assert mailer_for(engine, server.url()).send_due() == 0
    assert server.received == []


def test_the_mailer_serves_its_metrics_on_metrics_port(
    engine, settings, database_url, tmp_path, processes
):
    import urllib.request

    from tests.support.servers import free_port

    port = free_port()
    with SmtpServer() as server:
        server.refuse("gone@example.com")
        start(processes, database_url, server.url(), tmp_path / "m.log", METRICS_PORT=str(port))
        queue(engine, settings, count=3)
        queue(engine, settings, recipient="gone@example.com")
        server.wait_for(3)
        assert wait_until(lambda: row_count_failed(engine) == 1, timeout=10)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                return answer.read().decode()

        text = wait_until(lambda: _scraped(scrape), timeout=20)
    assert "mail_sent_total 3.0" in text
    assert "mail_failed_total 1.0" in text
    assert "mail_pending 0.0" in text
    assert "mail_oldest_pending_age_seconds 0.0" in text


def _scraped(scrape) -> str | None:
    try:
        return scrape()
    except OSError:
        return None


def row_count_failed(engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).where(Mail.failed_at.is_not(None)))
