"""Schema-driven fuzzing of the user service against its own ``/openapi.json``.

Every operation gets valid and invalid requests carrying a fresh access token
of an administrator (signed with the test key, so the admin endpoints are
exercised too), and every schemathesis check runs on the answers (see
:mod:`tests.support.schema_fuzzing`). In-memory SQLite.
"""

from __future__ import annotations

import uuid

from tests.support.schema_fuzzing import fuzz_api, fuzz_links
from user_app.tests.conftest import bearer

# Examples per operation and mode; bounded so the run stays near a minute.
MAX_EXAMPLES = 40
# Generated sequences of linked calls (list, then read, edit or delete one of the listed).
LINKED_EXAMPLES = 20
# An avatar URL must be an absolute http(s) URL, which JSON schema cannot state: a
# schema-valid string may still be refused with 422.
SEMANTIC_RULES = {"/api/v1/users/me": ["422"], "/api/v1/users/{user_id}": ["422"]}
# Fewer requests than this and the run has not exercised the API in earnest.
MIN_REQUESTS = 500


def test_every_operation_answers_as_documented(app, client, signer, capsys):
    """Whatever arrives, the answer is one the document promises, and never a 500."""
    admin_id = str(uuid.uuid4())
    # Someone for the admin endpoints to find, edit and delete.
    for _ in range(3):
        assert client.get("/api/v1/users/me", headers=bearer(signer.token())).status_code == 200

    def fresh_token() -> dict:
        return bearer(signer.token(admin_id, roles=["user", "admin"]))

    report = fuzz_api(
        app, headers=fresh_token, max_examples=MAX_EXAMPLES, semantic_rules=SEMANTIC_RULES
    )
    with capsys.disabled():
        print("\n" + report.summary("user service"))
    assert not report.failures, "\n\n".join(report.failures)
    assert report.requests >= MIN_REQUESTS


def test_linked_sequences_find_no_deleted_user_still_served(app, client, signer, capsys):
    """List, then read, edit or delete a listed user, then read again: always as documented."""
    admin_id = str(uuid.uuid4())
    for _ in range(LINKED_EXAMPLES):
        assert client.get("/api/v1/users/me", headers=bearer(signer.token())).status_code == 200

    def fresh_token() -> dict:
        return bearer(signer.token(admin_id, roles=["user", "admin"]))

    report = fuzz_links(
        app,
        headers=fresh_token,
        max_examples=LINKED_EXAMPLES,
        steps=8,
        semantic_rules=SEMANTIC_RULES,
    )
    with capsys.disabled():
        print("\n" + report.summary("user service, linked"))
    assert not report.failures, "\n\n".join(report.failures)
    assert report.requests >= LINKED_EXAMPLES
