"""``python -m bench --only scale``: the hot paths at 1,000 and at 1,000,000 users.

Fresh databases of both services are filled in bulk, by the database itself
(``INSERT ... SELECT`` over ``generate_series``: a million rows in seconds,
not the hours a million registrations would take). Each size has a system of
its own (databases, vhost, web and worker processes), both running in the
same run:

=========================  ======  ==========
what                       small   large
=========================  ======  ==========
users and profiles          1,000   1,000,000
login sessions              3,000   3,000,000
refresh tokens              3,000   3,000,000
processed message ids       5,000   5,000,000
published outbox rows       1,000   1,000,000
=========================  ======  ==========

Sessions and their refresh tokens come in every state: live, revoked, expired,
and live with the token already rotated. Every user has the same password
hash (of :data:`bench.system.PASSWORD`, bcrypt cost 4 as the system runs here,
so a login shows the lookup, not the hash). Usernames are ``first_last_hex``
with a six-digit hex tag unique to the user (up to 16 million), emails
``first.last.hex@corpN.example`` with twenty users at each ``corpN``, as at a
customer's company.

At each size the same measures run: login, refresh, ``GET /users/me``, the
admin listing by page (``page=1``, ``page=1000``) and by cursor at the depth
of page 1000, ``q`` = one user's tag, ``q`` = a surname shared by one user in
fifty, ``q`` = one company's domain, and the drain of ``user.sync`` rows through
relay and worker. The HTTP measures run several times at each size, the two
sizes taking turns, and each figure is the median of its runs: a burst of
other work on the machine lands on both sizes, not on one of them. Each is
printed with p50, p99 and req/s at both sizes and the ratio large/small.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from bench import pipeline
from bench.load import LoadResult, median_result, run_wrk
from bench.report import Row, say
from bench.system import PASSWORD, BenchError, System
from user_app.administration import Position, decode_cursor, listing, search_conditions

FIRST = "ada grace alan edsger barbara donald margaret ken dennis niklaus".split()
LAST = (
    "lovelace hopper turing dijkstra liskov knuth hamilton thompson ritchie wirth "
    "backus kay lamport perlis hoare milner floyd karp rabin scott "
    "allen cerf kahn codd gray engelbart sutherland bachman simon newell "
    "mccarthy minsky feigenbaum reddy hellman diffie rivest shamir adleman kahan "
    "cook hartmanis stearns tarjan hopcroft valiant yao pnueli clarke emerson"
).split()
#: Users per company domain, at every size.
PER_DOMAIN = 20
#: How the listing's deep page is reached by cursor: the same depth as ?page=1000.
DEEP_PAGE = 1000
PAGE_SIZE = 20


def _sql_list(words) -> str:
    return "ARRAY[" + ", ".join(f"'{word}'" for word in words) + "]"


#: The parts of user ``i``'s names, as SQL over ``i`` (shared by both databases).
#: The fill statements are assembled from these constants only (hence the
#: ``noqa: S608``); every value from outside is a bound parameter.
# A bijection of 0..2**24-1 (an odd multiplier, modulo a power of two): unique tags.
TAG = "lpad(to_hex((i::bigint * 2654435761) % 16777216), 6, '0')"
FIRST_NAME = f"({_sql_list(FIRST)})[1 + i % {len(FIRST)}]"
LAST_NAME = f"({_sql_list(LAST)})[1 + (i / {len(FIRST)}) % {len(LAST)}]"
USER_ID = "md5('user' || i)::uuid::text"
USERNAME = f"{FIRST_NAME} || '_' || {LAST_NAME} || '_' || {TAG}"
EMAIL = (
    f"{FIRST_NAME} || '.' || {LAST_NAME} || '.' || {TAG}"
    f" || '@corp' || (i / {PER_DOMAIN}) || '.example'"
)
# Oldest first, one a second back from a day ago: the listing's order is stable.
CREATED = "now() - interval '1 day' - make_interval(secs => 2000000 - i)"


def tag(i: int) -> str:
    """The hex tag in user ``i``'s username and email (``TAG`` in Python)."""
    return format((i * 2654435761) % 16777216, "06x")


