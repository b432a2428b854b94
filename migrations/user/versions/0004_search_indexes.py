"""Trigram indexes for the administrators' search (PostgreSQL only).

``GET /api/v1/users?q=...`` matches a case-insensitive substring of the
email, the username or the display name: ``lower(column) LIKE '%q%'``, which
no B-tree serves. A pg_trgm GIN index on each ``lower(column)`` does, for a
``q`` of 3 characters or more. Built ``CONCURRENTLY``: a live deployment keeps
writing profiles meanwhile. SQLite has none of this; its search scans.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 11:00:00
"""

from common.migrations import create_trigram_index, drop_postgresql_only_index

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_profiles_email_trgm": "lower(email)",
    "ix_profiles_username_trgm": "lower(username)",
    "ix_profiles_display_name_trgm": "lower(display_name)",
}


def upgrade() -> None:
    for name, expression in INDEXES.items():
        create_trigram_index(name, "profiles", expression)


def downgrade() -> None:
    for name in INDEXES:
        drop_postgresql_only_index(name)
