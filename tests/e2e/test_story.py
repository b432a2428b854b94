"""The whole story, over HTTP only, against the Procfile's real processes.

Each test is one chapter a user or an operator lives through; what crosses
from one service to the other travels as events through the relays and
workers, so those steps poll until the other side has caught up.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import jwt
import pyotp
import pytest
from sqlalchemy import create_engine, text

from tests.e2e.client import call, poll
from tests.e2e.conftest import PROCESSES, REUSE_GRACE_SECONDS

# The whole system under honcho: long, and left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

API_AUTH = "/api/v1/auth"
API_USERS = "/api/v1/users"

# bcrypt's modular crypt format at any cost: every hash, stored or not (a
# registration that lost a race never stored its hash, and a log may still hold it).
BCRYPT_HASH = re.compile(r"\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}")


class Story:
    """The user-level actions of the story; remembers every secret it handled."""

    def __init__(self, system):
        self.system = system
        self.secrets: set[str] = set()

    def auth(self, method, path, **kwargs):
        """A request to the auth service."""
        return call(method, self.system.auth + path, **kwargs)

    def user(self, method, path, **kwargs):
        """A request to the user service."""
        return call(method, self.system.user + path, **kwargs)

    def register(self, label: str) -> dict:
        """Register a new person; returns the user object with its ``password`` added."""
        name = f"{label}_{uuid.uuid4().hex[:8]}"
        password = f"correct-Horse-{uuid.uuid4().hex[:12]}"
        self.secrets.add(password)
        answer = self.auth(
            "POST",
            f"{API_AUTH}/register",
            json={"email": f"{name}@example.com", "username": name, "password": password},
        )
        assert answer.status == 201, answer.json
        return {**answer.json, "password": password}

    def try_login(self, person: dict):
        """Log in by email; returns the answer whatever it is."""
        answer = self.auth(
            "POST",
            f"{API_AUTH}/login",
            json={"email": person["email"], "password": person["password"]},
        )
        if answer.status == 200:
            self.secrets.update((answer.json["access_token"], answer.json["refresh_token"]))
        return answer

    def login(self, person: dict) -> dict:
        """Log in by email; returns the token pair."""
        answer = self.try_login(person)
        assert answer.status == 200, answer.json
        return answer.json

    def refresh(self, refresh_token: str):
        """Trade a refresh token for a new pair; returns the answer."""
        answer = self.auth("POST", f"{API_AUTH}/refresh", json={"refresh_token": refresh_token})
        if answer.status == 200:
            self.secrets.update((answer.json["access_token"], answer.json["refresh_token"]))
        return answer


@pytest.fixture(scope="module")
def story(system):
    """The story's actions against the running system."""
    return Story(system)


@pytest.fixture(scope="module")
def auth_database(system):
    """An engine on the auth service's database, for what only the database shows."""
    engine = create_engine(system.env["AUTH_DATABASE_URL"], hide_parameters=True)
    yield engine
    engine.dispose()


def insert_waiters(engine, table: str) -> int:
    """How many INSERTs into ``table`` of this database are waiting for a lock right now."""
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.relation = CAST(:table AS regclass) AND NOT l.granted"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND a.query ILIKE 'INSERT INTO ' || :table || '%'"
            ),
            {"table": table},
        ).scalar_one()


@pytest.fixture(scope="module")
def admin(story, system) -> dict:
    """An administrator made the operator's way: register, then ``users grant-role`` on the CLI."""
    person = story.register("admin")
    before = story.login(person)["access_token"]
    assert story.user("GET", API_USERS, token=before).status == 403
    granted = system.cli("users", "grant-role", person["email"], "admin")
    assert granted.returncode == 0, granted.stderr
    assert "admin" in granted.stdout
    pair = story.login(person)
    assert "admin" in jwt.decode(pair["access_token"], options={"verify_signature": False})["roles"]
    return {**person, "token": pair["access_token"]}


def profile_synced(story: Story, admin: dict, user_id: str):
    """Wait until the user service holds the profile (its ``created`` sync was consumed)."""
    answer = poll(
        lambda: story.user("GET", f"{API_USERS}/{user_id}", token=admin["token"]),
        lambda a: a.status == 200,
    )
    assert answer.status == 200, answer.json
    return answer.json