def fill_auth(engine: Engine, start: int, stop: int, password_hash: str) -> None:
    """Users ``start..stop-1`` and their sessions, tokens and published outbox rows."""
    ranges = {"start": start, "stop": stop - 1}
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO users (id, email, username, username_key, password_hash, roles,"  # noqa: S608
                " is_active, email_verified, mfa_enabled, created_at, updated_at)"
                f" SELECT {USER_ID}, {EMAIL}, {USERNAME}, lower({USERNAME}), :hash,"
                f" '[\"user\"]', true, true, false, {CREATED}, {CREATED}"
                " FROM generate_series(:start, :stop) AS i"
            ),
            {**ranges, "hash": password_hash},
        )
        # Three sessions per user, j = 0..2, in four states by (i + j) % 4:
        # 0 live, 1 revoked, 2 expired, 3 live with its refresh token rotated.
        db.execute(
            text(
                "INSERT INTO login_sessions (id, user_id, created_at, expires_at, revoked_at,"  # noqa: S608
                " ip, user_agent, last_used_at, amr)"
                f" SELECT md5('session' || i || '.' || j)::uuid::text, {USER_ID},"
                " now() - interval '2 days',"
                " CASE WHEN (i + j) % 4 = 2 THEN now() - interval '1 hour'"
                " ELSE now() + interval '28 days' END,"
                " CASE WHEN (i + j) % 4 = 1 THEN now() - interval '1 day' END,"
                " '192.0.2.' || (i % 250), 'Bench/1.0 (scale)', now() - interval '1 day',"
                " '[\"pwd\"]'"
                " FROM generate_series(:start, :stop) AS i, generate_series(0, 2) AS j"
            ),
            ranges,
        )
        db.execute(
            text(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at,"
                " rotated_at)"
                " SELECT md5('rt' || i || '.' || j) || md5('rt2' || i || '.' || j),"
                " md5('session' || i || '.' || j)::uuid::text, now() - interval '1 day',"
                " CASE WHEN (i + j) % 4 = 2 THEN now() - interval '1 hour'"
                " ELSE now() + interval '13 days' END,"
                " CASE WHEN (i + j) % 4 = 3 THEN now() - interval '1 day' END"
                " FROM generate_series(:start, :stop) AS i, generate_series(0, 2) AS j"
            ),
            ranges,
        )
        db.execute(
            text(
                "INSERT INTO outbox (message_id, exchange, routing_key, source, body,"  # noqa: S608
                " created_at, published_at, attempts)"
                " SELECT md5('outbox' || i)::uuid::text, 'user_events', 'user.sync', 'auth',"
                f" json_build_object('type', 'user.sync', 'source', 'auth', 'data',"
                f" json_build_object('user_id', {USER_ID}, 'action', 'created',"
                f" 'email', {EMAIL}, 'username', {USERNAME}))::text,"
                " now() - interval '2 hours', now() - interval '2 hours', 1"
                " FROM generate_series(:start, :stop) AS i"
            ),
            ranges,
        )


def fill_user(engine: Engine, start: int, stop: int) -> None:
    """Profiles of users ``start..stop-1`` and five processed message ids per user."""
    ranges = {"start": start, "stop": stop - 1}
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO profiles (id, email, username, display_name, roles, is_active,"  # noqa: S608
                " email_verified, created_at, updated_at, synced_at)"
                f" SELECT {USER_ID}, {EMAIL}, {USERNAME},"
                f" initcap({FIRST_NAME}) || ' ' || initcap({LAST_NAME}),"
                f" '[\"user\"]', true, true, {CREATED}, {CREATED}, {CREATED}"
                " FROM generate_series(:start, :stop) AS i"
            ),
            ranges,
        )
        db.execute(
            text(
                "INSERT INTO processed_messages (message_id, message_type, processed_at)"
                " SELECT md5('processed' || i || '.' || j)::uuid::text, 'user.sync',"
                " now() - make_interval(secs => (i * 5 + j) % 500000)"
                " FROM generate_series(:start, :stop) AS i, generate_series(0, 4) AS j"
            ),
            ranges,
        )


