"""Resident memory of processes and their children, read from /proc (Linux).

Three figures per process, from ``/proc/PID/smaps_rollup``:

* RSS: every page it has in memory, shared ones included (what ``ps`` shows);
* USS: the pages only it holds (private clean + dirty): what it costs on its own;
* PSS: its private pages plus its share of each shared page (a page shared by
  three processes counts a third in each): the sum over processes is the
  memory they really take together, where the sum of RSS counts shared pages
  (a gunicorn master's code in its workers, honcho's in its helpers) many times.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import stat_fields


def rss_mb(pid: int) -> float | None:
    """The resident set size of ``pid`` in MiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def private_mb(pid: int) -> float | None:
    """Memory only ``pid`` holds (USS: private clean + dirty pages) in MiB, or None.

    A gunicorn worker shares the pages its master loaded before the fork; this
    is what one more worker really costs.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kib = sum(
        int(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )
    return kib / 1024


def import_floor_mb(modules: list[str]) -> float:
    """RSS of a fresh interpreter that only imports ``modules``: the floor any worker pays."""
    code = (
        f"import {', '.join(modules)}\n"
        "import re\n"
        "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return int(result.stdout.strip()) / 1024


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers under its master)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(int(entry))
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent's pid
            found.append(int(entry))
    return sorted(found)


def private_snapshot(processes: dict[str, int]) -> dict[str, float]:
    """Like :func:`snapshot`, but each process's private memory (USS) in MiB."""
    sizes: dict[str, float] = {}
    for name, pid in processes.items():
        for key, member in [(name, pid)] + [(f"{name}/worker-{c}", c) for c in children(pid)]:
            size = private_mb(member)
            if size is not None:
                sizes[key] = round(size, 1)
    return sizes


def snapshot(processes: dict[str, int]) -> dict[str, float]:
    """RSS in MiB of each named process and, as ``<name>/worker-<pid>``, of its children."""
    sizes: dict[str, float] = {}
    for name, pid in processes.items():
        size = rss_mb(pid)
        if size is not None:
            sizes[name] = round(size, 1)
        for child in children(pid):
            child_size = rss_mb(child)
            if child_size is not None:
                sizes[f"{name}/worker-{child}"] = round(child_size, 1)
    return sizes