def test_a_new_user_registers_logs_in_and_is_known_at_both_services(story):
    alice = story.register("alice")
    pair = story.login(alice)
    assert pair["token_type"] == "Bearer"

    me = story.auth("GET", f"{API_AUTH}/me", token=pair["access_token"])
    assert me.status == 200
    assert me.json["id"] == alice["id"] and me.json["roles"] == ["user"]

    profile = story.user("GET", f"{API_USERS}/me", token=pair["access_token"])
    assert profile.status == 200
    assert (profile.json["id"], profile.json["email"]) == (alice["id"], alice["email"])
    assert profile.headers["x-request-id"]


def test_a_profile_edit_is_kept_by_the_user_service(story):
    bob = story.register("bob")
    token = story.login(bob)["access_token"]

    edited = story.user(
        "PATCH",
        f"{API_USERS}/me",
        json={"display_name": "Bob B.", "bio": "Builds things."},
        token=token,
    )
    assert edited.status == 200
    again = story.user("GET", f"{API_USERS}/me", token=token)
    assert (again.json["display_name"], again.json["bio"]) == ("Bob B.", "Builds things.")
    assert story.user("PATCH", f"{API_USERS}/me", json={"role": "x"}, token=token).status == 422


def test_refresh_rotates_and_a_reused_refresh_token_kills_its_whole_family(story):
    carol = story.register("carol")
    first = story.login(carol)

    second = story.refresh(first["refresh_token"])
    assert second.status == 200
    assert second.json["refresh_token"] != first["refresh_token"]
    assert story.auth("GET", f"{API_AUTH}/me", token=second.json["access_token"]).status == 200
    # Within the grace (two tabs refreshing at once) the rotated token answers once more.
    twin = story.refresh(first["refresh_token"])
    assert twin.status == 200
    access = second.json["access_token"]
    assert story.user("GET", f"{API_USERS}/me", token=access).status == 200

    time.sleep(REUSE_GRACE_SECONDS + 0.5)
    reused = story.refresh(first["refresh_token"])
    assert reused.status == 401
    assert story.refresh(second.json["refresh_token"]).status == 401
    assert story.refresh(twin.json["refresh_token"]).status == 401
    assert story.auth("GET", f"{API_AUTH}/me", token=access).status == 401
    # The user service refuses the session's tokens once its session_revoked sync is in.
    refused = poll(
        lambda: story.user("GET", f"{API_USERS}/me", token=access), lambda a: a.status == 401
    )
    assert refused.status == 401
    # Another login is a new family, untouched by the revoked one.
    other = story.login(carol)
    assert story.refresh(other["refresh_token"]).status == 200
    assert story.user("GET", f"{API_USERS}/me", token=other["access_token"]).status == 200


def test_an_administrator_lists_and_searches_users(story, admin):
    dora = story.register("dora")
    profile_synced(story, admin, dora["id"])

    page = story.user("GET", f"{API_USERS}?page=1&page_size=1", token=admin["token"])
    assert page.status == 200
    assert len(page.json) == 1
    pagination = json.loads(page.headers["x-pagination"])
    assert pagination["total"] >= 2 and pagination["page"] == 1

    found = story.user("GET", f"{API_USERS}?q={dora['username']}", token=admin["token"])
    assert found.status == 200
    assert [p["id"] for p in found.json] == [dora["id"]]

    own = story.login(dora)["access_token"]
    assert story.user("GET", API_USERS, token=own).status == 403


def test_deactivation_at_the_user_service_reaches_the_auth_service(story, admin):
    erin = story.register("erin")
    token = story.login(erin)["access_token"]
    profile_synced(story, admin, erin["id"])

    changed = story.user(
        "PATCH", f"{API_USERS}/{erin['id']}", json={"is_active": False}, token=admin["token"]
    )
    assert changed.status == 200 and changed.json["is_active"] is False
    assert story.user("GET", f"{API_USERS}/me", token=token).status == 403

    login = poll(lambda: story.try_login(erin), lambda a: a.status == 403)
    assert login.status == 403, login.json

    story.user("PATCH", f"{API_USERS}/{erin['id']}", json={"is_active": True}, token=admin["token"])
    assert poll(lambda: story.try_login(erin), lambda a: a.status == 200).status == 200


def test_logout_all_reaches_the_user_service(story):
    fred = story.register("fred")
    token = story.login(fred)["access_token"]
    assert story.user("GET", f"{API_USERS}/me", token=token).status == 200

    assert story.auth("POST", f"{API_AUTH}/logout-all", token=token).status == 204
    assert story.auth("GET", f"{API_AUTH}/me", token=token).status == 401

    refused = poll(
        lambda: story.user("GET", f"{API_USERS}/me", token=token), lambda a: a.status == 401
    )
    assert refused.status == 401, refused.json
    assert refused.headers["www-authenticate"].startswith("Bearer")
    fresh = story.login(fred)["access_token"]
    assert story.user("GET", f"{API_USERS}/me", token=fresh).status == 200


