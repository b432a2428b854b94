"""A real SMTP server for tests: aiosmtpd on a free loopback port, recording what it receives.

It speaks real SMTP (EHLO, STARTTLS, AUTH, SMTPS), so the mailer under test
goes through the same dialogue as with a production server. It can refuse
chosen recipients (a 550, or a 450 "try later"), be stopped and started
again on the same port (an outage), and hand out the links of the mails it got.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.servers import free_port

# aiosmtpd logs every SMTP command at INFO: noise in a failing test's output.
logging.getLogger("mail.log").setLevel(logging.WARNING)

LINK = re.compile(r"https?://\S+?/(?:verify-email|reset-password|confirm-email)\?token=([\w-]+)")


@dataclass(frozen=True)
class Received:
    """One mail as the server got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    at: float

    @property
    def text(self) -> str:
        """The text/plain part."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "the mail has no text part"
        return str(part.get_content())

    @property
    def html(self) -> str | None:
        """The text/html part, if any."""
        part = self.message.get_body(preferencelist=("html",))
        return None if part is None else str(part.get_content())

    @property
    def link(self) -> str:
        """The one link the text part carries."""
        found = LINK.search(self.text)
        assert found is not None, f"no link in the mail:\n{self.text}"
        return found.group(0)

    @property
    def token(self) -> str:
        """The token of that link."""
        found = LINK.search(self.text)
        assert found is not None, f"no link in the mail:\n{self.text}"
        return found.group(1)


@dataclass
class _Handler:
    """aiosmtpd handler: records messages, refuses chosen recipients."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    lock: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        answer = self.refuse.get(address.lower())
        if answer is not None:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), message, time.monotonic())
            )
            self.lock.notify_all()
        return "250 Message accepted for delivery"


class SmtpServer:
    """A real SMTP server of one test, on a fixed free port, stopped and started at will.

    ``tls`` is ``None`` (plain SMTP), ``"starttls"`` (STARTTLS required) or
    ``"smtps"`` (TLS from the first byte), with a certificate from
    :func:`self_signed`; ``credentials`` (user, password) requires AUTH.
    """

    def __init__(
        self,
        *,
        tls: str | None = None,
        certificate: tuple[Path, Path] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.handler = _Handler()
        self.tls = tls
        self.certificate = certificate
        self.credentials = credentials
        self.logins: list[str] = []
        self._controller: Controller | None = None

    def url(self, *, scheme: str | None = None, starttls: bool | None = None) -> str:
        """The ``SMTP_URL`` that reaches it, credentials included."""
        scheme = scheme or ("smtps" if self.tls == "smtps" else "smtp")
        auth = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        if starttls is None:
            starttls = self.tls == "starttls"
        query = "?starttls=true" if starttls else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}{query}"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.credentials is None:
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        ok = (user, password) == self.credentials
        if ok:
            self.logins.append(user)
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        """Start listening (again) on its port."""
        kwargs: dict = {}
        if self.tls is not None:
            assert self.certificate is not None, "TLS needs a certificate"
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self.certificate))
            if self.tls == "smtps":
                kwargs["ssl_context"] = context
            else:
                kwargs.update(tls_context=context, require_starttls=True)
        if self.credentials is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
            if self.tls == "smtps":
                # aiosmtpd knows of TLS only through STARTTLS: on an SMTPS port it
                # would hold AUTH back, though the whole connection is TLS.
                kwargs["auth_require_tls"] = False
        self._controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10, **kwargs
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def refuse(self, address: str, answer: str = "550 5.1.1 No such mailbox") -> None:
        """Answer RCPT TO ``address`` with ``answer`` from now on."""
        self.handler.refuse[address.lower()] = answer

    @property
    def received(self) -> list[Received]:
        """Every mail received so far, oldest first."""
        with self.handler.lock:
            return list(self.handler.received)

    def to(self, address: str) -> list[Received]:
        """The mails received for ``address``."""
        return [mail for mail in self.received if address.lower() in map(str.lower, mail.rcpt_tos)]

    def wait_for(self, count: int, timeout: float = 30.0, address: str | None = None) -> list:
        """Wait until at least ``count`` mails (for ``address``, if given) arrived; return them."""
        deadline = time.monotonic() + timeout
        with self.handler.lock:
            while True:
                mails = self.to(address) if address else list(self.handler.received)
                if len(mails) >= count:
                    return mails
                left = deadline - time.monotonic()
                assert left > 0, f"{len(mails)} of {count} mails arrived within {timeout:.0f}s"
                self.handler.lock.wait(min(left, 0.5))

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key: (cert.pem, key.pem).

    A client trusts it by pointing ``SSL_CERT_FILE`` at cert.pem.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
