"""The outbox's AMQP properties as columns: source and correlation_id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:00:00
"""

from common.migrations import add_outbox_property_columns, drop_outbox_property_columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_outbox_property_columns()


def downgrade() -> None:
    drop_outbox_property_columns()