def test_logout_reaches_the_user_service_and_another_session_lives_on(story):
    gina = story.register("gina")
    ended, other = story.login(gina)["access_token"], story.login(gina)["access_token"]
    assert story.user("GET", f"{API_USERS}/me", token=ended).status == 200

    assert story.auth("POST", f"{API_AUTH}/logout", token=ended).status == 204
    assert story.auth("GET", f"{API_AUTH}/me", token=ended).status == 401
    refused = poll(
        lambda: story.user("GET", f"{API_USERS}/me", token=ended),
        lambda a: a.status == 401,
        timeout=5,
    )
    assert refused.status == 401, refused.json
    assert story.user("GET", f"{API_USERS}/me", token=other).status == 200
    assert story.auth("GET", f"{API_AUTH}/me", token=other).status == 200


def test_key_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(
    story, system, admin
):
    gina = story.register("gina")
    old_token = story.login(gina)["access_token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    assert [k["kid"] for k in story.auth("GET", "/.well-known/jwks.json").json["keys"]] == [old_kid]

    rotated = system.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr

    # Running processes pick the new key files up within seconds.
    jwks = poll(
        lambda: story.auth("GET", "/.well-known/jwks.json"),
        lambda a: len(a.json["keys"]) == 2,
    )
    kids = {k["kid"] for k in jwks.json["keys"]}
    assert len(kids) == 2 and old_kid in kids
    new_token = poll(
        lambda: story.login(gina)["access_token"],
        lambda t: jwt.get_unverified_header(t)["kid"] != old_kid,
    )
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid in kids - {old_kid}

    # Every process accepts both at once: old tokens until they expire, and
    # new ones even in a worker that has not yet run its periodic key check.
    for token in (old_token, admin["token"], new_token):
        assert story.auth("GET", f"{API_AUTH}/me", token=token).status == 200
        assert story.user("GET", f"{API_USERS}/me", token=token).status == 200


def test_a_user_turns_on_totp_sees_their_sessions_and_ends_one_at_both_services(story, admin):
    person = story.register("tess")
    laptop = story.auth(
        "POST",
        f"{API_AUTH}/login",
        json={"email": person["email"], "password": person["password"]},
        headers={"User-Agent": "Laptop/1.0"},
    ).json
    story.secrets.update((laptop["access_token"], laptop["refresh_token"]))
    enrolment = story.auth(
        "POST", f"{API_AUTH}/mfa/totp", json={"password": person["password"]},
        token=laptop["access_token"],
    )  # fmt: skip
    assert enrolment.status == 200
    totp = pyotp.TOTP(enrolment.json["secret"])
    story.secrets.add(enrolment.json["secret"])
    confirmed = story.auth(
        "POST", f"{API_AUTH}/mfa/totp/confirm", json={"code": totp.now()},
        token=laptop["access_token"],
    )  # fmt: skip
    assert confirmed.status == 200
    story.secrets.update(confirmed.json["recovery_codes"])

    # A second device: the password alone is not enough any more.
    first = story.auth(
        "POST",
        f"{API_AUTH}/login",
        json={"email": person["email"], "password": person["password"]},
        headers={"User-Agent": "Phone/2.0"},
    )
    assert first.status == 200 and first.json["mfa_required"] is True
    story.secrets.add(first.json["mfa_token"])
    phone = story.auth(
        "POST",
        f"{API_AUTH}/login/mfa",
        json={"mfa_token": first.json["mfa_token"], "code": totp.at(time.time() + 30)},
        headers={"User-Agent": "Phone/2.0"},
    )
    assert phone.status == 200, phone.json
    phone = phone.json
    story.secrets.update((phone["access_token"], phone["refresh_token"]))
    amr = jwt.decode(phone["access_token"], options={"verify_signature": False})["amr"]
    assert amr == ["pwd", "otp"]
    assert story.user("GET", f"{API_USERS}/me", token=phone["access_token"]).status == 200

    listed = story.auth("GET", f"{API_AUTH}/sessions", token=laptop["access_token"]).json
    assert [(s["user_agent"], s["current"]) for s in listed] == [
        ("Phone/2.0", False),
        ("Laptop/1.0", True),
    ]
    assert all(s["ip"] == "127.0.0.1" for s in listed)
    ended = story.auth(
        "DELETE", f"{API_AUTH}/sessions/{listed[0]['id']}", token=laptop["access_token"]
    )
    assert ended.status == 204
    assert story.auth("GET", f"{API_AUTH}/me", token=phone["access_token"]).status == 401
    refused = poll(
        lambda: story.user("GET", f"{API_USERS}/me", token=phone["access_token"]),
        lambda a: a.status == 401,
    )
    assert refused.status == 401
    assert story.user("GET", f"{API_USERS}/me", token=laptop["access_token"]).status == 200

    events = story.auth("GET", f"{API_AUTH}/me/events", token=laptop["access_token"])
    assert [e["type"] for e in events.json][:4] == [
        "session_revoked", "login_succeeded", "mfa_enabled", "login_succeeded",
    ]  # fmt: skip
    seen_by_admin = story.auth(
        "GET", f"{API_AUTH}/events?user_id={person['id']}&type=session_revoked",
        token=admin["token"],
    )  # fmt: skip
    assert [e["session_id"] for e in seen_by_admin.json] == [listed[0]["id"]]


def test_deleting_the_account_at_the_auth_service_removes_the_profile(story, admin):
    hank = story.register("hank")
    token = story.login(hank)["access_token"]
    profile_synced(story, admin, hank["id"])

    deleted = story.auth(
        "DELETE", f"{API_AUTH}/me", json={"password": hank["password"]}, token=token
    )
    assert deleted.status == 204
    assert story.try_login(hank).status == 401

    gone = poll(
        lambda: story.user("GET", f"{API_USERS}/{hank['id']}", token=admin["token"]),
        lambda a: a.status == 404,
    )
    assert gone.status == 404, gone.json
    assert story.user("GET", f"{API_USERS}/me", token=token).status == 401


def test_an_administrator_deleting_a_user_at_the_user_service_removes_the_account(story, admin):
    ivan = story.register("ivan")
    token = story.login(ivan)["access_token"]
    profile_synced(story, admin, ivan["id"])

    assert story.user("DELETE", f"{API_USERS}/{ivan['id']}", token=admin["token"]).status == 204
    assert story.user("GET", f"{API_USERS}/me", token=token).status == 401

    refused = poll(lambda: story.try_login(ivan), lambda a: a.status == 401)
    assert refused.status == 401, refused.json
    assert refused.json["message"] == "Invalid credentials"
    assert story.auth("GET", f"{API_AUTH}/me", token=token).status == 401


def test_a_token_in_a_query_string_is_refused(story):
    # RFC 6750 allows tokens in the query but the services take them from the
    # Authorization header only; the request line is still logged, so the log
    # grep at the end shows that its query string is not.
    jane = story.register("jane")
    pair = story.login(jane)
    query = urlencode(
        {
            "access_token": pair["access_token"],
            "refresh_token": pair["refresh_token"],
            "password": jane["password"],
        }
    )
    for answer in (
        story.user("GET", f"{API_USERS}/me?{query}"),
        story.auth("GET", f"{API_AUTH}/me?{query}"),
    ):
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert story.user("GET", f"{API_USERS}/me", token=pair["access_token"]).status == 200


def test_two_identical_registrations_at_once_make_one_account(story, auth_database):
    name = f"twin_{uuid.uuid4().hex[:8]}"
    bodies = []
    for _ in range(2):
        password = f"racing-Horse-{uuid.uuid4().hex[:12]}"
        story.secrets.add(password)
        bodies.append({"email": f"{name}@example.com", "username": name, "password": password})
    # Both requests pass the "already taken?" check before either inserts: the
    # table is held against writes until both INSERTs wait on it, so one of
    # them fails in the database (the race an attacker wins by chance).
    with auth_database.connect() as blocker, ThreadPoolExecutor(2) as pool:
        blocker.execute(text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))
        answers = [pool.submit(story.auth, "POST", f"{API_AUTH}/register", json=b) for b in bodies]
        waiting = poll(lambda: insert_waiters(auth_database, "users"), lambda n: n >= 2, timeout=10)
        blocker.rollback()
        statuses = sorted(answer.result().status for answer in answers)
    assert waiting == 2, "both registrations should have reached their INSERT"
    assert statuses.count(201) == 1, statuses
    with auth_database.connect() as connection:
        accounts = connection.execute(
            text("SELECT count(*) FROM users WHERE username_key = :name"), {"name": name}
        ).scalar_one()
    assert accounts == 1