def growth(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per process seen throughout: median RSS of the last quarter minus that of the second.

    The first quarter is warm-up (imports, pools, caches filling) and is left out.
    """
    if len(samples) < 4:
        return {}
    quarter = len(samples) // 4
    early, late = samples[quarter : 2 * quarter], samples[-quarter:]
    names = set.intersection(*(set(sample) for sample in samples))
    return {
        name: round(
            statistics.median(s[name] for s in late) - statistics.median(s[name] for s in early), 1
        )
        for name in sorted(names)
    }


@dataclass(frozen=True)
class Sizes:
    """RSS, USS and PSS of one process (or a sum of them), in MiB."""

    rss: float
    uss: float
    pss: float

    def __add__(self, other: Sizes) -> Sizes:
        return Sizes(self.rss + other.rss, self.uss + other.uss, self.pss + other.pss)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready, rounded to 0.1 MiB."""
        return {"rss": round(self.rss, 1), "uss": round(self.uss, 1), "pss": round(self.pss, 1)}


def sizes(pid: int) -> Sizes | None:
    """RSS, USS and PSS of ``pid`` from its smaps_rollup, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            kib[key] = int(parts[0])
    if "Rss" not in kib:  # a zombie, or a kernel thread
        return None
    private = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return Sizes(kib["Rss"] / 1024, private / 1024, kib.get("Pss", 0) / 1024)


def command_line(pid: int) -> list[str]:
    """The argv of ``pid`` (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def describe(argv: list[str]) -> str:
    """A short name for a process of the system, from its command line.

    ``python -m workers.relay auth`` -> ``workers.relay auth``; a gunicorn
    serving ``auth_app:create_app()`` -> ``gunicorn auth_app``; honcho and the
    shells it starts keep their program's name.
    """
    names = [os.path.basename(part) for part in argv]
    module = argv[argv.index("-m") + 1 :] if "-m" in argv[:-1] else []
    if module and module[0] != "gunicorn":
        return " ".join(module)
    if module or "gunicorn" in names[:3]:
        apps = [part.split(":", 1)[0] for part in argv if part.endswith(":create_app()")]
        return f"gunicorn {apps[0]}" if apps else "gunicorn"
    for name in names[:2]:
        if name == "honcho":
            return "honcho"
    return names[0] if names else "?"


def process_tree(root: int) -> list[tuple[str, int]]:
    """``(name, pid)`` of ``root`` and every descendant, parents before their children.

    A child named like its parent (a gunicorn worker under its master, one of
    honcho's helpers under honcho) is ``<parent's name>/worker-<pid>`` or
    ``honcho/helper-<pid>``.
    """
    found: list[tuple[str, int]] = []
    pending: list[tuple[int, str | None]] = [(root, None)]
    while pending:
        pid, parent = pending.pop(0)
        name = describe(command_line(pid))
        if parent is not None and name == parent.split("/", 1)[0]:
            kind = "helper" if name == "honcho" else "worker"
            name = f"{name}/{kind}-{pid}"
        found.append((name, pid))
        pending.extend((child, name) for child in children(pid))
    return found


def tree_sizes(root: int) -> dict[str, Sizes]:
    """:func:`sizes` of every process of :func:`process_tree`, by name (gone ones left out)."""
    measured: dict[str, Sizes] = {}
    for name, pid in process_tree(root):
        size = sizes(pid)
        if size is not None:
            measured[name if name not in measured else f"{name} ({pid})"] = size
    return measured


def total(measured: dict[str, Sizes]) -> Sizes:
    """The sum over processes (the RSS sum counts shared pages once per process)."""
    result = Sizes(0.0, 0.0, 0.0)
    for size in measured.values():
        result = result + size
    return result


def table(measured: dict[str, Sizes]) -> str:
    """A Markdown table: one line per process, then the total."""
    lines = ["| process | RSS MiB | USS MiB | PSS MiB |", "|---|---:|---:|---:|"]
    for name, size in [*measured.items(), ("total", total(measured))]:
        lines.append(f"| {name} | {size.rss:.1f} | {size.uss:.1f} | {size.pss:.1f} |")
    return "\n".join(lines)


#: What the whole ``make run`` system (honcho and every process it starts) may hold, in MiB.
SYSTEM_TARGET_MB = 412
#: What a relay, a consumer or the mailer may hold on its own (RSS), in MiB.
WORKER_TARGET_MB = 45
#: The processes held to WORKER_TARGET_MB.
SMALL_WORKERS = (
    "workers.relay auth",
    "workers.relay user",
    "workers.auth_worker",
    "workers.user_worker",
    "workers.mailer",
)


def exercise(system, urls: dict[str, str], rounds: int) -> None:
    """Put every process of the run to work ``rounds`` times, as a user would.

    Each round registers (auth service, auth relay, user worker, the user
    relay back to the auth worker, the mailer's verification mail), waits for
    the profile, logs in, reads the profile and logs out (a revocation event
    the other way).
    """
    import http.client
    import uuid
    from urllib.parse import urlsplit

    from bench import pipeline
    from common.db import make_engine

    user_engine = make_engine(system.user_db)
    user = urlsplit(urls["user"])
    try:
        for _ in range(rounds):
            account = pipeline.register(urls["auth"], "m" + uuid.uuid4().hex[:12])
            pipeline.wait_for_profile(user_engine, account["id"], timeout=60)
            token = pipeline.login(urls["auth"], account["email"])["access_token"]
            for method, base, path in (
                ("GET", user, "/api/v1/users/me"),
                ("POST", urlsplit(urls["auth"]), "/api/v1/auth/logout"),
            ):
                connection = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
                connection.request(method, path, headers={"Authorization": f"Bearer {token}"})
                connection.getresponse().read()
                connection.close()
    finally:
        user_engine.dispose()


def measure_run(system, rounds: int, settle: float = 3.0) -> dict[str, Sizes]:
    """Start the ``make run`` system under honcho, exercise it, return every process's sizes."""
    import time

    urls = system.start_procfile("honcho")
    try:
        exercise(system, urls, rounds)
        time.sleep(settle)  # the last events, mails and logouts go through
        system.check_alive()
        return tree_sizes(system.processes["honcho"].pid)
    finally:
        system.stop("honcho")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.memory [--rounds N]``: the ``make run`` system's memory, one table."""
    import argparse
    import json

    from bench.system import System

    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="registrations to run first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    with System(bcrypt_rounds=4) as system:
        measured = measure_run(system, args.rounds)
    if args.json:
        print(json.dumps({name: size.to_dict() for name, size in measured.items()}, indent=2))
    else:
        print(table(measured))
        print(f"\ntarget: the total RSS at most {SYSTEM_TARGET_MB} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
