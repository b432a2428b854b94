"""Prometheus metrics: every family the web apps, workers, relays and the mailer export.

Importable without Flask: the workers and relays load it, and serve their
metrics on ``METRICS_PORT`` with :func:`start_metrics_server` (prometheus_client's
own HTTP server, in a thread of the process). The web apps serve theirs on
``GET /metrics`` (:mod:`common.http_metrics`).

Each group of families is made the first time a process asks for it, so a
process exports the families of what it does and nothing else: the user
service no auth counters, a relay no HTTP histogram. Under gunicorn the web
apps run in prometheus_client's multiprocess mode (gunicorn.conf.py sets
``PROMETHEUS_MULTIPROC_DIR``), where each process writes its values to files
and :func:`exposition` sums them; there a family appears once some process
has recorded a value of it, which is why the recorders below declare every
label value they know at start (each shows as 0 until it happens).

Label values are few and fixed: routes by their rule (``/api/v1/users/<uuid:user_id>``,
never the path with an id in it), methods from a known list, outcomes and
reasons from the tuples below.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.config import ConfigError, Env

log = logging.getLogger(__name__)

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"

#: Request latency buckets (seconds), from a Redis-and-index read (about a
#: millisecond) to a bcrypt login at a high cost (about a second); 2 s is the
#: longest anything should take before it is an incident.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: Messages applied in one transaction: 1 up to the largest prefetch (1000).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

#: Methods counted by name; any other (a client may send any token) is ``other``.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The ``endpoint`` of a request no route matched (404, and 405 for a method a path lacks).
UNMATCHED = "unmatched"

#: How a login ended (a password login, or the second step of an MFA login).
#: ``mfa_required``: the password was right and the account has a second factor,
#: so no tokens yet; ``wrong_credentials`` counts wrong codes at the second step too;
#: ``email_not_verified``: a right password under ``EMAIL_VERIFICATION=required``.
LoginOutcome = Literal[
    "ok", "wrong_credentials", "throttled", "disabled", "email_not_verified", "mfa_required"
]
LOGIN_OUTCOMES: tuple[str, ...] = get_args(LoginOutcome)

#: Why a Bearer token was refused: ``missing`` (no token sent), every reason of
#: :class:`common.tokens.InvalidToken` (``common.tokens.Refusal``), and
#: ``account_disabled`` (a genuine token of a disabled account, answered 403).
TOKEN_REFUSALS: tuple[str, ...] = (
    "missing",
    "malformed",
    "unsupported_algorithm",
    "not_access_token",
    "unsupported_header",
    "unknown_key",
    "invalid_signature",
    "invalid",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "invalid_claim",
    "revoked",
    "unknown_user",
    "account_deleted",
    "account_disabled",
)
#: A token check's outcome: ``ok``, a refusal, or ``unavailable`` (the check's
#: state could not be read: at the auth service, Redis; answered 503).
TOKEN_CHECK_OK = "ok"
TOKEN_CHECK_UNAVAILABLE = "unavailable"

_made: dict[Callable[[], object], object] = {}
_making = threading.Lock()
G = TypeVar("G")


def _once(factory: Callable[[], G]) -> Callable[[], G]:
    """``factory()`` made the first time it is asked for, the same object every time after.

    Registering a family twice in one registry is an error, and a process
    builds many apps in tests: each group of families exists once per process.
    """

    def get() -> G:
        with _making:
            if factory not in _made:
                _made[factory] = factory()
            return _made[factory]  # type: ignore[return-value]

    get.__doc__ = factory.__doc__
    return get


# -- the families ------------------------------------------------------------
@dataclass(frozen=True)
class HttpMetrics:
    """Both web apps: every request, by route, method and status."""

    requests: Counter
    duration: Histogram


@_once
def http_metrics() -> HttpMetrics:
    """The web apps' request families."""
    return HttpMetrics(
        Counter(
            "http_requests",
            "HTTP requests answered, by route (its rule), method and status",
            ["endpoint", "method", "status"],
        ),
        Histogram(
            "http_request_duration_seconds",
            "Time from a request's first hook to its response, by route and method",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
        ),
    )


@dataclass(frozen=True)
class AuthMetrics:
    """The auth service's own outcomes."""

    logins: Counter
    tokens_refused: Counter
    refresh_reuse_detected: Counter
    revocation_redis_unavailable: Counter


@_once
def auth_metrics() -> AuthMetrics:
    """The auth service's outcome families."""
    return AuthMetrics(
        Counter("auth_logins", "Password logins, by outcome", ["outcome"]),
        Counter(
            "auth_tokens_refused",
            "Access tokens refused at a Bearer check or an introspection, by reason",
            ["reason"],
        ),
        Counter(
            "auth_refresh_reuse_detected",
            "Rotated refresh tokens presented past the grace window (the session was ended)",
        ),
        Counter(
            "auth_revocation_redis_unavailable",
            "Token checks refused (503) because Redis, which holds revocations, was unreachable",
        ),
    )