def test_a_resource_server_introspects_tokens_with_its_client_credentials(story, system):
    client_id, secret = system.env["INTROSPECTION_CLIENTS"].split(":", 1)
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    kate = story.register("kate")
    token = story.login(kate)["access_token"]
    url = f"{API_AUTH}/introspect"

    refused = story.auth("POST", url, json={"token": token})
    assert refused.status == 401
    assert refused.headers["www-authenticate"].startswith("Basic ")
    answer = story.auth(
        "POST", url, json={"token": token}, headers={"Authorization": f"Basic {credentials}"}
    )
    assert answer.status == 200
    assert (answer.json["active"], answer.json["token_type"]) == (True, "Bearer")
    assert answer.json["sub"] == kate["id"]


def test_request_ids_reach_the_services_logs(story, process_log):
    request_id = f"e2e-{uuid.uuid4().hex}"
    answer = story.auth("GET", "/health", headers={"X-Request-ID": request_id})
    assert answer.headers["x-request-id"] == request_id
    logged = poll(lambda: process_log.read_text(errors="replace"), lambda text: request_id in text)
    assert request_id in logged


def test_ctrl_c_stops_every_process_it_started(system, e2e_durations):
    pids = system.started_pids()
    assert len(pids) == len(PROCESSES), pids

    stopping = time.monotonic()
    left = system.stop()
    e2e_durations["stop"] = time.monotonic() - stopping

    assert left == {}
    assert system.honcho.returncode is not None


