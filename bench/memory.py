"""Resident memory of processes and their children, read from /proc (Linux)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path


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
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
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