def analyze(engine: Engine) -> None:
    """VACUUM ANALYZE, then CHECKPOINT: fresh statistics and visibility map, as autovacuum
    would leave them, and the load's gigabytes of dirty pages written out before the
    measures start instead of during them."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.execute(text("VACUUM ANALYZE"))
        db.execute(text("CHECKPOINT"))


class Explain(Executable, ClauseElement):
    """``EXPLAIN (ANALYZE, BUFFERS)`` of a statement, its parameters bound as the app binds them."""

    inherit_cache = False

    def __init__(self, statement: Any):
        self.statement = statement


@compiles(Explain, "postgresql")
def _explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN (ANALYZE, BUFFERS) " + compiler.process(element.statement, **kw)


#: The trigram indexes of user migration 0004, dropped (in a rolled-back
#: transaction) to show the search's plan before them.
TRIGRAM_INDEXES = (
    "ix_profiles_email_trgm",
    "ix_profiles_username_trgm",
    "ix_profiles_display_name_trgm",
)


def explain_plans(engine: Engine, probe: int, after: Position) -> dict[str, str]:
    """The listing's plans at this size: each search with and without its indexes, the
    deep page by OFFSET and by cursor."""
    from user_app.models import Profile

    def search(q: str) -> list[Any]:
        return [
            select(func.count()).select_from(Profile).where(*search_conditions(q, None)),
            listing(q).limit(PAGE_SIZE),
        ]

    queries = {
        "q=<username tag>": search(tag(probe)),
        "q=<company domain>": search(f"@corp{probe // PER_DOMAIN}.example"),
    }
    plans: dict[str, str] = {}
    with engine.connect() as db:
        for name, statements in queries.items():
            plans[f"{name}, trigram indexes"] = _plans(db, statements)
            db.rollback()
            # Dropped in a transaction that is rolled back: the indexes stay.
            for index in TRIGRAM_INDEXES:
                db.execute(text(f"DROP INDEX {index}"))
            plans[f"{name}, no trigram index (before)"] = _plans(db, statements)
            db.rollback()
        deep = (DEEP_PAGE - 1) * PAGE_SIZE
        plans[f"page {DEEP_PAGE} by OFFSET (before)"] = _plans(
            db, [listing().offset(deep).limit(PAGE_SIZE)]
        )
        keyset = listing().where(
            tuple_(Profile.created_at, Profile.id) > tuple_(after.created_at, after.id)
        )
        plans[f"page {DEEP_PAGE} by cursor"] = _plans(db, [keyset.limit(PAGE_SIZE + 1)])
        db.rollback()
    return plans


def _plans(db: Any, statements: list[Any]) -> str:
    return "\n\n".join(
        "\n".join(row[0] for row in db.execute(Explain(statement))) for statement in statements
    )


def _get(url: str, token: str) -> tuple[list, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return json.loads(response.read()), json.loads(response.headers["X-Pagination"])


def user_email(i: int) -> str:
    """User ``i``'s email, as :data:`EMAIL` writes it."""
    first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
    return f"{first}.{last}.{tag(i)}@corp{i // PER_DOMAIN}.example"