# Keys of every JSON log line, and what gunicorn's access lines add (common.logging).
LOG_LINE_KEYS = {"time", "level", "logger", "message", "request_id", "message_id"}
ACCESS_LINE_KEYS = {"method", "path", "status", "duration_ms"}
# honcho's prefix of each line a process wrote: "12:00:00 auth_worker.1 | ".
HONCHO_LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+?)\.\d+\s*\| (.*)$")


def test_every_line_every_process_wrote_is_json_of_one_shape(system, process_log):
    """Runs after Ctrl-C: the whole run's output, gunicorn's own lines included."""
    by_process: dict[str, int] = {}
    bad = []
    for number, line in enumerate(process_log.read_text(errors="replace").splitlines(), 1):
        match = HONCHO_LINE.match(line)
        if match is None:
            continue  # honcho's own lines ("system | auth.1 started") and the command
        name, text = match.groups()
        by_process[name] = by_process.get(name, 0) + 1
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not (
            LOG_LINE_KEYS <= set(parsed) <= LOG_LINE_KEYS | ACCESS_LINE_KEYS
        ):
            bad.append(f"line {number}: {line[:200]}")
        elif parsed["logger"] == "gunicorn.access":
            assert set(parsed) == LOG_LINE_KEYS | ACCESS_LINE_KEYS, line
            assert "?" not in parsed["path"], line
    assert bad == []
    assert set(by_process) == set(PROCESSES)


def test_no_password_hash_or_token_reaches_the_logs(
    story, system, process_log, auth_database, capsys
):
    """Every line any process wrote in the whole run, searched for every secret the story used.

    Runs last, after Ctrl-C, so every process has flushed its log. The
    secrets: each password, access and refresh token handed out, each stored
    password hash, anything shaped like a bcrypt hash, the pepper and the
    introspection client's secret.
    """
    with auth_database.connect() as connection:
        hashes = set(connection.execute(text("SELECT password_hash FROM users")).scalars())
    assert len(story.secrets) > 10 and hashes
    configured = {
        system.env["PASSWORD_PEPPER"],
        system.env["INTROSPECTION_CLIENTS"].split(":", 1)[1],
    }
    secrets = story.secrets | hashes | configured
    lines = process_log.read_text(errors="replace").splitlines()
    assert any("started (pid=" in line for line in lines)  # the log is the processes' output
    leaks = [
        f"line {number}: {found[:12]}..."
        for number, line in enumerate(lines, 1)
        for found in [s for s in secrets if s in line] + BCRYPT_HASH.findall(line)
    ]
    with capsys.disabled():
        print(
            f"\nlog grep: {len(lines)} log lines searched for {len(secrets)} secrets "
            f"({len(hashes)} password hashes) and bcrypt-shaped strings: {len(leaks)} found"
        )
    assert leaks == []
