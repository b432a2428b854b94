"""A hypothesis state machine over the token lifecycle, against both services in-process.

Steps: log in, refresh, present an already rotated refresh token again, log
out (with or without the refresh token), log out everywhere, change the
password, delete the account. After each step the auth service's ``user.sync``
events are applied to the user service with the user worker's own handler
(what the relay and the worker do between the processes), and the invariant
is checked on every token ever issued: each service accepts exactly the
tokens the model says are alive there.

The model follows the contract: a refresh rotation kills the old refresh
token; a refresh-token reuse (no grace here, so every reuse is one) and a
logout end their session at the auth service at once and at the user service
through its ``session_revoked`` sync; logout-all, a password change and a
deletion end everything at both, the user service through the sync.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import jwt
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from auth_app.models import OutboxEvent
from auth_app.tests.conftest import PASSWORD, bearer
from common.db import utcnow
from tests.support.events import accepted
from user_app import create_app as create_user_app
from user_app.sync import handle_user_sync

NEW_PASSWORD = "Another-long-passphrase-7"
MAX_EXAMPLES = 25
STEPS = 15


@dataclass
class AccessToken:
    """An issued access token and where the model says it is still alive."""

    value: str
    sid: str
    at_auth: bool = True
    at_user: bool = True


@dataclass
class Session:
    """A session family: its current refresh token and the rotated ones."""

    current: str
    alive: bool = True
    rotated: list[str] = field(default_factory=list)


def sync_user_service(auth_app, user_app) -> int:
    """Apply the auth outbox's pending ``user.sync`` events to the user service; return how many."""
    auth_db = auth_app.extensions["database"].sessionmaker()
    user_db = user_app.extensions["database"].sessionmaker()
    try:
        rows = auth_db.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.published_at.is_(None), OutboxEvent.routing_key == "user.sync")
            .order_by(OutboxEvent.seq)
        ).all()
        for row in rows:
            handle_user_sync([accepted(row.body)], user_db)
            user_db.commit()
            row.published_at = utcnow()
        auth_db.commit()
        return len(rows)
    finally:
        auth_db.close()
        user_db.close()


