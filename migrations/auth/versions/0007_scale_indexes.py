"""Indexes that keep the hot paths and the janitor flat as the tables grow.

- ``ix_outbox_pending``: ``outbox (seq) WHERE published_at IS NULL``. The relay
  asks for the oldest unpublished rows; beside a million published ones (kept a
  day) this index holds only the few it wants.
- ``ix_login_sessions_live``: ``login_sessions (user_id) WHERE revoked_at IS
  NULL``, for the sessions list and ending every session of a user.
- ``processed_at``, ``refresh_tokens.expires_at`` and ``login_sessions.expires_at``:
  what the janitor deletes by, in batches, from tables of millions of rows.

Each is built ``CONCURRENTLY`` on PostgreSQL: logins, refreshes and the relay
keep writing while it builds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 13:00:00
"""

from common.migrations import (
    IndexSpec,
    create_indexes_concurrently,
    drop_indexes_concurrently,
)

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES: list[IndexSpec] = [
    ("ix_outbox_pending", "outbox", ["seq"], "published_at IS NULL"),
    ("ix_login_sessions_live", "login_sessions", ["user_id"], "revoked_at IS NULL"),
    ("ix_processed_messages_processed_at", "processed_messages", ["processed_at"], None),
    ("ix_refresh_tokens_expires_at", "refresh_tokens", ["expires_at"], None),
    ("ix_login_sessions_expires_at", "login_sessions", ["expires_at"], None),
]


def upgrade() -> None:
    create_indexes_concurrently(INDEXES)


def downgrade() -> None:
    drop_indexes_concurrently(INDEXES)
