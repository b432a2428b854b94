"""CPU time spent by processes over a stretch of work, read from /proc (Linux).

What the drain's figure cannot say alone: which process the time goes to.
A group is a name and the processes it covers: given pids (a relay, a worker,
this bench process), or every process of a command name (``beam.smp`` for
RabbitMQ, ``postgres`` for PostgreSQL's server and its backends).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (proc(5)'s 3rd on).

    The name is in parentheses and may hold spaces. utime and stime are
    11 and 12 here, cutime and cstime (reaped children's) 13 and 14.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, reaped: bool = True) -> float:
    """User plus system CPU seconds ``pid`` has used, or 0.0 when it is gone.

    With ``reaped``, those of its children that exited and it waited for too:
    PostgreSQL's postmaster reaps every backend, so a connection opened and
    closed between two readings is still counted, as the postmaster's.
    """
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11 : 15 if reaped else 13]) / TICK


def pids_named(command: str) -> list[int]:
    """Every running process whose command name (``/proc/PID/comm``) is ``command``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


#: A group's processes, looked up at each reading (backends come and go).
Group = Callable[[], Iterable[int]]


def reading(groups: Mapping[str, Group]) -> dict[str, dict[int, float]]:
    """CPU seconds so far of every process of every group."""
    return {name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in groups.items()}


def read_into(target: dict[str, dict[int, float]], groups: Mapping[str, Group]) -> None:
    """Take a reading into ``target``: for a reading taken by a callback."""
    target.update(reading(groups))


def spent(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict:
    """CPU seconds each group used between two readings (processes seen in both)."""
    return {
        name: round(
            sum(seconds - before[name].get(pid, seconds) for pid, seconds in pids.items()), 3
        )
        for name, pids in after.items()
    }