def test_no_dead_token_is_accepted_and_no_live_one_refused(make_app, key_paths, capsys):
    """The invariant holds after every step of every generated lifecycle, at both services."""
    auth_app = make_app(LOG_LEVEL="critical", REFRESH_REUSE_GRACE_SECONDS=0)
    user_app = create_user_app(
        {
            "TESTING": True,
            "DATABASE_URL": "sqlite://",
            "CREATE_SCHEMA": True,
            "PUBLIC_KEY_PATH": key_paths[1],
            "JWT_PUBLIC_KEY": None,
            "AUTH_JWKS_URL": None,
            "LOG_LEVEL": "critical",
            "LOG_FORMAT": "text",
        }
    )
    auth, users = auth_app.test_client(), user_app.test_client()
    counts = {"steps": 0, "examples": 0, "syncs": 0}

    class TokenLifecycle(RuleBasedStateMachine):
        """One user's tokens through everything the API lets them do."""

        @initialize()
        def register(self):
            name = f"sm_{uuid.uuid4().hex[:10]}"
            self.email, self.password = f"{name}@example.com", PASSWORD
            body = {"email": self.email, "username": name, "password": PASSWORD}
            assert auth.post("/api/v1/auth/register", json=body).status_code == 201
            self.deleted = False
            self.access: list[AccessToken] = []
            self.sessions: dict[str, Session] = {}
            counts["examples"] += 1
            self.login()

        def _take(self, pair: dict) -> None:
            sid = jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"]
            self.access.append(AccessToken(pair["access_token"], sid))
            session = self.sessions.setdefault(sid, Session(pair["refresh_token"]))
            session.current = pair["refresh_token"]

        def _kill_everything(self) -> None:
            for token in self.access:
                token.at_auth = token.at_user = False
            for session in self.sessions.values():
                session.alive = False

        def _kill_session(self, sid: str) -> None:
            self.sessions[sid].alive = False
            for token in self.access:
                if token.sid == sid:
                    token.at_auth = token.at_user = False

        def _live_access(self) -> list[AccessToken]:
            return [token for token in self.access if token.at_auth]

        @precondition(lambda self: not self.deleted)
        @rule()
        def login(self):
            counts["steps"] += 1
            response = auth.post(
                "/api/v1/auth/login", json={"email": self.email, "password": self.password}
            )
            assert response.status_code == 200, response.json
            self._take(response.json)

        @precondition(lambda self: self.sessions)
        @rule(data=st.data())
        def refresh(self, data):
            counts["steps"] += 1
            # In the order the sessions began: the same choices pick the same
            # session in every run (session ids are random).
            sid = data.draw(st.sampled_from(list(self.sessions)))
            session = self.sessions[sid]
            response = auth.post("/api/v1/auth/refresh", json={"refresh_token": session.current})
            if session.alive:
                assert response.status_code == 200, response.json
                session.rotated.append(session.current)
                self._take(response.json)
            else:
                assert response.status_code == 401, response.json

        @precondition(lambda self: any(s.rotated for s in self.sessions.values()))
        @rule(data=st.data())
        def reuse_rotated_refresh_token(self, data):
            counts["steps"] += 1
            sid = data.draw(st.sampled_from([s for s in self.sessions if self.sessions[s].rotated]))
            old = data.draw(st.sampled_from(self.sessions[sid].rotated))
            response = auth.post("/api/v1/auth/refresh", json={"refresh_token": old})
            assert response.status_code == 401, response.json
            # Reuse is theft: the whole family dies, at both services.
            self._kill_session(sid)

        @precondition(lambda self: any(t.at_auth for t in self.access))
        @rule(data=st.data(), with_refresh=st.booleans())
        def logout(self, data, with_refresh):
            counts["steps"] += 1
            token = data.draw(st.sampled_from(self._live_access()))
            body = {"refresh_token": self.sessions[token.sid].current} if with_refresh else {}
            response = auth.post("/api/v1/auth/logout", headers=bearer(token.value), json=body)
            assert response.status_code == 204, response.json
            self._kill_session(token.sid)

        @precondition(lambda self: any(t.at_auth for t in self.access))
        @rule(data=st.data())
        def logout_all(self, data):
            counts["steps"] += 1
            token = data.draw(st.sampled_from(self._live_access()))
            response = auth.post("/api/v1/auth/logout-all", headers=bearer(token.value))
            assert response.status_code == 204, response.json
            self._kill_everything()

        @precondition(lambda self: any(t.at_auth for t in self.access))
        @rule(data=st.data())
        def change_password(self, data):
            counts["steps"] += 1
            token = data.draw(st.sampled_from(self._live_access()))
            new = NEW_PASSWORD if self.password == PASSWORD else PASSWORD
            response = auth.post(
                "/api/v1/auth/password",
                headers=bearer(token.value),
                json={"current_password": self.password, "new_password": new},
            )
            assert response.status_code == 200, response.json
            self.password = new
            self._kill_everything()
            self._take(response.json)

        @precondition(lambda self: any(t.at_auth for t in self.access))
        @rule(data=st.data())
        def delete_account(self, data):
            counts["steps"] += 1
            token = data.draw(st.sampled_from(self._live_access()))
            response = auth.delete(
                "/api/v1/auth/me", headers=bearer(token.value), json={"password": self.password}
            )
            assert response.status_code == 204, response.json
            self.deleted = True
            self._kill_everything()

        @invariant()
        def each_service_accepts_exactly_the_live_tokens(self):
            if not hasattr(self, "access"):
                return
            counts["syncs"] += sync_user_service(auth_app, user_app)
            for token in self.access:
                at_auth = auth.get("/api/v1/auth/me", headers=bearer(token.value)).status_code
                assert at_auth == (200 if token.at_auth else 401), (token.sid, at_auth)
                at_user = users.get("/api/v1/users/me", headers=bearer(token.value)).status_code
                assert at_user == (200 if token.at_user else 401), (token.sid, at_user)

    run_state_machine_as_test(
        TokenLifecycle,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
    with capsys.disabled():
        print(
            f"\nstate machine: {counts['examples']} lifecycles, {counts['steps']} steps, "
            f"{counts['syncs']} user.sync events applied"
        )
    assert counts["steps"] >= MAX_EXAMPLES
    user_app.extensions["database"].engine.dispose()
