"""Signing keys in the database (``KEY_STORE=database``), shared by every auth node.

- ``signing_keys``: each key pair, the private half sealed under
  ``KEY_ENCRYPTION_KEY``; at most one ``active`` row (a partial unique index),
  ``retired_at`` set when a rotation replaced it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-18 12:00:00
"""

import sqlalchemy as sa
from alembic import op

import common.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = common.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("retired_at", Timestamp, nullable=True),
        sa.CheckConstraint(
            "(active AND retired_at IS NULL) OR (NOT active AND retired_at IS NOT NULL)",
            name=op.f("ck_signing_keys_active_until_retired"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_signing_keys_kid")),
    )
    op.create_index(
        "uq_signing_keys_one_active",
        "signing_keys",
        ["active"],
        unique=True,
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active"),
    )


def downgrade() -> None:
    op.drop_index("uq_signing_keys_one_active", table_name="signing_keys")
    op.drop_table("signing_keys")
