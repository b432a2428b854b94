"""Waking a worker when rows it waits for are committed: PostgreSQL ``LISTEN``.

A transaction that writes an outbox row or a mail sends ``NOTIFY <channel>``
(:func:`common.db.notify_at_commit`), delivered only when it commits. A worker
holds one autocommit connection that ``LISTEN``s on the channel and waits in
``select`` on its socket, so it wakes the moment there is work instead of
polling. On SQLite there is no such thing: :meth:`Listener.fileno` is None and
the worker polls.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

log = logging.getLogger(__name__)


class Listener:
    """One ``LISTEN`` connection on ``channel``, opened on first use and rebuilt after a loss."""

    def __init__(self, engine: Engine, channel: str) -> None:
        self.engine = engine
        self.channel = channel
        self._connection: PoolProxiedConnection | None = None

    @property
    def enabled(self) -> bool:
        """Whether the database can notify at all (PostgreSQL)."""
        return self.engine.dialect.name == "postgresql"

    def _driver_connection(self) -> Any:
        if self._connection is None:
            raw = self.engine.raw_connection()
            connection: Any = raw.driver_connection
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {self.channel}")
            self._connection = raw
        return self._connection.driver_connection

    def fileno(self) -> int | None:
        """The socket to ``select`` on, or None (SQLite, or the database is unreachable now)."""
        if not self.enabled:
            return None
        try:
            return int(self._driver_connection().fileno())
        except Exception as error:  # noqa: BLE001 - unreachable now: poll, and retry later
            log.warning("%s listener unavailable (%s)", self.channel, type(error).__name__)
            self.drop()
            return None

    def take(self) -> bool:
        """Read what arrived: whether a notification was among it. Drops a broken connection."""
        if self._connection is None:
            return False
        try:
            connection = self._driver_connection()
            connection.poll()
            arrived = bool(connection.notifies)
            connection.notifies.clear()
            return arrived
        except Exception as error:  # noqa: BLE001 - any failure: rebuild it on the next wait
            log.warning("%s listener lost (%s)", self.channel, type(error).__name__)
            self.drop()
            return False

    def drop(self) -> None:
        """Throw the connection away (it is rebuilt on the next use)."""
        if self._connection is not None:
            with contextlib.suppress(Exception):  # it is being thrown away
                self._connection.invalidate()
            self._connection = None
