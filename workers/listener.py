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
import select
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

log = logging.getLogger(__name__)


class Listener:
    """One ``LISTEN`` connection on ``channel``, opened on first use and rebuilt after a loss.

    A loss (the server restarted, or failed over to a standby the engine's URL
    also names) is found when :meth:`take` reads the connection; the LISTEN is
    then opened again at once, on whichever server is the primary now. A
    commit made while no LISTEN was open notified nobody, so a fresh LISTEN
    counts as a notification: the caller looks for rows before it waits.
    """

    def __init__(self, engine: Engine, channel: str) -> None:
        self.engine = engine
        self.channel = channel
        self._connection: PoolProxiedConnection | None = None

    @property
    def enabled(self) -> bool:
        """Whether the database can notify at all (PostgreSQL)."""
        return self.engine.dialect.name == "postgresql"

    def _listen(self) -> None:
        raw = self.engine.raw_connection()
        self._connection = raw
        connection: Any = raw.driver_connection
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {self.channel}")

    def take(self) -> bool:
        """Whether there may be rows the caller has not seen; opens or rebuilds the LISTEN.

        True when a commit notified since the last call, or when the LISTEN
        has just been opened (a first call, or one after a loss). False when
        nothing arrived, or when the database cannot be reached now (then
        :meth:`fileno` is None and the caller polls). Always False on SQLite.
        """
        if not self.enabled:
            return False
        if self._connection is not None:
            try:
                connection: Any = self._connection.driver_connection
                connection.poll()
                # A server going away sends an error, then closes: the first poll
                # reads the error quietly, a second one meets the closed socket.
                if select.select([connection], [], [], 0)[0]:
                    connection.poll()
                arrived = bool(connection.notifies)
                connection.notifies.clear()
                return arrived
            except Exception as error:  # noqa: BLE001 - any failure: listen again, below
                log.warning(
                    "%s listener lost (%s); listening again", self.channel, type(error).__name__
                )
                self.drop()
        try:
            self._listen()
        except Exception as error:  # noqa: BLE001 - unreachable now: poll, and retry later
            log.warning("%s listener unavailable (%s)", self.channel, type(error).__name__)
            self.drop()
            return False
        return True

    def fileno(self) -> int | None:
        """The LISTEN connection's socket to ``select`` on; None when there is none.

        None on SQLite, and when the last :meth:`take` could not reach the database.
        """
        if self._connection is None:
            return None
        return int(self._connection.driver_connection.fileno())  # type: ignore[union-attr]

    def drop(self) -> None:
        """Throw the connection away (the next :meth:`take` listens again)."""
        if self._connection is not None:
            with contextlib.suppress(Exception):  # it is being thrown away
                self._connection.invalidate()
            self._connection = None
