"""``python -m bench --only scale``: the hot paths at 1,000 and at 1,000,000 users.

Fresh databases of both services are filled in bulk, by the database itself
(``INSERT ... SELECT`` over ``generate_series``: a million rows in seconds,
not the hours a million registrations would take), first to a thousand users
and then, in the same run, to a million:

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
relay and worker. Each is printed with p50, p99 and req/s at both sizes and
the ratio large/small.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from bench import pipeline
from bench.load import LoadResult, run_wrk
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
    """One system, measured at each size in turn."""

    def __init__(self, plan, auth: str, user: str, auth_engine, user_engine):
        self.plan = plan
        self.auth = auth
        self.user = user
        self.auth_engine = auth_engine
        self.user_engine = user_engine

    def admin_token(self) -> str:
        """An administrator's access token (the bench's own account, made admin)."""
        name = "scaleadmin" + uuid.uuid4().hex[:6]
        account = pipeline.register(self.auth, name)
        pipeline.wait_for_profile(self.user_engine, account["id"], timeout=60)
        with self.auth_engine.begin() as db:
            db.execute(
                text('UPDATE users SET roles = \'["user", "admin"]\' WHERE id = :id'),
                {"id": account["id"]},
            )
        return pipeline.login(self.auth, account["email"])["access_token"]

    def refresh_tokens(self, count: int, email: str) -> list[str]:
        return [pipeline.login(self.auth, email)["refresh_token"] for _ in range(count)]

    def wrk(self, path: str, script: str, arg: str, *, connections: int, threads: int = 2):
        return run_wrk(
            self.auth + path if path.startswith("/api/v1/auth") else self.user + path,
            script,
            arg,
            seconds=self.plan.seconds,
            connections=connections,
            threads=threads,
        )

    def measure(self, users: int, raw: dict) -> dict[str, LoadResult | float]:
        """Every measure at the size the databases now hold."""
        probe = 7 if users > 7 else 0
        email = user_email(probe)
        login_body = json.dumps({"email": email, "password": PASSWORD})
        token = pipeline.login(self.auth, email)["access_token"]
        admin = self.admin_token()
        listing = "/api/v1/users"
        deep_offset = (DEEP_PAGE - 1) * PAGE_SIZE
        cursor = self.cursor_at(admin, min(deep_offset, users - PAGE_SIZE))
        results: dict[str, LoadResult | float] = {}
        concurrency = 8
        results["login"] = self.wrk(
            "/api/v1/auth/login", "post_json.lua", login_body, connections=concurrency
        )
        # One per connection, and one for the request wrk builds and never sends.
        tokens = self.refresh_tokens(concurrency + 1, email)
        results["refresh"] = self.wrk(
            "/api/v1/auth/refresh",
            "refresh_chain.lua",
            ",".join(tokens),
            connections=concurrency,
            threads=1,
        )
        queries = {
            "GET /users/me": ("/api/v1/users/me", token),
            "list ?page=1": (f"{listing}?page=1", admin),
            f"list ?page={DEEP_PAGE}": (f"{listing}?page={DEEP_PAGE}", admin),
            f"list ?after=<page {DEEP_PAGE}>": (f"{listing}?after={cursor}", admin),
            "list ?q=<username tag>": (f"{listing}?q={tag(probe)}", admin),
            "list ?q=<surname, 1 in 50>": (f"{listing}?q=_{LAST[3]}_", admin),
            "list ?q=<surname>&after=": (f"{listing}?q=_{LAST[3]}_&after=", admin),
            "list ?q=<company domain>": (f"{listing}?q=@corp{probe // PER_DOMAIN}.example", admin),
        }
        for name, (path, bearer) in queries.items():
            results[name] = self.wrk(path, "bearer.lua", bearer, connections=16)
        results["drain msg/s"] = self.drain(raw)
        plans = explain_plans(self.user_engine, probe, decode_cursor(cursor))
        raw.setdefault("scale", {}).setdefault("plans", {})[str(users)] = plans
        for name, result in results.items():
            if isinstance(result, LoadResult) and result.errors:
                raise BenchError(f"scale {name} at {users:,} users: {result}")
        return results

    def cursor_at(self, admin: str, offset: int) -> str:
        """The cursor that continues the listing after ``offset`` profiles."""
        page = offset // PAGE_SIZE
        _, metadata = _get(f"{self.user}/api/v1/users?page={max(page, 1)}", admin)
        return metadata["cursor"]

    def drain(self, raw: dict) -> float:
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


def measure_scale(plan, rows: list[Row], raw: dict, sizes: tuple[int, int]) -> None:
    """Both sizes, in one run, on one fresh system; a row per measure with the ratio."""
    from common.db import make_engine

    small, large = sizes
    with System(bcrypt_rounds=4) as system:
        say("scale: starting the system on fresh databases")
        auth = system.start_web("scale_auth", "auth_app:create_app()")
        user = system.start_web("scale_user", "user_app:create_app()")
        for name, module in (
            ("scale_auth_relay", ("workers.relay", "auth")),
            ("scale_user_relay", ("workers.relay", "user")),
            ("scale_auth_worker", ("workers.auth_worker",)),
            ("scale_user_worker", ("workers.user_worker",)),
        ):
            system.start_worker(name, *module)
        auth_engine, user_engine = make_engine(system.auth_db), make_engine(system.user_db)
        try:
            first = pipeline.register(auth, "scalefirst" + uuid.uuid4().hex[:6])
            pipeline.wait_for_profile(user_engine, first["id"], timeout=60)
            with auth_engine.connect() as db:
                password_hash = db.scalar(
                    text("SELECT password_hash FROM users WHERE id = :id"), {"id": first["id"]}
                )
            measure = ScaleMeasure(plan, auth, user, auth_engine, user_engine)
            figures = {}
            filled = 0
            for users in (small, large):
                started = time.perf_counter()
                fill_auth(auth_engine, filled, users, password_hash)
                fill_user(user_engine, filled, users)
                loaded = time.perf_counter() - started
                analyze(auth_engine)
                analyze(user_engine)
                say(f"scale: {users:,} users loaded in {loaded:.0f}s (+ analyze); measuring")
                raw.setdefault("scale", {})[str(users)] = {"load_s": round(loaded, 1)}
                figures[users] = measure.measure(users, raw)
                filled = users
                system.check_alive()
        finally:
            auth_engine.dispose()
            user_engine.dispose()
    report(figures, small, large, rows, raw)


#: Every measure at a million users within 1.5x of its figure at a thousand.
SCALE_TARGET = 1.5


def report(figures: dict, small: int, large: int, rows: list[Row], raw: dict) -> None:
    """A row per measure and figure: the large size's value, the small's as the ceiling."""
    little, big = figures[small], figures[large]
    sizes = f"{large:,} vs {small:,}"
    for name, result in little.items():
        large_result = big[name]
        if isinstance(result, LoadResult):
            raw["scale"][name] = {"small": result.to_dict(), "large": large_result.to_dict()}
            rows.append(
                Row(
                    f"scale {name} req/s ({sizes})",
                    large_result.rate,
                    ceiling=result.rate,
                    ratio_target=round(1 / SCALE_TARGET, 2),
                )
            )
            rows.append(Row("  p50 ms", large_result.p50_ms, ceiling=result.p50_ms))
            rows.append(
                Row(
                    "  p99 ms",
                    large_result.p99_ms,
                    ceiling=result.p99_ms,
                    ratio_target=SCALE_TARGET,
                    lower_is_better=True,
                )
            )
        else:
            raw["scale"][name] = {"small": round(result, 1), "large": round(large_result, 1)}
            rows.append(
                Row(
                    f"scale {name} ({sizes})",
                    large_result,
                    ceiling=result,
                    ratio_target=round(1 / SCALE_TARGET, 2),
                )
            )
