"""The alert rules and dashboard under deploy/: valid, firing when they should, true to the code.

``promtool`` (Debian's ``prometheus`` package) checks the rules and the
Prometheus configuration, runs the rules' unit tests (deploy/prometheus/alerts.test.yml)
and checks every dashboard query as PromQL. Then the Procfile's processes are
started for real and scraped: every metric a rule or a panel names must be
one they export.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.e2e.client import call, poll
from tests.e2e.conftest import PROCESSES
from tests.e2e.processes import MARKER, free_port, tail
from tests.support.servers import fresh_vhost, run_id
from tests.test_web_line import migrate, start_line, stop, wait_for_health, web_environ

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
INSTALL = "apt-get install -y prometheus (Debian's package, which ships promtool)"

# What PromQL writes that is not a metric name.
PROMQL_WORDS = {
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    """Run promtool; fail (never skip) with how to install it when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool is not installed. Install it with: {INSTALL}", pytrace=False)
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    # A name never follows a digit: "5m" of an offset and "1e" of a number are not names.
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()[:1]
        word = match.group()
        if following != "(" and word not in PROMQL_WORDS:
            names.add(word)
    return names


def named_metrics() -> set[str]:
    exprs = [rule["expr"] for rule in alert_rules()] + [e for _t, e in dashboard_queries()]
    return set().union(*(metric_names(expr) for expr in exprs))


def test_metric_names_are_read_from_promql():
    assert metric_names(
        'sum by (job, le) (rate(http_request_duration_seconds_bucket{status=~"5.."}[5m]))'
        " / on (job) group_left sum(increase(auth_logins_total[1h] offset 5m)) > 0.5"
    ) == {"http_request_duration_seconds_bucket", "auth_logins_total"}


def test_the_alert_rules_pass_promtool():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_each_alert_fires_when_its_unit_tests_say_and_not_before():
    result = promtool("test", "rules", str(PROMETHEUS / "alerts.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts.test.yml").read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}


