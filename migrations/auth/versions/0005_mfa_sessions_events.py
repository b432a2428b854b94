"""A second factor, sessions a user can see, and the security event log.

- ``users.mfa_enabled``; ``totp_credentials`` (sealed secrets), ``recovery_codes``
  (keyed hashes) and ``mfa_challenges`` (the login's second step, as hashes).
- ``login_sessions``: where each began (``ip``, ``user_agent``), when it was
  last refreshed, and its ``amr``. Sessions already there count as password
  logins, last used when they began.
- ``security_events``, indexed for the user's list, the administrators'
  filter by type, and the retention purge by time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 12:00:00
"""

import sqlalchemy as sa
from alembic import op

import common.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Timestamp = common.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("mfa_enabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column("mfa_enabled", server_default=None)

    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.add_column(sa.Column("ip", sa.String(length=45), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", Timestamp, nullable=True))
        batch_op.add_column(sa.Column("amr", sa.JSON(), nullable=True))
    op.execute("UPDATE login_sessions SET last_used_at = created_at")
    op.execute("""UPDATE login_sessions SET amr = '["pwd"]'""")
    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.alter_column("amr", existing_type=sa.JSON(), nullable=False)

    op.create_table(
        "totp_credentials",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("secret", sa.String(length=255), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("confirmed_at", Timestamp, nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_totp_credentials_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_totp_credentials")),
    )
    op.create_table(
        "recovery_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_recovery_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_recovery_codes")),
    )
    op.create_index(op.f("ix_recovery_codes_user_id"), "recovery_codes", ["user_id"])
    op.create_table(
        "mfa_challenges",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("password_digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_mfa_challenges_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_mfa_challenges")),
    )
    op.create_index(op.f("ix_mfa_challenges_user_id"), "mfa_challenges", ["user_id"])
    op.create_index(op.f("ix_mfa_challenges_expires_at"), "mfa_challenges", ["expires_at"])
    op.create_table(
        "security_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=255), nullable=True),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_events")),
    )
    op.create_index(op.f("ix_security_events_at"), "security_events", ["at"])
    op.create_index("ix_security_events_user_id_at", "security_events", ["user_id", "at"])
    op.create_index("ix_security_events_type_at", "security_events", ["type", "at"])


def downgrade() -> None:
    op.drop_index("ix_security_events_type_at", table_name="security_events")
    op.drop_index("ix_security_events_user_id_at", table_name="security_events")
    op.drop_index(op.f("ix_security_events_at"), table_name="security_events")
    op.drop_table("security_events")
    op.drop_index(op.f("ix_mfa_challenges_expires_at"), table_name="mfa_challenges")
    op.drop_index(op.f("ix_mfa_challenges_user_id"), table_name="mfa_challenges")
    op.drop_table("mfa_challenges")
    op.drop_index(op.f("ix_recovery_codes_user_id"), table_name="recovery_codes")
    op.drop_table("recovery_codes")
    op.drop_table("totp_credentials")
    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.drop_column("amr")
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("user_agent")
        batch_op.drop_column("ip")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("mfa_enabled")
