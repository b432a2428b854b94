"""Login sessions the auth service ended, and whether a profile's email is verified.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revoked_sessions",
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_revoked_sessions")),
    )
    with op.batch_alter_table("revoked_sessions") as batch_op:
        batch_op.create_index(batch_op.f("ix_revoked_sessions_user_id"), ["user_id"])
        batch_op.create_index(batch_op.f("ix_revoked_sessions_expires_at"), ["expires_at"])
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.add_column(
            sa.Column("email_verified", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.alter_column("email_verified", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch_op:
        batch_op.drop_column("email_verified")
    with op.batch_alter_table("revoked_sessions") as batch_op:
        batch_op.drop_index(batch_op.f("ix_revoked_sessions_expires_at"))
        batch_op.drop_index(batch_op.f("ix_revoked_sessions_user_id"))
    op.drop_table("revoked_sessions")
