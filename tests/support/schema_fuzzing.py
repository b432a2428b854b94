"""Schema-driven fuzzing of a service against its own ``/openapi.json`` (tests only).

schemathesis generates requests for every operation of the document, valid
ones and invalid ones, sends them to the app in-process and runs every
built-in check on each answer: never a 500; status codes, content types,
headers and bodies as documented; authentication really enforced; invalid
data refused. ``fuzz_api`` collects every failure instead of stopping at the
first, so one run shows everything the document and the code disagree on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

# Response time is no concern of a conformance run; every other check runs.
_EXCLUDED_CHECKS = {"max_response_time"}
# What schemathesis accepts by default as an answer to schema-valid input.
_POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429"]


@dataclass
class FuzzReport:
    """What a run did: requests sent (checks' own requests included) and failures found."""

    requests: int = 0
    operations: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self, service: str) -> str:
        """One line for the test output."""
        return (
            f"schemathesis {service}: {self.operations} operations, "
            f"{self.requests} requests, {len(self.failures)} failures"
        )


class _RequestCounter:
    """WSGI middleware counting the requests the app answers."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        self.count = 0

    def __call__(self, environ, start_response):
        self.count += 1
        return self.wsgi_app(environ, start_response)


def all_checks() -> list:
    """Every registered schemathesis check except response time."""
    # The OpenAPI checks register themselves on first use; without this only the generic ones run.
    load_all_checks()
    return [check for check in CHECKS.get_all() if check.__name__ not in _EXCLUDED_CHECKS]


def _config(semantic_rules: dict[str, list[str]]) -> SchemathesisConfig:
    operations = [
        {
            "include-path": path,
            "checks": {
                "positive_data_acceptance": {"expected-statuses": _POSITIVE_STATUSES + statuses}
            },
        }
        for path, statuses in semantic_rules.items()
    ]
    return SchemathesisConfig.from_dict({"operations": operations})


def fuzz_api(
    app,
    *,
    headers: Callable[[], dict],
    max_examples: int,
    semantic_rules: dict[str, list[str]] | None = None,
) -> FuzzReport:
    """Fuzz every operation of ``app``'s ``/openapi.json`` in both generation modes.

    ``headers()`` is called before each request (a fresh token each time, so
    an operation that ends a session cannot starve the next ones); the
    requests it makes itself are not counted. ``semantic_rules`` maps a path
    to the extra statuses schema-valid input may still get there, for rules a
    JSON schema cannot state (a password policy refusing a breached password).
    """
    counter = _RequestCounter(app.wsgi_app)
    app.wsgi_app = counter
    report = FuzzReport()
    checks = all_checks()
    try:
        schema = schemathesis.openapi.from_wsgi(
            "/openapi.json", app, config=_config(semantic_rules or {})
        )
        for result in schema.get_all_operations():
            operation = result.ok()
            report.operations += 1
            for mode in GenerationMode:

                @settings(
                    max_examples=max_examples,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def exercise(case):
                    sent = headers()
                    before = counter.count
                    try:
                        case.call_and_validate(headers=sent, checks=checks)
                    finally:
                        report.requests += counter.count - before

                try:
                    exercise()
                except Unsatisfiable:
                    # Nothing to make invalid: the operation takes no input at all.
                    continue
                except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - all reported
                    # schemathesis raises its findings as a BaseExceptionGroup.
                    report.failures.append(f"{operation.label} [{mode.value}]: {error}")
    finally:
        app.wsgi_app = counter.wsgi_app
    return report


def fuzz_links(
    app,
    *,
    headers: Callable[[], dict],
    max_examples: int,
    steps: int,
    semantic_rules: dict[str, list[str]] | None = None,
) -> FuzzReport:
    """Follow the document's OpenAPI links in generated sequences (list, then read, edit, delete).

    Only sequences reveal some faults: ``use_after_free`` (a deleted resource
    still answers) and ``ensure_resource_availability`` (a linked resource is
    missing). Every check runs on every step, as in :func:`fuzz_api`.
    """
    counter = _RequestCounter(app.wsgi_app)
    app.wsgi_app = counter
    report = FuzzReport()
    try:
        schema = schemathesis.openapi.from_wsgi(
            "/openapi.json", app, config=_config(semantic_rules or {})
        )
        all_checks()
        base = schema.as_state_machine()
        called: set[str] = set()

        class LinkedCalls(base):
            def get_call_kwargs(self, case):
                called.add(case.operation.label)
                self.sent = headers()
                return {"headers": self.sent}

            def validate_response(self, response, case, additional_checks=None, **kwargs):
                # Name the headers as the caller's own, so ignored_auth knows the token is
                # real (and probes without it) rather than taking it for a generated one.
                case.validate_response(
                    response,
                    headers=self.sent,
                    additional_checks=additional_checks,
                    transport_kwargs=kwargs or None,
                    recorder=self.recorder,
                )

        try:
            run_state_machine_as_test(
                LinkedCalls,
                settings=settings(
                    max_examples=max_examples,
                    stateful_step_count=steps,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - reported to the caller
            report.failures.append(f"linked sequence: {error}")
    finally:
        app.wsgi_app = counter.wsgi_app
    report.operations = len(called)
    report.requests = counter.count
    return report
