"""Durable revocation and change times: revoked tokens, the users' cut-off, sessions' end.

- ``revoked_tokens``: logged-out access tokens, until they would have expired.
- ``users.revoked_before``: the per-user cut-off (logout-all, password change).
- ``users.roles_changed_at`` / ``active_changed_at`` replace ``admin_changed_at``:
  changes now travel both ways and each field keeps its own time.
- ``login_sessions.expires_at``: a login's absolute end. Sessions already there
  end 90 days (the default SESSION_MAX_AGE_DAYS) after their login.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:30:00
"""

import sqlalchemy as sa
from alembic import op

import common.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", common.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_revoked_tokens")),
    )
    with op.batch_alter_table("revoked_tokens") as batch_op:
        batch_op.create_index(batch_op.f("ix_revoked_tokens_expires_at"), ["expires_at"])

    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("roles_changed_at", common.db.UTCDateTime(timezone=True)))
        batch_op.add_column(sa.Column("active_changed_at", common.db.UTCDateTime(timezone=True)))
        batch_op.add_column(sa.Column("revoked_before", sa.BigInteger()))
    op.execute(
        "UPDATE users SET roles_changed_at = admin_changed_at, active_changed_at = admin_changed_at"
    )
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("admin_changed_at")

    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.add_column(sa.Column("expires_at", common.db.UTCDateTime(timezone=True)))
        batch_op.create_index(batch_op.f("ix_login_sessions_revoked_at"), ["revoked_at"])
    if op.get_context().dialect.name == "postgresql":
        op.execute("UPDATE login_sessions SET expires_at = created_at + interval '90 days'")
    else:
        op.execute("UPDATE login_sessions SET expires_at = datetime(created_at, '+90 days')")
    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.alter_column(
            "expires_at", existing_type=common.db.UTCDateTime(timezone=True), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_sessions_revoked_at"))
        batch_op.drop_column("expires_at")
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("admin_changed_at", common.db.UTCDateTime(timezone=True)))
    op.execute("UPDATE users SET admin_changed_at = roles_changed_at")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("revoked_before")
        batch_op.drop_column("active_changed_at")
        batch_op.drop_column("roles_changed_at")
    with op.batch_alter_table("revoked_tokens") as batch_op:
        batch_op.drop_index(batch_op.f("ix_revoked_tokens_expires_at"))
    op.drop_table("revoked_tokens")