class ScaleMeasure:
    """One system at one size: its processes, its databases, and each measure's run."""

    def __init__(self, plan, system: System, users: int):
        from common.db import make_engine

        self.plan = plan
        self.users = users
        self.system = system
        self.auth = system.start_web(f"scale_auth_{users}", "auth_app:create_app()")
        self.user = system.start_web(f"scale_user_{users}", "user_app:create_app()")
        for name, module in (
            ("auth_relay", ("workers.relay", "auth")),
            ("user_relay", ("workers.relay", "user")),
            ("auth_worker", ("workers.auth_worker",)),
            ("user_worker", ("workers.user_worker",)),
        ):
            system.start_worker(f"scale_{name}_{users}", *module)
        self.auth_engine = make_engine(system.auth_db)
        self.user_engine = make_engine(system.user_db)
        self.probe = 7 if users > 7 else 0
        self.email = user_email(self.probe)
        self.load_s = 0.0
        self.cursor = ""
        self.admin_email = ""
        self.paths: dict[str, tuple[str, str]] = {}

    def close(self) -> None:
        self.auth_engine.dispose()
        self.user_engine.dispose()

    def fill(self) -> None:
        """Load ``users`` users (and all that goes with them) in bulk, then VACUUM ANALYZE."""
        first = pipeline.register(self.auth, "scalefirst" + uuid.uuid4().hex[:6])
        pipeline.wait_for_profile(self.user_engine, first["id"], timeout=60)
        with self.auth_engine.connect() as db:
            password_hash = db.scalar(
                text("SELECT password_hash FROM users WHERE id = :id"), {"id": first["id"]}
            )
        started = time.perf_counter()
        fill_auth(self.auth_engine, 0, self.users, password_hash)
        fill_user(self.user_engine, 0, self.users)
        self.load_s = time.perf_counter() - started
        analyze(self.auth_engine)
        analyze(self.user_engine)
        say(f"scale: {self.users:,} users loaded in {self.load_s:.0f}s (+ analyze)")

    def make_admin(self) -> str:
        """Register the bench's own account, make it an administrator; return its email."""
        name = "scaleadmin" + uuid.uuid4().hex[:6]
        account = pipeline.register(self.auth, name)
        pipeline.wait_for_profile(self.user_engine, account["id"], timeout=60)
        with self.auth_engine.begin() as db:
            db.execute(
                text('UPDATE users SET roles = \'["user", "admin"]\' WHERE id = :id'),
                {"id": account["id"]},
            )
        return account["email"]

    def access_token(self, email: str) -> str:
        """A fresh access token of ``email``'s: each run logs in anew, as the runs of
        both sizes together outlast an access token's lifetime."""
        return pipeline.login(self.auth, email)["access_token"]

    def prepare(self) -> None:
        """The administrator, cursor and paths every measure of this size uses."""
        self.admin_email = self.make_admin()
        listing = "/api/v1/users"
        deep_offset = (DEEP_PAGE - 1) * PAGE_SIZE
        admin = self.access_token(self.admin_email)
        self.cursor = self.cursor_at(admin, min(deep_offset, self.users - PAGE_SIZE))
        probe = self.probe
        # Each path with whose token it is read: the probe user's own, or the administrator's.
        self.paths = {
            "GET /users/me": ("/api/v1/users/me", self.email),
            "list ?page=1": (f"{listing}?page=1", self.admin_email),
            f"list ?page={DEEP_PAGE}": (f"{listing}?page={DEEP_PAGE}", self.admin_email),
            f"list ?after=<page {DEEP_PAGE}>": (f"{listing}?after={self.cursor}", self.admin_email),
            "list ?q=<username tag>": (f"{listing}?q={tag(probe)}", self.admin_email),
            "list ?q=<surname, 1 in 50>": (f"{listing}?q=_{LAST[3]}_", self.admin_email),
            "list ?q=<surname>&after=": (f"{listing}?q=_{LAST[3]}_&after=", self.admin_email),
            "list ?q=<company domain>": (
                f"{listing}?q=@corp{probe // PER_DOMAIN}.example",
                self.admin_email,
            ),
        }

    def wrk(self, path: str, script: str, arg: str, *, connections: int, threads: int = 2):
        return run_wrk(
            self.auth + path if path.startswith("/api/v1/auth") else self.user + path,
            script,
            arg,
            seconds=self.plan.seconds,
            connections=connections,
            threads=threads,
        )

    def run(self, name: str) -> LoadResult:
        """One wrk run of the measure called ``name`` (one of :data:`MEASURES`)."""
        concurrency = 8
        if name == "login":
            body = json.dumps({"email": self.email, "password": PASSWORD})
            result = self.wrk("/api/v1/auth/login", "post_json.lua", body, connections=concurrency)
        elif name == "refresh":
            # One per connection, and one for the request wrk builds and never sends;
            # each run rotates them, so every run starts from fresh ones.
            tokens = [
                pipeline.login(self.auth, self.email)["refresh_token"]
                for _ in range(concurrency + 1)
            ]
            result = self.wrk(
                "/api/v1/auth/refresh",
                "refresh_chain.lua",
                ",".join(tokens),
                connections=concurrency,
                threads=1,
            )
        else:
            path, reader = self.paths[name]
            result = self.wrk(path, "bearer.lua", self.access_token(reader), connections=16)
        if result.errors:
            raise BenchError(f"scale {name} at {self.users:,} users: {result}")
        return result

    def cursor_at(self, admin: str, offset: int) -> str:
        """The cursor that continues the listing after ``offset`` profiles."""
        page = offset // PAGE_SIZE
        _, metadata = _get(f"{self.user}/api/v1/users?page={max(page, 1)}", admin)
        return metadata["cursor"]

    def drain(self) -> float:
        """Messages per second of ``plan.drain_rows`` ``user.sync`` rows, outbox to profile."""
        count = self.plan.drain_rows
        ids = pipeline.fill_outbox(self.auth_engine, count)
        started = time.perf_counter()
        remaining = set(ids)
        deadline = started + 600
        while remaining:
            if time.perf_counter() > deadline:
                raise BenchError(f"the drain left {len(remaining)} of {count} rows after 600 s")
            time.sleep(0.1)
            with self.user_engine.connect() as db:
                found = db.execute(
                    text("SELECT id FROM profiles WHERE id = ANY(:ids)"), {"ids": list(remaining)}
                )
                remaining -= {row[0] for row in found}
        return count / (time.perf_counter() - started)


