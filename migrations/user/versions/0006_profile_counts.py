"""How many profiles there are, kept by the database as they come and go (PostgreSQL).

``GET /api/v1/users?page=N`` reports ``total``: a ``count(*)`` of a million
profiles reads every one of them, hundreds of milliseconds per request. The
unfiltered listing (and ``is_active``) now reads ``profile_counts`` instead: a
few rows that statement-level triggers on ``profiles`` keep exact in the same
transaction as every insert, delete and change of ``is_active``, whoever makes
it. Each connection adds to its own slot (its backend pid modulo 16), so
concurrent writers rarely wait on each other; a reader sums the slots.

The counts start from the table as it is, under a SHARE lock so no write slips
between the count and the triggers (a pause of a count's length). SQLite has
no statement triggers: there the listing counts the rows, as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 13:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SLOTS = 16

# ``changes`` is a query of (is_active, delta) rows; every trigger adds them to
# this connection's slot, false before true, so two writers take their rows in
# the same order and cannot deadlock.
FUNCTION = """
CREATE FUNCTION profile_counts_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
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
TRIGGERS = {
    "insert": ("INSERT", "NEW TABLE AS new_rows", "SELECT is_active, 1 AS delta FROM new_rows"),
    "delete": ("DELETE", "OLD TABLE AS old_rows", "SELECT is_active, -1 AS delta FROM old_rows"),
    "update": (
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "SELECT is_active, 1 AS delta FROM new_rows"
        " UNION ALL SELECT is_active, -1 AS delta FROM old_rows",
    ),
}


def upgrade() -> None:
    op.create_table(
        "profile_counts",
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("slot", "is_active", name=op.f("pk_profile_counts")),
    )
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("LOCK TABLE profiles IN SHARE MODE")
    for name, (event, transition, changes) in TRIGGERS.items():
        op.execute(FUNCTION.format(name=name, slots=SLOTS, changes=changes))
        op.execute(
            f"CREATE TRIGGER profile_counts_{name} AFTER {event} ON profiles"
            f" REFERENCING {transition} FOR EACH STATEMENT"
            f" EXECUTE FUNCTION profile_counts_{name}()"
        )
    op.execute(
        "CREATE FUNCTION profile_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN DELETE FROM profile_counts; RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER profile_counts_truncate AFTER TRUNCATE ON profiles"
        " FOR EACH STATEMENT EXECUTE FUNCTION profile_counts_truncate()"
    )
    op.execute(
        "INSERT INTO profile_counts (slot, is_active, n)"
        " SELECT 0, is_active, count(*) FROM profiles GROUP BY is_active"
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for name in (*TRIGGERS, "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS profile_counts_{name} ON profiles")
            op.execute(f"DROP FUNCTION IF EXISTS profile_counts_{name}()")
    op.drop_table("profile_counts")
