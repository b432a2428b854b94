"""Mails the auth service sends, written to the ``mails`` table for the mailer worker.

A request never talks to SMTP. It renders the mail (a text part and an HTML
part, from ``templates/mail``) and writes it in its own database transaction,
so a request that rolls back sends nothing, and one that commits has its mail
kept until the mailer (``workers/mailer.py``) has handed it to the SMTP server.
On PostgreSQL the commit also wakes the mailer (``NOTIFY``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from auth_app.config import AuthSettings
from auth_app.models import Mail
from common.db import notify_at_commit, utcnow
from common.logging import request_id_var

if TYPE_CHECKING:
    from jinja2 import Environment

#: The channel a commit that wrote a mail notifies (the mailer LISTENs on it).
MAIL_CHANNEL = "mails_new"


@dataclass(frozen=True)
class MailKind:
    """One kind of mail: its templates' name, its subject, and the page its link opens."""

    name: str
    subject: str
    page: str | None = None


VERIFY_EMAIL = MailKind("verify_email", "Verify your email address", "/verify-email")
RESET_PASSWORD = MailKind("reset_password", "Reset your password", "/reset-password")
CONFIRM_EMAIL_CHANGE = MailKind(
    "confirm_email_change", "Confirm your new email address", "/confirm-email"
)
EMAIL_CHANGE_NOTICE = MailKind("email_change_notice", "Your email address is being changed")


@functools.cache
def _templates() -> Environment:
    # Imported here: the mailer imports this module for MAIL_CHANNEL and
    # sends mails already rendered, so it never needs jinja.
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("auth_app", "templates/mail"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def link(settings: AuthSettings, kind: MailKind, token: str) -> str:
    """The link a mail of ``kind`` carries: ``FRONTEND_URL`` + its page + ``?token=``."""
    if kind.page is None:
        raise ValueError(f"a {kind.name} mail has no link")
    return f"{settings.frontend_url}{kind.page}?{urlencode({'token': token})}"


def describe(ttl: timedelta) -> str:
    """A lifetime in words: ``30 minutes``, ``1 hour``, ``24 hours``, ``3 days``."""
    minutes = int(ttl.total_seconds()) // 60
    if minutes >= 2 * 24 * 60 and minutes % (24 * 60) == 0:
        count, unit = minutes // (24 * 60), "day"
    elif minutes >= 60 and minutes % 60 == 0:
        count, unit = minutes // 60, "hour"
    else:
        count, unit = minutes, "minute"
    return f"{count} {unit}{'' if count == 1 else 's'}"


def render(kind: MailKind, **context: Any) -> tuple[str, str]:
    """The text and HTML bodies of a mail of ``kind``."""
    templates = _templates()
    context = {"subject": kind.subject, **context}
    text = templates.get_template(f"{kind.name}.txt").render(context)
    html = templates.get_template(f"{kind.name}.html").render(context)
    return text, html


def write(
    session: Session,
    settings: AuthSettings,
    kind: MailKind,
    recipient: str,
    user_id: str | None,
    **context: Any,
) -> Mail:
    """Render a mail of ``kind`` to ``recipient`` and queue it in the caller's transaction."""
    text, html = render(kind, **context)
    now = utcnow()
    mail = Mail(
        user_id=user_id,
        kind=kind.name,
        sender=settings.mail_from,
        recipient=recipient,
        subject=kind.subject,
        text_body=text,
        html_body=html,
        created_at=now,
        next_attempt_at=now,
        attempts=0,
        correlation_id=request_id_var.get(),
    )
    session.add(mail)
    session.flush()
    notify_at_commit(session, MAIL_CHANNEL)
    return mail