#: The HTTP measures, in the order they run.
MEASURES = (
    "login",
    "refresh",
    "GET /users/me",
    "list ?page=1",
    f"list ?page={DEEP_PAGE}",
    f"list ?after=<page {DEEP_PAGE}>",
    "list ?q=<username tag>",
    "list ?q=<surname, 1 in 50>",
    "list ?q=<surname>&after=",
    "list ?q=<company domain>",
)


def taking_turns(measures: list[ScaleMeasure], rounds: int) -> Iterator[ScaleMeasure]:
    """Each size once a round, the order flipping every round (small large, large small, ...)."""
    for round_ in range(rounds):
        yield from measures if round_ % 2 == 0 else measures[::-1]


def measure_scale(plan, rows: list[Row], raw: dict, sizes: tuple[int, int]) -> None:
    """Both sizes side by side, each on a system of its own, their runs interleaved.

    Every measure runs ``plan.runs`` times at each size, the sizes taking
    turns (small, large, large, small, ...), so whatever else the machine does
    meanwhile falls on both alike; each figure is the median of its runs.
    """
    small, large = sizes
    with System(bcrypt_rounds=4) as small_system, System(bcrypt_rounds=4) as large_system:
        say("scale: starting a system of fresh databases for each size")
        measures = [ScaleMeasure(plan, small_system, small)]
        try:
            measures.append(ScaleMeasure(plan, large_system, large))
            for measure in measures:
                measure.fill()
                raw.setdefault("scale", {})[str(measure.users)] = {
                    "load_s": round(measure.load_s, 1)
                }
                measure.prepare()
            say(f"scale: measuring, {plan.runs} runs at each size, interleaved")
            runs: dict[str, dict[int, list[LoadResult]]] = {}
            for name in MEASURES:
                runs[name] = {small: [], large: []}
                for measure in taking_turns(measures, plan.runs):
                    runs[name][measure.users].append(measure.run(name))
            # The drains take turns too. Each leaves its rows: by its last drain
            # the small system holds its size plus twice drain_rows users.
            drain_runs: dict[int, list[float]] = {small: [], large: []}
            for measure in taking_turns(measures, plan.runs):
                drain_runs[measure.users].append(measure.drain())
            for measure in measures:
                after = decode_cursor(measure.cursor)
                plans = explain_plans(measure.user_engine, measure.probe, after)
                raw["scale"].setdefault("plans", {})[str(measure.users)] = plans
                measure.system.check_alive()
        finally:
            for measure in measures:
                measure.close()
    report(runs, drain_runs, small, large, rows, raw)


#: Every measure at a million users within 1.5x of its figure at a thousand.
SCALE_TARGET = 1.5


def report(
    runs: dict[str, dict[int, list[LoadResult]]],
    drains: dict[int, list[float]],
    small: int,
    large: int,
    rows: list[Row],
    raw: dict,
) -> None:
    """A row per measure and figure: the large size's median, the small's as the ceiling."""
    sizes = f"{large:,} vs {small:,}"
    for name, by_size in runs.items():
        little, big = median_result(by_size[small]), median_result(by_size[large])
        raw["scale"][name] = {
            "small": [run.to_dict() for run in by_size[small]],
            "large": [run.to_dict() for run in by_size[large]],
        }
        rows.append(
            Row(
                f"scale {name} req/s ({sizes})",
                big.rate,
                ceiling=little.rate,
                ratio_target=round(1 / SCALE_TARGET, 2),
            )
        )
        rows.append(Row("  p50 ms", big.p50_ms, ceiling=little.p50_ms))
        rows.append(
            Row(
                "  p99 ms",
                big.p99_ms,
                ceiling=little.p99_ms,
                ratio_target=SCALE_TARGET,
                lower_is_better=True,
            )
        )
    raw["scale"]["drain msg/s"] = {
        "small": [round(rate, 1) for rate in drains[small]],
        "large": [round(rate, 1) for rate in drains[large]],
    }
    rows.append(
        Row(
            f"scale drain msg/s ({sizes})",
            statistics.median(drains[large]),
            ceiling=statistics.median(drains[small]),
            ratio_target=round(1 / SCALE_TARGET, 2),
        )
    )
