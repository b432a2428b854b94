"""Indexes that keep the relay and the janitor flat as the tables grow.

- ``ix_outbox_pending``: ``outbox (seq) WHERE published_at IS NULL``, the few
  rows the relay still has to publish, beside any number of published ones.
- ``ix_processed_messages_processed_at``: what the janitor deletes by, in
  batches, from a table of millions of message ids.

Built ``CONCURRENTLY`` on PostgreSQL, so a live deployment keeps writing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 13:00:00
"""

from common.migrations import (
    IndexSpec,
    create_indexes_concurrently,
    drop_indexes_concurrently,
)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES: list[IndexSpec] = [
    ("ix_outbox_pending", "outbox", ["seq"], "published_at IS NULL"),
    ("ix_processed_messages_processed_at", "processed_messages", ["processed_at"], None),
]


def upgrade() -> None:
    create_indexes_concurrently(INDEXES)


def downgrade() -> None:
    drop_indexes_concurrently(INDEXES)
