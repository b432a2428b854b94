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

from user_app.profile_counts import create_statements, drop_statements

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


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
    for statement in create_statements():
        op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in drop_statements():
            op.execute(statement)
    op.drop_table("profile_counts")
