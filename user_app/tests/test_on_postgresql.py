"""The request tests of the profile, sync and administration suites, rerun on PostgreSQL.

On PostgreSQL the service reads in autocommit on GET requests and begins a
transaction before a write (see common.db.init_database): the suites written
against SQLite must pass unchanged there. Then what is particular to it: a
known user's read is one statement outside any transaction, and the profile a
first request creates is written in one.
"""

from __future__ import annotations

import inspect
import time
import uuid

import psycopg2.extensions
import pytest
from sqlalchemy import event

from tests.support.servers import fresh_postgres_database
from user_app.models import PendingRevocation, Profile
from user_app.tests import messages, test_admin, test_me, test_sync
from user_app.tests.conftest import bearer

ME = "/api/v1/users/me"
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
IN_TRANSACTION = psycopg2.extensions.TRANSACTION_STATUS_INTRANS


@pytest.fixture
def database_url():
    with fresh_postgres_database("user_requests") as url:
        yield url


def _request_tests(module) -> dict:
    """The module's tests that go through the app's test client."""
    return {
        f"test_{module.__name__.rsplit('.', 1)[1].removeprefix('test_')}__{name[5:]}": function
        for name, function in vars(module).items()
        if name.startswith("test_")
        and callable(function)
        and "client" in inspect.signature(function).parameters
    }


for _module in (test_me, test_sync, test_admin):
    globals().update(_request_tests(_module))


def statements(app) -> list[tuple[str, int]]:
    """Each statement's first word and the transaction status it ran in."""
    seen: list[tuple[str, int]] = []

    @event.listens_for(app.extensions["database"].engine, "after_cursor_execute")
    def _record(conn, _cursor, statement, *_args):
        status = conn.connection.dbapi_connection.get_transaction_status()
        seen.append((statement.split(None, 1)[0].upper(), status))

    return seen


def test_a_known_users_read_is_one_statement_outside_a_transaction(app, client, signer):
    user_id = str(uuid.uuid4())
    assert client.get(ME, headers=bearer(signer.token(user_id))).status_code == 200
    seen = statements(app)
    response = client.get(ME, headers=bearer(signer.token(user_id)))
    assert response.status_code == 200
    assert response.get_json()["id"] == user_id
    assert seen == [("SELECT", IDLE)]


def test_a_first_request_creates_the_profile_in_one_transaction(app, client, signer, db_session):
    user_id = str(uuid.uuid4())
    now = int(time.time())
    messages.apply_sessions_revoked(db_session, user_id, now - 20)
    db_session.commit()
    seen = statements(app)
    response = client.get(ME, headers=bearer(signer.token(user_id, iat=now - 10)))
    assert response.status_code == 200
    first_write = next(i for i, (word, _) in enumerate(seen) if word != "SELECT")
    assert {status for _, status in seen[:first_write]} == {IDLE}
    assert {status for _, status in seen[first_write:]} == {IN_TRANSACTION}
    db_session.expire_all()
    assert db_session.get(Profile, user_id).tokens_valid_after == now - 20
    assert db_session.get(PendingRevocation, user_id) is None
    refused = client.get(ME, headers=bearer(signer.token(user_id, iat=now - 21)))
    assert refused.status_code == 401
