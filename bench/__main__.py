"""``python -m bench [--smoke]``: run every benchmark once, print the table, write JSON.

A full run takes about forty minutes (3 runs of 10 s per HTTP figure, 10,000-row
drains, 200 registrations, a 2-minute memory run, and a million users loaded and
measured beside a thousand). ``--smoke`` runs one short
iteration of each, at bcrypt cost 4, to prove the harness still works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from bench import ceilings, cpu, drain_ceiling, memory, pipeline, scale, timing
from bench.load import require_wrk, run_wrk, server_cpu_seconds
from bench.report import Row, render_table, say
from bench.system import BenchError, System, gunicorn_concurrency
from user_app.models import OutboxEvent as UserOutbox
from workers.consumer import IN_FLIGHT_BATCHES
from workers.settings import BrokerSettings

RESULTS = Path(__file__).resolve().parent / "results"
ISSUER = "http://127.0.0.1:5001"
AUDIENCE = "user-service"
READ_CONNECTIONS = 16
MAX_LOAD = 1.5
#: The user worker's prefetch (BrokerSettings' default): the bare ceiling's batch size.
WORKER_PREFETCH = BrokerSettings.prefetch
# What every web worker imports before serving a request: a process with only
# these loaded shows the resident floor no app code can go below.
IMPORT_FLOOR = [
    "flask",
    "flask_smorest",
    "sqlalchemy.orm",
    "psycopg2",
    "jwt",
    "cryptography.x509",
]


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    name: str
    runs: int
    seconds: float
    bcrypt_rounds: int
    drain_rows: int
    prefill_rows: int
    register_samples: int
    growth_seconds: float
    verify_number: int
    wait_for_quiet: float
    #: Rounds of traffic through the whole make run system before its memory is read.
    run_rounds: int
    #: The two sizes (users) of the scale section.
    scale_users: tuple[int, int]


FULL = Plan("full", 3, 10, 12, 10_000, 100_000, 200, 120, 2000, 600, 50, (1_000, 1_000_000))
SMOKE = Plan("smoke", 1, 1, 4, 100, 1_000, 5, 3, 50, 0, 3, (100, 2_000))


def wait_for_quiet(limit: float) -> float:
    """Wait (up to ``limit`` s) until the 1-minute load is at most MAX_LOAD; return the load."""
    deadline = time.monotonic() + limit
    load = os.getloadavg()[0]
    while load > MAX_LOAD and time.monotonic() < deadline:
        print(f"load {load:.2f} > {MAX_LOAD}: waiting for other jobs to finish", flush=True)
        time.sleep(15)
        load = os.getloadavg()[0]
    return load


def median(values) -> float:
    """The median of a non-empty sequence."""
    return statistics.median(list(values))


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


SECTIONS = (
    "sizing",
    "login",
    "timing",
    "reads",
    "metrics",
    "verify",
    "latency",
    "revocation",
    "pipeline",
    "memory",
    "recycling",
    "scale",
)
#: What recording requests and serving /metrics may cost GET /users/me: 5 % of its rate.
METRICS_COST_TARGET = 0.95
#: The code as it stood when reads were last measured against their own past: GET
#: /users/me is served from this commit's tree beside the current one, same run.
READS_BASELINE = "401cba7"
#: What the current code must serve of GET /users/me, in req/s, against READS_BASELINE.
READS_BASELINE_TARGET = 1.3


def run(plan: Plan, only: frozenset[str] = frozenset(SECTIONS)) -> dict:
    """Start the system, measure ``only`` those sections, return the results document."""
    require_wrk()
    load_before = wait_for_quiet(plan.wait_for_quiet)
    workers, threads = gunicorn_concurrency()
    concurrency = workers * threads
    rows: list[Row] = []
    raw: dict = {
        "plan": plan.name,
        "sections": [name for name in SECTIONS if name in only],
        "cores": os.cpu_count(),
        "load_before": round(load_before, 2),
        "gunicorn": {"workers": workers, "threads": threads, "worker_class": "gthread"},
    }
    with System(bcrypt_rounds=plan.bcrypt_rounds) as system:
        say("starting gunicorn (auth, user, bare view), relays and workers")
        auth = system.start_web("auth", "auth_app:create_app()")
        user = system.start_web("user", "user_app:create_app()")
        bare = system.start_web("bare", "bench.bare_app:create_app()")
        for name, module in (
            ("auth_relay", ("workers.relay", "auth")),
            ("user_relay", ("workers.relay", "user")),
            ("auth_worker", ("workers.auth_worker",)),
            ("user_worker", ("workers.user_worker",)),
        ):
            system.start_worker(name, *module)
        auth_engine, user_engine = make_engines(system)
        try:
            name = "bench" + uuid.uuid4().hex[:8]
            account = pipeline.register(auth, name)
            # The workers declare their queues as they start; until then the relay
            # holds rows back. The first profile arriving means the loop is up.
            pipeline.wait_for_profile(user_engine, account["id"], timeout=60)
            token = pipeline.login(auth, account["email"])["access_token"]
            if "sizing" in only:
                measure_bcrypt_costs(plan, rows, raw)
            if "login" in only:
                measure_login(plan, system, auth, account, concurrency, rows, raw)
            if "timing" in only:
                measure_timing(plan, auth, rows, raw)
            if "reads" in only:
                measure_reads(plan, user, bare, token, rows, raw)
                baseline = system.start_web(
                    "user_baseline",
                    "user_app:create_app()",
                    source=system.checkout(READS_BASELINE),
                )
                pids = {
                    user: system.processes["user"].pid,
                    baseline: system.processes["user_baseline"].pid,
                }
                measure_reads_against_baseline(plan, user, baseline, token, pids, rows, raw)
                system.stop("user_baseline")
            if "metrics" in only:
                # The same app and gunicorn settings, only METRICS_ENABLED differs.
                quiet = system.start_web(
                    "user_nometrics", "user_app:create_app()", env={"METRICS_ENABLED": "false"}
                )
                measure_metrics_cost(plan, user, quiet, token, rows, raw)
                system.stop("user_nometrics")
            if "verify" in only:
                measure_verify(plan, system, token, rows, raw)
            if "latency" in only:
                measure_latency(plan, auth, auth_engine, user_engine, rows, raw)
            if "revocation" in only:
                measure_revocation(plan, auth, user, account, rows, raw)
            if "pipeline" in only:
                measure_pipeline(plan, system, auth_engine, user_engine, rows, raw)
            system.check_alive()
            if "memory" in only:
                measure_memory(plan, system, auth, token, rows, raw)
            system.check_alive()
            if "recycling" in only:
                measure_recycling(plan, system, token, rows, raw)
        finally:
            auth_engine.dispose()
            user_engine.dispose()
    if "scale" in only:
        # A system of its own: its million rows must not weigh on the other sections.
        scale.measure_scale(plan, rows, raw, plan.scale_users)
    raw["load_after"] = round(os.getloadavg()[0], 2)
    raw["rows"] = [row.to_dict() for row in rows]
    return raw


def make_engines(system: System):
    """Engines on the two databases, for filling the outbox and watching the results."""
    from common.db import make_engine

    return make_engine(system.auth_db), make_engine(system.user_db)


def measure_login(plan, system, auth, account, concurrency, rows, raw) -> None:
    """Login throughput against bcrypt alone on as many threads as gunicorn serves with."""
    say(f"bcrypt ceiling on {concurrency} threads, then login load")
    body = json.dumps({"email": account["email"], "password": pipeline.PASSWORD})
    ceiling_runs, login_runs = [], []
    for _ in range(plan.runs):
        ceiling_runs.append(ceilings.bcrypt_rate(plan.bcrypt_rounds, concurrency, plan.seconds))
        # wrk drops the requests still in flight when it stops; at ~1 s per login
        # that would cost a 10 s run up to a tenth of its count, so logins run 3x longer.
        login_runs.append(
            run_wrk(
                auth + "/api/v1/auth/login",
                "post_json.lua",
                body,
                seconds=plan.seconds * 3,
                connections=concurrency,
            )
        )
    check_errors("login", login_runs)
    raw["login"] = {
        "bcrypt_ceiling_runs": [round(r, 2) for r in ceiling_runs],
        "runs": [r.to_dict() for r in login_runs],
    }
    rows.append(
        Row(
            f"login req/s (bcrypt {plan.bcrypt_rounds})",
            median(r.rate for r in login_runs),
            ceiling=median(ceiling_runs),
            ratio_target=0.90,
        )
    )


def interleaved_reads(plan, token, first: str, second: str, pids: dict[str, int] | None = None):
    """``plan.runs`` runs of GET /users/me at each base URL: (first's, second's).

    ``pids`` (base URL to gunicorn master pid): each run also says the
    server CPU time it took per request.

    Alternating the two spreads whatever else the machine does over both
    alike; the order flips every round (first, second, second, first, ...), so
    neither always runs on the heels of the other.
    """
    first_runs, second_runs = [], []
    pair = ((first, first_runs), (second, second_runs))
    for round_ in range(plan.runs):
        for target, runs in pair if round_ % 2 == 0 else pair[::-1]:
            pid = (pids or {}).get(target)
            cpu_before = server_cpu_seconds(pid) if pid else 0.0
            result = run_wrk(
                target + "/api/v1/users/me",
                "bearer.lua",
                token,
                seconds=plan.seconds,
                connections=READ_CONNECTIONS,
            )
            if pid and result.requests:
                spent = server_cpu_seconds(pid) - cpu_before
                result = replace(result, server_cpu_us=spent / result.requests * 1e6)
            runs.append(result)
    return first_runs, second_runs


def measure_reads(plan, user, bare, token, rows, raw) -> None:
    """GET /users/me against the bare view, runs interleaved so drift hits both alike."""
    say("authenticated reads: bare view and user service, interleaved")
    bare_runs, ours_runs = interleaved_reads(plan, token, bare, user)
    check_errors("bare view", bare_runs)
    check_errors("GET /users/me", ours_runs)
    raw["read"] = {
        "bare_runs": [r.to_dict() for r in bare_runs],
        "runs": [r.to_dict() for r in ours_runs],
    }
    rows.append(
        Row(
            "GET /users/me req/s",
            median(r.rate for r in ours_runs),
            ceiling=median(r.rate for r in bare_runs),
            ratio_target=0.80,
        )
    )
    rows.append(
        Row(
            f"GET /users/me p99 ms @{READ_CONNECTIONS}",
            median(r.p99_ms for r in ours_runs),
            ceiling=median(r.p99_ms for r in bare_runs),
            target=20,
            lower_is_better=True,
        )
    )


def measure_reads_against_baseline(plan, user, baseline, token, pids, rows, raw) -> None:
    """GET /users/me served by READS_BASELINE's code and by this one, runs interleaved.

    Beside req/s and p99, the server CPU time per request: on a shared
    machine req/s moves with whatever else runs, the CPU a request costs much less.
    """
    say(f"authenticated reads: {READS_BASELINE} and the current code, interleaved")
    old_runs, new_runs = interleaved_reads(plan, token, baseline, user, pids)
    check_errors(f"GET /users/me at {READS_BASELINE}", old_runs)
    check_errors("GET /users/me", new_runs)
    raw["read_baseline"] = {
        "commit": READS_BASELINE,
        "baseline_runs": [r.to_dict() for r in old_runs],
        "runs": [r.to_dict() for r in new_runs],
    }
    # The ceiling column is the old code's figure, in the same run.
    rows.append(
        Row(
            f"GET /users/me req/s (vs {READS_BASELINE})",
            median(r.rate for r in new_runs),
            ceiling=median(r.rate for r in old_runs),
            ratio_target=READS_BASELINE_TARGET,
        )
    )
    rows.append(
        Row(
            f"GET /users/me p99 ms @{READ_CONNECTIONS} (vs {READS_BASELINE})",
            median(r.p99_ms for r in new_runs),
            ceiling=median(r.p99_ms for r in old_runs),
            ratio_target=1.0,
            lower_is_better=True,
        )
    )
    rows.append(
        Row(
            f"GET /users/me server CPU us/request (vs {READS_BASELINE})",
            median(r.server_cpu_us for r in new_runs),
            ceiling=median(r.server_cpu_us for r in old_runs),
            ratio_target=1 / READS_BASELINE_TARGET,
            lower_is_better=True,
        )
    )


def measure_metrics_cost(plan, on, off, token, rows, raw) -> None:
    """GET /users/me with METRICS_ENABLED true and false, runs interleaved: req/s and p99."""
    say("metrics cost: GET /users/me with metrics off and on, interleaved")
    off_runs, on_runs = interleaved_reads(plan, token, off, on)
    check_errors("GET /users/me, metrics off", off_runs)
    check_errors("GET /users/me, metrics on", on_runs)
    raw["metrics_cost"] = {
        "on_runs": [r.to_dict() for r in on_runs],
        "off_runs": [r.to_dict() for r in off_runs],
    }
    # The ceiling column is the same run with metrics off.
    rows.append(
        Row(
            "GET /users/me req/s, metrics on (vs off)",
            median(r.rate for r in on_runs),
            ceiling=median(r.rate for r in off_runs),
            ratio_target=METRICS_COST_TARGET,
        )
    )
    rows.append(
        Row(
            f"GET /users/me p99 ms @{READ_CONNECTIONS}, metrics on (vs off)",
            median(r.p99_ms for r in on_runs),
            ceiling=median(r.p99_ms for r in off_runs),
        )
    )


def measure_verify(plan, system, token, rows, raw) -> None:
    """Token verification: our verifier against PyJWT alone; PEM parses per request."""
    say("token verification cost and PEM parses per request")
    bare_cost, ours_cost = ceilings.verify_costs(
        token, system.public_key, ISSUER, AUDIENCE, plan.verify_number
    )
    requests = max(20, plan.verify_number // 10)
    parses_at_start, parses_per_request = pem_parses(system, token, requests)
    raw["verify"] = {
        "pyjwt_us": round(bare_cost * 1e6, 1),
        "token_verifier_us": round(ours_cost * 1e6, 1),
        "pem_parses_building_app": parses_at_start,
        "pem_parses_in_requests": parses_per_request,
        "requests": requests,
    }
    rows.append(
        Row(
            "TokenVerifier.verify (us)",
            ours_cost * 1e6,
            ceiling=bare_cost * 1e6,
            ratio_target=1.5,
            lower_is_better=True,
        )
    )
    rows.append(
        Row(
            f"PEM parses in {requests} requests",
            parses_per_request,
            target=0,
            lower_is_better=True,
        )
    )


def pem_parses(system: System, token: str, requests: int) -> tuple[int, int]:
    """PEM parses while building the user app, and while it serves ``requests`` reads."""
    from user_app import create_app

    with ceilings.count_pem_loads() as counter:
        app = create_app(
            {
                "DATABASE_URL": system.user_db,
                "PUBLIC_KEY_PATH": system.public_key,
                "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "text",
            }
        )
        at_start = counter["calls"]
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(requests):
            response = client.get("/api/v1/users/me", headers=headers)
            if response.status_code != 200:
                raise BenchError(f"in-process GET /users/me answered {response.status_code}")
        in_requests = counter["calls"] - at_start
    app.extensions["database"].engine.dispose()
    return at_start, in_requests


#: The costs the sizing guide covers (the default is 12).
BCRYPT_COSTS = (10, 11, 12, 13)


def measure_bcrypt_costs(plan, rows, raw) -> None:
    """Logins per second one core can check at each bcrypt cost: one verification each.

    A login is one bcrypt verification plus milliseconds of the rest; on a
    core, verifications are what bounds it (bcrypt releases the GIL, so
    gunicorn's threads use every core). Measured in this process, one thread.
    """
    from auth_app.passwords import PasswordHasher

    costs = BCRYPT_COSTS if plan.name == "full" else (4, 5)
    raw["bcrypt_verifications_per_second_per_core"] = {}
    say(f"bcrypt: verifications per second on one core at costs {', '.join(map(str, costs))}")
    for cost in costs:
        hasher = PasswordHasher(cost, "bench-pepper")
        hashed = hasher.hash("correct-Horse-battery-9")
        samples = max(3, int(4 * 2 ** (12 - cost)))  # about a second each
        started = time.perf_counter()
        for _ in range(samples):
            hasher.verify("correct-Horse-battery-9", hashed)
        per_second = samples / (time.perf_counter() - started)
        raw["bcrypt_verifications_per_second_per_core"][cost] = round(per_second, 2)
        rows.append(Row(f"bcrypt cost {cost}: logins/s per core", per_second))


def measure_timing(plan, auth, rows, raw) -> None:
    """Answer times that must not tell whether an account exists: login and password/forgot."""
    samples = max(3, plan.register_samples // 2)
    say(f"answer times: login and password/forgot, known against unknown, {samples} each")
    times = timing.answer_times(auth, timing.register_accounts(auth, samples))
    raw["answer_times_ms"] = {
        label: [round(v * 1000, 2) for v in values] for label, values in times.items()
    }
    for label, known, unknown in (
        ("login", "login_wrong_password", "login_unknown"),
        ("password/forgot", "forgot_known", "forgot_unknown"),
    ):
        for name, fraction in (("p50", 0.5), ("p99", 0.99)):
            rows.append(
                Row(
                    f"{label} {name} (ms): known account / unknown",
                    percentile(times[known], fraction) * 1000,
                    ceiling=percentile(times[unknown], fraction) * 1000,
                    ratio_target=1.1,
                    lower_is_better=True,
                )
            )


def measure_latency(plan, auth, auth_engine, user_engine, rows, raw) -> None:
    """One registration at a time: seconds to the profile, and to ``provisioned_at``."""
    say("register -> profile latency")
    to_profile, to_provisioned = pipeline.register_latencies(
        auth, user_engine, auth_engine, plan.register_samples
    )
    raw["register_latency_ms"] = {
        "to_profile": [round(v * 1000, 2) for v in to_profile],
        "to_provisioned": [round(v * 1000, 2) for v in to_provisioned],
    }
    for label, values in (("profile", to_profile), ("provisioned_at", to_provisioned)):
        rows.extend(latency_rows(f"register -> {label}", values))


def measure_revocation(plan, auth, user, account, rows, raw) -> None:
    """One logout at a time: seconds from its 204 until the user service refuses the token."""
    say("logout -> refused at the user service")
    latencies = pipeline.logout_latencies(auth, user, account["email"], plan.register_samples)
    raw["logout_latency_ms"] = [round(v * 1000, 2) for v in latencies]
    rows.extend(latency_rows("logout -> refused at user service", latencies))


def latency_rows(label: str, seconds: list[float]) -> list[Row]:
    """p50 and p99 of event latencies in ms, against the contract's 50 ms and 200 ms."""
    return [
        Row(
            f"{label} {name} (ms)",
            percentile(seconds, fraction) * 1000,
            target=target,
            lower_is_better=True,
        )
        for name, fraction, target in (("p50", 0.5, 50), ("p99", 0.99, 200))
    ]


def measure_pipeline(plan, system, auth_engine, user_engine, rows, raw) -> None:
    """The relay and user worker draining the outbox, beside the same work done bare.

    On empty tables first (both emptied before each measurement), then on
    tables already holding ``plan.prefill_rows`` profiles and processed ids.
    Ceiling and drain alternate, so each pair shares the machine's moment.
    """
    say(f"{plan.drain_rows}-row drains beside the bare ceiling, on empty then full tables")
    prefetch = WORKER_PREFETCH
    groups = pipeline_groups(system)
    runs: dict[str, dict[str, list]] = {}
    for tables in ("empty", "full"):
        if tables == "full":
            drain_ceiling.empty_tables(system.user_db)
            drain_ceiling.prefill(system.user_db, plan.prefill_rows)
        ceilings_, drains, cpu_used = [], [], {"ceilings": [], "drains": []}
        for _ in range(plan.runs):
            if tables == "empty":
                drain_ceiling.empty_tables(system.user_db)
            before = cpu.reading(groups)
            ceilings_.append(
                drain_ceiling.drain_ceiling(
                    system.amqp_url,
                    system.user_db,
                    plan.drain_rows,
                    prefetch=prefetch,
                    window=prefetch * IN_FLIGHT_BATCHES,
                )
            )
            cpu_used["ceilings"].append(cpu.spent(before, cpu.reading(groups)))
            if tables == "empty":
                drain_ceiling.empty_tables(system.user_db)
            # The ceiling carries no user.created answers back: while the drain
            # is timed, the user relay holds them in its outbox; they go after.
            # The CPU time counts from the moment the rows are in the outbox.
            before: dict[str, dict[int, float]] = {}
            with system.paused("user_relay"):
                drains.append(
                    pipeline.drain(
                        auth_engine,
                        user_engine,
                        plan.drain_rows,
                        filled=partial(cpu.read_into, before, groups),
                    )
                )
                cpu_used["drains"].append(cpu.spent(before, cpu.reading(groups)))
            pipeline.wait_for_outbox(user_engine, UserOutbox)
        runs[tables] = {"ceilings": ceilings_, "drains": drains, "cpu": cpu_used}
    raw["pipeline"] = {
        "prefetch": prefetch,
        "window": prefetch * IN_FLIGHT_BATCHES,
        "prefill_rows": plan.prefill_rows,
        **{
            tables: {
                "ceilings": [c.to_dict() for c in found["ceilings"]],
                "drains": [d.to_dict() for d in found["drains"]],
                "cpu_seconds": found["cpu"],
            }
            for tables, found in runs.items()
        },
    }
    for tables, found in runs.items():
        drains, ceilings_ = found["drains"], found["ceilings"]
        suffix = "" if tables == "empty" else f", {plan.prefill_rows:,} rows already"
        rows.append(
            Row(
                f"pipeline drain msg/s ({plan.drain_rows}){suffix}",
                median(d.rate for d in drains),
                ceiling=median(c.rate for c in ceilings_),
                ratio_target=0.8,
            )
        )
        bare_publish = median(c.count / c.publish_s for c in ceilings_)
        rows.append(
            Row(
                "  relay alone msg/s (vs bare pipelined publish)",
                median(d.count / d.published_s for d in drains),
                ceiling=bare_publish,
            )
        )
        rows.append(
            Row("  bare consume+write msg/s", median(c.count / c.consume_s for c in ceilings_))
        )
        rows.extend(cpu_rows(found["cpu"], plan.drain_rows))


def pipeline_groups(system: System) -> dict[str, cpu.Group]:
    """The processes whose CPU time a drain and its ceiling are charged."""
    processes = system.processes
    groups: dict[str, cpu.Group] = {
        name: (lambda pid=processes[name].pid: [pid])
        for name in ("auth_relay", "user_worker", "user_relay", "auth_worker")
    }
    groups["RabbitMQ"] = lambda: cpu.pids_named("beam.smp")
    groups["PostgreSQL"] = lambda: cpu.pids_named("postgres")
    # The bare ceiling runs here; during a drain, only the polling for its end.
    groups["bench"] = lambda: [os.getpid()]
    return groups


def cpu_rows(used: dict[str, list[dict[str, float]]], count: int) -> list[Row]:
    """CPU ms per 1,000 messages, by process group, for the drain beside its ceiling."""
    rows = []
    for group in used["drains"][0]:
        drain_ms = median(run[group] for run in used["drains"]) * 1_000_000 / count
        ceiling_ms = median(run[group] for run in used["ceilings"]) * 1_000_000 / count
        if drain_ms or ceiling_ms:
            rows.append(
                Row(
                    f"  CPU ms per 1,000 messages: {group} (drain; bare beside)",
                    drain_ms,
                    ceiling=ceiling_ms,
                    lower_is_better=True,
                )
            )
    return rows


def system_pids(system: System) -> dict[str, int]:
    """The pid of every process the system started, by name."""
    return {name: process.pid for name, process in system.processes.items()}


def measure_memory(plan, system, auth, token, rows, raw) -> None:
    """RSS of every process after the load, then a run watching for growth."""
    after_load = memory.snapshot(system_pids(system))
    private = memory.private_snapshot(system_pids(system))
    raw["rss_after_load_mb"] = after_load
    raw["private_after_load_mb"] = private
    floor = memory.import_floor_mb(IMPORT_FLOOR)
    raw["import_floor_mb"] = {"modules": IMPORT_FLOOR, "rss": round(floor, 1)}
    for service in ("auth", "user", "bare"):
        workers = {k: v for k, v in after_load.items() if k.startswith(f"{service}/worker-")}
        rows.append(
            Row(
                f"{service} web worker RSS (MB, max)",
                max(workers.values()),
                target=None if service == "bare" else 60,
                lower_is_better=True,
            )
        )
        own = [v for k, v in private.items() if k.startswith(f"{service}/worker-")]
        rows.append(Row(f"  {service} worker private/USS (MB, max)", max(own)))
    rows.append(Row("  import floor RSS (MB)", floor))
    measure_run_memory(plan, system, rows, raw)
    say(f"memory growth run: {plan.growth_seconds:.0f}s of load, workers never recycled")
    # gunicorn.conf.py recycles a worker every ~10,000 requests, which would hide a
    # leak: this instance turns that off so growth, if any, shows.
    steady = system.start_web("user_steady", "user_app:create_app()", "--max-requests", "0")
    stop = threading.Event()
    errors: list[BaseException] = []

    def load():
        try:
            run_wrk(
                steady + "/api/v1/users/me",
                "bearer.lua",
                token,
                seconds=plan.growth_seconds,
                connections=8,
            )
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            stop.set()

    def registrations():
        # A trickle of sign-ups keeps the auth service, relays and workers busy too.
        while not stop.is_set():
            try:
                pipeline.register(auth, "g" + uuid.uuid4().hex[:12])
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
                return
            stop.wait(1.0)

    loader = threading.Thread(target=load)
    trickle = threading.Thread(target=registrations)
    loader.start()
    trickle.start()
    interval = max(0.25, plan.growth_seconds / 60)
    samples = []
    while not stop.is_set():
        samples.append(memory.snapshot(system_pids(system)))
        stop.wait(interval)
    loader.join()
    trickle.join()
    if errors:
        raise BenchError(f"memory run failed: {errors[0]}")
    grown = memory.growth(samples)
    raw["rss_growth_mb"] = grown
    raw["rss_samples"] = len(samples)
    raw["rss_end_mb"] = samples[-1]
    if grown:
        name, most = max(grown.items(), key=lambda item: item[1])
        rows.append(Row(f"most RSS growth (MB, {name})", most, target=2, lower_is_better=True))


def measure_run_memory(plan, system, rows, raw) -> None:
    """RSS, USS and PSS of every process of ``make run`` (honcho included) once it has worked."""
    say("make run system: every Procfile process under honcho, after some registrations")
    measured = memory.measure_run(system, rounds=plan.run_rounds)
    raw["run_memory_mb"] = {name: size.to_dict() for name, size in measured.items()}
    say("make run system, per process:\n" + memory.table(measured))
    for name in memory.SMALL_WORKERS:
        rows.append(
            Row(
                f"{name} RSS (MB)",
                measured[name].rss,
                target=memory.WORKER_TARGET_MB,
                lower_is_better=True,
            )
        )
        rows.append(Row(f"  {name} USS (MB)", measured[name].uss))
        rows.append(Row(f"  {name} PSS (MB)", measured[name].pss))
    total = memory.total(measured)
    rows.append(
        Row(
            "make run total RSS (MB)",
            total.rss,
            target=memory.SYSTEM_TARGET_MB,
            lower_is_better=True,
        )
    )
    rows.append(
        Row(
            "  make run total PSS (MB)",
            total.pss,
            target=memory.SYSTEM_TARGET_MB,
            lower_is_better=True,
        )
    )
    rows.append(Row("  make run total USS (MB)", total.uss))


def measure_recycling(plan, system, token, rows, raw) -> None:
    """GET /users/me while every worker is recycled several times and the master reloads.

    A user service that recycles a worker every ~300 requests (max_requests),
    and gets ``kill -HUP`` (a reload: new workers, old ones stopped) twice:
    a worker that goes must finish its requests and close its kept-alive
    connections cleanly. Socket errors and non-2xx answers: target 0.
    """
    say("recycling: GET /users/me while workers recycle every ~300 requests, HUP twice")
    base = system.start_web(
        "user_recycling",
        "user_app:create_app()",
        "--max-requests",
        "300",
        "--max-requests-jitter",
        "50",
        env={"LOG_LEVEL": "info"},
    )
    master = system.processes["user_recycling"]
    seconds = plan.seconds * 3

    def reload_twice() -> None:
        for _ in range(2):
            time.sleep(seconds / 3)
            master.send_signal(signal.SIGHUP)

    reloads = threading.Thread(target=reload_twice)
    reloads.start()
    result = run_wrk(
        base + "/api/v1/users/me",
        "bearer.lua",
        token,
        seconds=seconds,
        connections=READ_CONNECTIONS,
    )
    reloads.join()
    boots = (system.tmp / "user_recycling.log").read_text().count("Booting worker")
    system.stop("user_recycling")
    raw["recycling"] = {**result.to_dict(), "worker_boots": boots}
    rows.append(Row(f"recycling: workers started (2 HUPs, {seconds:.0f}s)", boots))
    rows.append(Row("  socket errors and non-2xx", result.errors, target=0, lower_is_better=True))


def check_errors(what: str, runs) -> None:
    """A run answered with errors measured the wrong thing: stop with a clear message.

    Any non-2xx answer is. Socket errors are not, up to 1 in 100: on this
    shared machine a load generator's read can time out. (A worker's recycling
    costs none: the recycling section holds that to 0.)
    """
    bad = [r for r in runs if r.non_2xx or r.errors * 100 > r.requests or not r.requests]
    if bad:
        raise BenchError(f"{what}: {bad[0].errors} errors in {bad[0].requests} requests")


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m bench [--smoke] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one short iteration of each")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="measure only this section (repeatable); the note's table needs a whole run",
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    started = time.monotonic()
    try:
        results = run(plan, frozenset(args.only or SECTIONS))
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    results["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{plan.name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(render_table(results))
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
