"""HTTP load with ``wrk`` (Debian's package), its Lua scripts in ``bench/lua``."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.cpu import cpu_seconds
from bench.system import BenchError

LUA_DIR = Path(__file__).resolve().parent / "lua"
MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class LoadResult:
    """One bounded wrk run."""

    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    #: CPU time the server's processes spent per request (us), when measured: unlike
    #: req/s, hardly moved by what else the machine runs.
    server_cpu_us: float | None = None

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        """The run as JSON-ready figures."""
        return {**asdict(self), "rate": round(self.rate, 2)}


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user, system) of gunicorn master ``pid`` and its workers, live or reaped.

    A worker that exits (recycled) is reaped by the master, which then counts
    its time as its children's (cutime, cstime): nothing served goes uncounted.
    """
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    # One that exited meanwhile reads as 0: the master counts it once reaped.
    return cpu_seconds(pid) + sum(cpu_seconds(int(child), reaped=False) for child in children)


def require_wrk() -> str:
    """The path of ``wrk``, or BenchError saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(
            "wrk is not installed: `apt-get install -y wrk` (as root), "
            "or run `make bench`, which installs it when it can"
        )
    return path


def parse_wrk_output(text: str) -> LoadResult:
    """Read the line bench/lua/report.lua writes at the end of a run."""
    for line in text.splitlines():
        if line.startswith(MARKER):
            raw = json.loads(line[len(MARKER) :])
            errors = sum(raw[k] for k in ("non_2xx", "connect", "read", "write", "timeout"))
            return LoadResult(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                errors=errors,
                non_2xx=raw["non_2xx"],
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
            )
    raise BenchError(f"wrk printed no result line:\n{text[-2000:]}")


def run_wrk(
    url: str,
    script: str,
    arg: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 2,
) -> LoadResult:
    """Load ``url`` for ``seconds`` with ``connections`` kept-alive connections."""
    wrk = require_wrk()
    threads = max(1, min(threads, connections))
    result = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA_DIR / script),
            url,
            "--",
            arg,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_LUA_DIR": str(LUA_DIR)},
        timeout=seconds + 60,
    )
    if result.returncode != 0:
        raise BenchError(f"wrk failed: {result.stderr[-2000:]}")
    return parse_wrk_output(result.stdout)


def median_result(runs: list[LoadResult]) -> LoadResult:
    """The median of each figure over ``runs`` (req/s, p50, p99 on their own); errors summed."""
    seconds = statistics.median(run.seconds for run in runs)
    return LoadResult(
        requests=round(statistics.median(run.rate for run in runs) * seconds),
        seconds=seconds,
        errors=sum(run.errors for run in runs),
        non_2xx=sum(run.non_2xx for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
    )
