"""The triggers that keep ``profile_counts`` exact on PostgreSQL (see models.ProfileCount).

Statement-level triggers on ``profiles`` add each insert, delete and change of
``is_active`` to the counts, in the same transaction, whoever writes: the
service, the user worker, or an operator's SQL. Each connection adds to its
own slot (its backend pid modulo :data:`SLOTS`), so concurrent writers rarely
wait on each other; readers sum the slots. User migration 0006 creates them on
a live database, and ``create_all`` (the tests' schemas) creates them too.
"""

from __future__ import annotations

SLOTS = 16

# ``changes`` is a query of (is_active, delta) rows; every trigger adds them to
# this connection's slot, false before true, so two writers take their rows in
# the same order and cannot deadlock.
_FUNCTION = """
CREATE OR REPLACE FUNCTION profile_counts_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO profile_counts AS c (slot, is_active, n)
    SELECT pg_backend_pid() % {slots}, is_active, sum(delta)
    FROM ({changes}) AS changes
    GROUP BY is_active
    HAVING sum(delta) <> 0
    ORDER BY is_active
    ON CONFLICT (slot, is_active) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$
"""
_TRIGGERS = {
    "insert": ("INSERT", "NEW TABLE AS new_rows", "SELECT is_active, 1 AS delta FROM new_rows"),
    "delete": ("DELETE", "OLD TABLE AS old_rows", "SELECT is_active, -1 AS delta FROM old_rows"),
    "update": (
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "SELECT is_active, 1 AS delta FROM new_rows"
        " UNION ALL SELECT is_active, -1 AS delta FROM old_rows",
    ),
}


def create_statements() -> list[str]:
    """The functions and triggers, then the counts of the rows already there.

    Run them in one transaction after ``LOCK TABLE profiles IN SHARE MODE``
    on a live table, so no write slips between the count and the triggers.
    """
    statements = []
    for name, (event, transition, changes) in _TRIGGERS.items():
        statements.append(_FUNCTION.format(name=name, slots=SLOTS, changes=changes))
        statements.append(
            f"CREATE TRIGGER profile_counts_{name} AFTER {event} ON profiles"
            f" REFERENCING {transition} FOR EACH STATEMENT"
            f" EXECUTE FUNCTION profile_counts_{name}()"
        )
    statements += [
        "CREATE OR REPLACE FUNCTION profile_counts_truncate() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN DELETE FROM profile_counts; RETURN NULL; END $$",
        "CREATE TRIGGER profile_counts_truncate AFTER TRUNCATE ON profiles"
        " FOR EACH STATEMENT EXECUTE FUNCTION profile_counts_truncate()",
        "INSERT INTO profile_counts (slot, is_active, n)"
        " SELECT 0, is_active, count(*) FROM profiles GROUP BY is_active",
    ]
    return statements


def drop_statements() -> list[str]:
    """Undo :func:`create_statements` (the table's rows go with the table)."""
    statements = []
    for name in (*_TRIGGERS, "truncate"):
        statements.append(f"DROP TRIGGER IF EXISTS profile_counts_{name} ON profiles")
        statements.append(f"DROP FUNCTION IF EXISTS profile_counts_{name}()")
    return statements