@dataclass(frozen=True)
class UserMetrics:
    """The user service's own outcomes."""

    token_checks: Counter


@_once
def user_metrics() -> UserMetrics:
    """The user service's outcome families."""
    return UserMetrics(
        Counter(
            "user_token_checks",
            "Bearer token checks, by outcome: ok or the reason of the refusal",
            ["outcome"],
        )
    )


@dataclass(frozen=True)
class WorkerMetrics:
    """Every event consumer, by queue."""

    applied: Counter
    retried: Counter
    dead_lettered: Counter
    batch_size: Histogram


@_once
def worker_metrics() -> WorkerMetrics:
    """The consumers' families."""
    return WorkerMetrics(
        Counter(
            "worker_messages_applied",
            "Messages applied and acked (a redelivered duplicate is not counted)",
            ["queue"],
        ),
        Counter(
            "worker_messages_retried",
            "Attempts to apply a message again after an attempt that held it failed",
            ["queue"],
        ),
        Counter(
            "worker_messages_dead_lettered",
            "Messages rejected to the queue's dead-letter queue",
            ["queue"],
        ),
        Histogram(
            "worker_batch_size",
            "Messages applied in one transaction",
            ["queue"],
            buckets=BATCH_BUCKETS,
        ),
    )


@dataclass(frozen=True)
class MailerMetrics:
    """The mailer worker: mails sent, retried and failed, and what waits to be sent."""

    sent: Counter
    retried: Counter
    failed: Counter
    pending: Gauge
    oldest_pending_age: Gauge


@_once
def mailer_metrics() -> MailerMetrics:
    """The mailer's families."""
    return MailerMetrics(
        Counter("mail_sent", "Mails the SMTP server accepted"),
        Counter("mail_retried", "Sending attempts made again after a failed one"),
        Counter("mail_failed", "Mails given up on"),
        Gauge("mail_pending", "Mails written and not sent yet"),
        Gauge("mail_oldest_pending_age_seconds", "Age of the oldest mail not sent yet"),
    )


@dataclass(frozen=True)
class JanitorMetrics:
    """The janitor: rows it removed per table, its runs, and when one last succeeded."""

    deleted: Counter
    runs: Counter
    last_success: Gauge


@_once
def janitor_metrics() -> JanitorMetrics:
    """The janitor's families."""
    return JanitorMetrics(
        Counter("janitor_rows_deleted", "Rows the janitor removed, by table", ["table"]),
        Counter("janitor_runs", "Janitor runs, by outcome (ok or failed)", ["outcome"]),
        Gauge(
            "janitor_last_success_timestamp_seconds",
            "When a janitor run last finished without an error (epoch seconds)",
        ),
    )


OUTBOX_PENDING = "outbox_pending_rows"
OUTBOX_OLDEST_AGE = "outbox_oldest_pending_age_seconds"


class OutboxBacklog(Collector):
    """``outbox_pending_rows`` and ``outbox_oldest_pending_age_seconds`` of one outbox.

    Read when scraped, by ``read()``: ``(rows pending, age in seconds of the
    oldest, 0 if none)``. The scrape runs in the metrics server's thread, so
    the relay's publish loop never waits for it. A read that fails (the
    database is down) leaves both out of that scrape.
    """

    def __init__(self, outbox: str, read: Callable[[], tuple[int, float]]) -> None:
        self.outbox = outbox
        self.read = read

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(OUTBOX_PENDING, "Outbox rows not published yet", labels=["outbox"]),
            GaugeMetricFamily(
                OUTBOX_OLDEST_AGE,
                "Seconds since the oldest outbox row not published yet was written (0: none)",
                labels=["outbox"],
            ),
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families, without reading the database (at registration)."""
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Both gauges, read now."""
        try:
            pending, age = self.read()
        except Exception as error:  # noqa: BLE001 - a scrape must not fail on it
            log.warning("outbox %s backlog unreadable (%s)", self.outbox, type(error).__name__)
            return
        pending_family, age_family = self._families()
        pending_family.add_metric([self.outbox], pending)
        age_family.add_metric([self.outbox], age)
        yield pending_family
        yield age_family


