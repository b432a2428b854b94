"""A PostgreSQL primary and its streaming standby, of a test's own, for failover tests.

``initdb`` makes a fresh primary on a free port, ``pg_basebackup -R`` copies it
into a standby that streams from it on another port; once it streams, the
primary waits for it on every commit (``synchronous_standby_names``), so a
commit the primary has acknowledged is on the standby too and a failover loses
none. The failover itself is the test's: ``stop -m immediate`` the primary,
``promote`` the standby.

PostgreSQL's server binaries refuse to run as root: as root they run as the
``postgres`` user (``runuser``), in a directory that user owns. Whatever is
missing fails the test with what it is; nothing is skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.servers import free_port


def postgres_bin() -> Path:
    """The directory of the server's programs: ``TEST_POSTGRES_BIN``, else the newest installed."""
    configured = os.environ.get("TEST_POSTGRES_BIN")
    if configured:
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else Path("/usr/lib/postgresql/bin")


def _missing(what: str) -> None:
    pytest.fail(f"cannot start a test PostgreSQL primary and standby: {what}", pytrace=False)


class PostgresPair:
    """A primary on one port and its standby on another, under a directory of their own."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        for program in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
            if not (self.bin / program).exists():
                _missing(
                    f"{self.bin / program} not found (install the PostgreSQL server, or set "
                    "TEST_POSTGRES_BIN to the directory of its programs)"
                )
        self.as_user: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="pg-failover-"))
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                _missing("running as root, and there is no postgres user to run the server as")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.primary_port, self.standby_port = free_port(), free_port()
        self.primary = self.directory / "primary"
        self.standby = self.directory / "standby"

    # -- the programs ----------------------------------------------------------
    def run(self, program: str, *args: str, timeout: float = 120) -> None:
        """Run one of the server's programs as the server's user; fail the test if it fails."""
        command = [*self.as_user, str(self.bin / program), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            _missing(f"{program} {' '.join(args)}: {(result.stderr or result.stdout).strip()}")

    def url(self, database: str = "postgres", *, port: int | None = None) -> str:
        """A URL of ``database``: both hosts in libpq's multi-host form, or the one at ``port``."""
        if port is not None:
            return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary_port},"
            f"127.0.0.1:{self.standby_port}/{database}"
        )

    def execute(self, port: int, *statements: str) -> list[list[tuple]]:
        """Run statements in autocommit on the server at ``port``; each one's rows."""
        engine = create_engine(
            self.url(port=port), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
        )
        try:
            with engine.connect() as connection:
                results = []
                for statement in statements:
                    result = connection.execute(text(statement))
                    results.append([tuple(row) for row in result] if result.returns_rows else [])
                return results
        finally:
            engine.dispose()

    def _start(self, data: Path, port: int) -> None:
        self.run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(data),
            "-l",
            str(self.directory / f"{data.name}.log"),
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory}",
        )

    # -- the pair ----------------------------------------------------------------
    def start(self) -> None:
        """initdb and start the primary, copy it into a standby, start that, make it synchronous."""
        self.run("initdb", "-D", str(self.primary), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (self.primary / "postgresql.conf").open("a") as conf:
            # Small and quick: a test server, whose disks need not survive a crash
            # of the machine (an immediate stop of the server is no such crash).
            conf.write(
                "shared_buffers = 16MB\nfsync = off\nfull_page_writes = off\n"
                "max_connections = 60\nwal_keep_size = 64MB\n"
            )
        self._start(self.primary, self.primary_port)
        self.run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary_port),
            "-U",
            "postgres",
            "-D",
            str(self.standby),
            "-R",
            "-X",
            "stream",
        )
        self._start(self.standby, self.standby_port)
        self.wait_for_standby()
        # From now on a commit is acknowledged only once the standby has it.
        self.execute(
            self.primary_port,
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        )

    def wait_for_standby(self, timeout: float = 30.0) -> None:
        """Wait until the standby streams from the primary."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.execute(self.primary_port, "SELECT state FROM pg_stat_replication")[0]
            if rows == [("streaming",)]:
                return
            if time.monotonic() > deadline:
                _missing(f"the standby does not stream from the primary: {rows}")
            time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """Create ``name`` on the primary (the standby replays it); its multi-host URL."""
        self.execute(self.primary_port, f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop_primary(self) -> None:
        """Stop the primary at once, as a crash would (``pg_ctl stop -m immediate``)."""
        self.run("pg_ctl", "stop", "-D", str(self.primary), "-m", "immediate")

    def promote_standby(self) -> None:
        """Promote the standby to primary, waiting until it takes writes."""
        self.run("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self.standby))

    def stop(self) -> None:
        """Stop whichever server still runs and remove both data directories."""
        for data in (self.primary, self.standby):
            if (data / "postmaster.pid").exists():
                subprocess.run(
                    [
                        *self.as_user,
                        str(self.bin / "pg_ctl"),
                        "stop",
                        "-D",
                        str(data),
                        "-m",
                        "fast",
                    ],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def postgres_pair() -> Iterator[PostgresPair]:
    """A started primary and synchronous standby; both stopped and removed afterwards."""
    pair = PostgresPair()
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
