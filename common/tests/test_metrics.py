"""common.metrics: the families, the recorders, the outbox backlog and the METRICS_PORT server."""

from __future__ import annotations

import socket
import urllib.request
from typing import get_args

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from common import metrics
from common.config import ConfigError, Env
from common.tokens import Refusal
from tests.support.servers import free_port


def value(name: str, **labels: str) -> float:
    """A sample of this process's default registry (0 when it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(port: int) -> dict[str, dict]:
    """The families a METRICS_PORT server answers, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_reason_a_token_is_refused_for_is_a_declared_label_value():
    assert set(get_args(Refusal)) <= set(metrics.TOKEN_REFUSALS)


def test_a_group_of_families_is_made_once_per_process():
    assert metrics.worker_metrics() is metrics.worker_metrics()


def test_a_disabled_recorder_records_nothing():
    before = value("http_requests_total", endpoint="/x", method="GET", status="200")
    recorder = metrics.AuthRecorder(enabled=False)
    recorder.request("/x", "GET", 200, 0.01)
    recorder.login("ok")
    recorder.token_check("expired")
    assert value("http_requests_total", endpoint="/x", method="GET", status="200") == before


def test_requests_are_labelled_by_rule_with_unknown_methods_and_routes_folded():
    recorder = metrics.WebRecorder(enabled=True)
    before = value("http_requests_total", endpoint="unmatched", method="other", status="405")
    recorder.request(None, "BREW", 405, 0.001)
    assert value("http_requests_total", endpoint="unmatched", method="other", status="405") == (
        before + 1
    )


def test_the_mailers_families_are_declared_with_their_names():
    families = metrics.mailer_metrics()
    registry = CollectorRegistry()
    for family in (families.sent, families.retried, families.failed):
        registry.register(family)
    for family in (families.pending, families.oldest_pending_age):
        registry.register(family)
    names = {family.name for family in registry.collect()}
    assert names == {
        "mail_sent",
        "mail_retried",
        "mail_failed",
        "mail_pending",
        "mail_oldest_pending_age_seconds",
    }
    samples = {s.name for family in registry.collect() for s in family.samples}
    assert {"mail_sent_total", "mail_retried_total", "mail_failed_total"} <= samples


def test_the_backlog_collector_exports_both_gauges_labelled_by_outbox():
    registry = CollectorRegistry()
    registry.register(metrics.OutboxBacklog("auth", lambda: (3, 12.5)))
    assert registry.get_sample_value("outbox_pending_rows", {"outbox": "auth"}) == 3
    assert (
        registry.get_sample_value("outbox_oldest_pending_age_seconds", {"outbox": "auth"}) == 12.5
    )


def test_an_unreadable_backlog_leaves_the_gauges_out_of_that_scrape():
    def unreadable() -> tuple[int, float]:
        raise ConnectionError("database down")

    registry = CollectorRegistry()
    registry.register(metrics.OutboxBacklog("user", unreadable))
    assert registry.get_sample_value("outbox_pending_rows", {"outbox": "user"}) is None


def test_metrics_port_serves_this_process_s_metrics():
    port = free_port()
    recorder = metrics.ConsumerRecorder("metrics.test.queue")
    recorder.applied(batch=3, applied=2)
    server = metrics.start_metrics_server(Env({"METRICS_PORT": str(port)}))
    assert server is not None
    try:
        families = scrape(port)
    finally:
        server.shutdown()
        server.server_close()
    applied = families["worker_messages_applied"]
    assert any(
        s.labels == {"queue": "metrics.test.queue"} and s.value >= 2 for s in applied.samples
    )
    assert "worker_batch_size" in families
    assert not any(name.endswith("_created") for name in families)


@pytest.mark.parametrize(
    "environ",
    [{}, {"METRICS_PORT": "9", "METRICS_ENABLED": "false"}],
    ids=["no-port", "disabled"],
)
def test_nothing_is_served_without_a_port_or_with_metrics_off(environ):
    assert metrics.start_metrics_server(Env(environ)) is None


@pytest.mark.parametrize("port", ["many", "0", "70000"])
def test_a_bad_metrics_port_is_a_configuration_error_naming_it(port):
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        metrics.start_metrics_server(Env({"METRICS_PORT": port}))


def test_a_metrics_port_in_use_is_a_configuration_error_naming_it():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - where the server would listen
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"METRICS_PORT {port} cannot be listened on"):
            metrics.start_metrics_server(Env({"METRICS_PORT": str(port)}))