# -- recording ---------------------------------------------------------------
def _method(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


class WebRecorder:
    """What a web app records: each request, and its service's own outcomes.

    Disabled (``METRICS_ENABLED=false``), every method does nothing and no
    family is made.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._http = http_metrics() if enabled else None

    def request(self, endpoint: str | None, method: str, status: int, seconds: float) -> None:
        """One answered request: ``endpoint`` is its route's rule, None when no route matched."""
        if self._http is None:
            return
        endpoint = endpoint or UNMATCHED
        method = _method(method)
        self._http.requests.labels(endpoint, method, str(status)).inc()
        self._http.duration.labels(endpoint, method).observe(seconds)

    def token_check(self, outcome: str) -> None:
        """A Bearer check's outcome: ``ok``, a reason of TOKEN_REFUSALS, or ``unavailable``."""


class AuthRecorder(WebRecorder):
    """The auth service's recorder."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        self._auth = auth_metrics() if enabled else None
        if self._auth is not None:
            for outcome in LOGIN_OUTCOMES:
                self._auth.logins.labels(outcome)
            for reason in TOKEN_REFUSALS:
                self._auth.tokens_refused.labels(reason)

    def login(self, outcome: LoginOutcome) -> None:
        """A password login ended with ``outcome``."""
        if self._auth is not None:
            self._auth.logins.labels(outcome).inc()

    def token_check(self, outcome: str) -> None:
        """Count a refusal by its reason and a check that found Redis down (not ``ok``)."""
        if self._auth is None or outcome == TOKEN_CHECK_OK:
            return
        if outcome == TOKEN_CHECK_UNAVAILABLE:
            # The auth service's token check reads one dependency that can be
            # unavailable, Redis (auth_app.access.AccessCheck).
            self._auth.revocation_redis_unavailable.inc()
        else:
            self._auth.tokens_refused.labels(_known(outcome)).inc()

    def refresh_reuse_detected(self) -> None:
        """A rotated refresh token came back past the grace window."""
        if self._auth is not None:
            self._auth.refresh_reuse_detected.inc()


class UserRecorder(WebRecorder):
    """The user service's recorder."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        self._user = user_metrics() if enabled else None
        if self._user is not None:
            for outcome in (TOKEN_CHECK_OK, *TOKEN_REFUSALS):
                self._user.token_checks.labels(outcome)

    def token_check(self, outcome: str) -> None:
        """Count every Bearer check by its outcome."""
        if self._user is not None:
            self._user.token_checks.labels(_known(outcome)).inc()


def _known(outcome: str) -> str:
    # A reason added to common.tokens without one here is counted, as "invalid";
    # the label set stays the declared one.
    return outcome if outcome in TOKEN_REFUSALS or outcome == TOKEN_CHECK_OK else "invalid"


class ConsumerRecorder:
    """What an event consumer records for its queue."""

    def __init__(self, queue: str) -> None:
        families = worker_metrics()
        self._applied = families.applied.labels(queue)
        self._retried = families.retried.labels(queue)
        self._dead_lettered = families.dead_lettered.labels(queue)
        self._batch_size = families.batch_size.labels(queue)

    def applied(self, batch: int, applied: int) -> None:
        """A transaction of ``batch`` messages committed, ``applied`` of them new."""
        self._batch_size.observe(batch)
        self._applied.inc(applied)

    def retried(self, messages: int = 1) -> None:
        """``messages`` are tried again after a failed attempt."""
        self._retried.inc(messages)

    def dead_lettered(self) -> None:
        """One message went to the dead-letter queue."""
        self._dead_lettered.inc()


# -- exposing ----------------------------------------------------------------
#: The media type of :func:`exposition` (Prometheus text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def exposition() -> bytes:
    """This process's metrics as Prometheus text; under gunicorn, every worker's summed.

    In multiprocess mode the values of every process that wrote to the
    directory are read, those of workers that have exited included, so
    counters survive worker recycling.
    """
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def start_metrics_server(env: Env | None = None) -> WSGIServer | None:
    """Serve this process's metrics on ``METRICS_PORT``, in a thread; the server, or None.

    Nothing is served when ``METRICS_PORT`` is unset or ``METRICS_ENABLED`` is
    false. It listens on every interface (a scraper is on another host or
    container). A bad port, or one that is taken, is a ConfigError naming
    ``METRICS_PORT``.
    """
    env = env or Env()
    if not env.bool("METRICS_ENABLED", True) or env.raw("METRICS_PORT") is None:
        return None
    port = env.int("METRICS_PORT", 0, minimum=1, maximum=65535)
    # No <counter>_created series beside every counter and histogram: the text
    # format has no use for them (the web apps' multiprocess mode has none).
    disable_created_metrics()
    try:
        server, _thread = start_http_server(port, addr="0.0.0.0")  # noqa: S104 - see above
    except OSError as error:
        raise ConfigError(f"METRICS_PORT {port} cannot be listened on: {error.strerror}") from None
    log.info("metrics served on port %d", port)
    return server
