"""Finding the processes a test started: free ports, log tails and an environment marker.

Every process a test starts inherits ``E2E_RUN_MARKER=<run id>``; scanning
``/proc`` for it finds them all, gunicorn's forked workers included, however
they were reparented.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

MARKER = "E2E_RUN_MARKER"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def processes_with_marker(marker: str) -> dict[int, str]:
    """Every live process whose environment carries ``MARKER=marker``: pid -> command line."""
    needle = f"{MARKER}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie has already stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