def test_the_alerts_cover_what_an_operator_is_woken_for():
    reads = {rule["alert"]: metric_names(rule["expr"]) for rule in alert_rules()}
    assert reads["OutboxLagging"] == {"outbox_oldest_pending_age_seconds"}
    assert reads["MessagesDeadLettered"] == {"worker_messages_dead_lettered_total"}
    assert reads["HighServerErrorRate"] == {"http_requests_total"}
    assert reads["LoginFailureSpike"] == {"auth_logins_total"}
    assert reads["RevocationRedisUnavailable"] == {"auth_revocation_redis_unavailable_total"}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_prometheus_configuration_passes_promtool():
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_configuration_names_each_compose_process_where_it_serves_metrics(
    compose_base,
):
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    services = compose_base["services"]
    assert set(targets) == set(PROCESSES)
    for name, target in targets.items():
        host, port = target.split(":")
        assert host == name
        if name in ("auth", "user"):
            assert f"0.0.0.0:{port}" in " ".join(services[name]["command"]), name
        else:
            assert services[name]["environment"]["METRICS_PORT"] == port, name


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool checks PromQL in rule files: each query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr}
        for n, (_title, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_dashboard_is_one_grafana_can_import():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    [variable] = board["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["refId"] and target["expr"], panel["title"]
    # Each alert's metric has a panel.
    shown = set().union(*(metric_names(expr) for _t, expr in dashboard_queries()))
    for rule in alert_rules():
        assert metric_names(rule["expr"]) <= shown, rule["alert"]


# -- against the real processes --------------------------------------------------------


def samples(url: str) -> set[str]:
    """The sample names a /metrics answers (``..._total``, ``..._bucket``, ...)."""
    answer = call("GET", url)
    assert answer.status == 200, answer.text
    return {
        sample.name
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def exported(procfile, tmp_path_factory) -> dict[str, set[str]]:
    """Sample names scraped from both web apps, a relay, a worker and the mailer, as the
    Procfile starts them.

    Both web apps, the auth relay, the user worker and the mailer run on SQLite
    files, a fresh vhost and Redis; the web apps under gunicorn.conf.py, the
    others with METRICS_PORT. (The mailer's SMTP server, the development
    default, is not there: it retries, and serves its metrics meanwhile.)
    """
    tmp_path = tmp_path_factory.mktemp("alerting")
    ports = {name: free_port() for name in ("auth", "user", "auth_relay", "user_worker", "mailer")}
    started: list[tuple[subprocess.Popen, str, Path]] = []
    with fresh_vhost("alerting") as amqp_url:
        env = web_environ(tmp_path, run_id())
        env.update(
            RABBITMQ_URL=amqp_url,
            AUTH_BIND=f"127.0.0.1:{ports['auth']}",
            USER_BIND=f"127.0.0.1:{ports['user']}",
            RATELIMIT_ENABLED="false",
        )
        migrate("auth", env)
        migrate("user", env)
        try:
            for name in ports:
                marker = run_id()
                own = {**env, MARKER: marker, "METRICS_PORT": str(ports[name])}
                if name in ("auth", "user"):
                    del own["METRICS_PORT"]
                log_path = tmp_path / f"{name}.log"
                started.append((start_line(procfile[name], own, log_path), marker, log_path))
            found = {}
            for name in ("auth", "user"):
                base = f"http://127.0.0.1:{ports[name]}"
                process, _marker, log_path = started[list(ports).index(name)]
                health = wait_for_health(process, base)
                assert health is not None and health.status == 200, tail(log_path)
            exercise(f"http://127.0.0.1:{ports['auth']}", f"http://127.0.0.1:{ports['user']}")
            for name, port in ports.items():
                process, _marker, log_path = started[list(ports).index(name)]
                url = f"http://127.0.0.1:{port}/metrics"
                answer = poll(lambda url=url: reachable(url), until=bool, timeout=30)
                assert answer, f"{name} serves no metrics on {port}:\n{tail(log_path)}"
                found[name] = samples(url)
            return found
        finally:
            for process, marker, _log in started:
                stop(process, marker)


def reachable(url: str) -> bool:
    try:
        return call("GET", url, timeout=2).status == 200
    except OSError:
        return False


def exercise(auth: str, user: str) -> None:
    """A registration, a login, a wrong password and refused tokens at both services."""
    name = f"alert_{run_id()}"
    account = {"email": f"{name}@example.com", "password": "correct-Horse-battery-9"}
    assert call("POST", f"{auth}/api/v1/auth/register", json={**account, "username": name}).status
    assert call("POST", f"{auth}/api/v1/auth/login", json=account).status == 200
    wrong = {**account, "password": "wrong-Horse-battery-9"}
    assert call("POST", f"{auth}/api/v1/auth/login", json=wrong).status == 401
    assert call("GET", f"{auth}/api/v1/auth/me", token="x.y.z").status == 401
    assert call("GET", f"{user}/api/v1/users/me", token="x.y.z").status == 401


def test_every_metric_an_alert_or_a_panel_names_is_exported(exported):
    everything = set().union(*exported.values())
    names = named_metrics()
    assert len(names) >= 10
    assert sorted(names - everything) == []


def test_each_process_exports_its_own_families(exported):
    assert {"auth_logins_total", "auth_tokens_refused_total", "http_requests_total"} <= exported[
        "auth"
    ]
    assert {"user_token_checks_total", "http_request_duration_seconds_bucket"} <= exported["user"]
    assert {"outbox_pending_rows", "outbox_oldest_pending_age_seconds"} <= exported["auth_relay"]
    assert {
        "worker_messages_applied_total",
        "worker_messages_retried_total",
        "worker_messages_dead_lettered_total",
        "worker_batch_size_bucket",
    } <= exported["user_worker"]
    assert not any(name.startswith("auth_") for name in exported["user"])
    assert not any(name.startswith("http_") for name in exported["user_worker"])
