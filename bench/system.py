"""The system under measurement: fresh databases, vhost, keys, and every process of the Procfile.

Everything is started here, on this machine, the way the Procfile starts it
(``gunicorn --config gunicorn.conf.py ...``, ``python -m workers.relay auth``,
...), with throttling off and quiet logs so that neither limits nor log volume
shape the figures.
"""

from __future__ import annotations

import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.support.servers import fresh_postgres_database, fresh_vhost, write_test_keys

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-Horse-battery-9"


class BenchError(Exception):
    """The bench cannot run here; the message says what is missing and how to fix it."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_concurrency() -> tuple[int, int]:
    """``(workers, threads)`` as gunicorn.conf.py sets them in this environment."""
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    return int(settings["workers"]), int(settings["threads"])


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200; raise BenchError with the log tail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{url} process exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{url} did not come up in {timeout:.0f}s: {log.read_text()[-2000:]}")


class System:
    """Fresh namespaces plus the processes started in them; close() stops and drops all."""

    def __init__(self, *, bcrypt_rounds: int):
        self.bcrypt_rounds = bcrypt_rounds
        self._stack = ExitStack()
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def __enter__(self) -> System:
        stack = self._stack
        self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        self.private_key, self.public_key = write_test_keys(self.tmp / "keys")
        self.auth_db = stack.enter_context(fresh_postgres_database("bench_auth"))
        self.user_db = stack.enter_context(fresh_postgres_database("bench_user"))
        self.amqp_url = stack.enter_context(fresh_vhost("bench"))
        self.redis_prefix = f"bench_{uuid.uuid4().hex[:8]}:"
        stack.callback(self._clear_redis)
        stack.callback(self.stop_all)
        for name in ("auth", "user"):
            self.run_checked(sys.executable, "-m", "alembic", "-n", name, "upgrade", "head")
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _clear_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        keys = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()

    # -- environment ---------------------------------------------------------
    def environ(self, **extra: str) -> dict[str, str]:
        """The environment every process of the system gets."""
        env = dict(os.environ)
        # A developer's machine, as under `make run`: the development pepper is allowed.
        env.setdefault("APP_ENV", "development")
        env.update(
            AUTH_DATABASE_URL=self.auth_db,
            USER_DATABASE_URL=self.user_db,
            RABBITMQ_URL=self.amqp_url,
            AUTH_REDIS_KEY_PREFIX=self.redis_prefix,
            RATELIMIT_KEY_PREFIX=self.redis_prefix + "limiter",
            PRIVATE_KEY_PATH=str(self.private_key),
            PUBLIC_KEY_PATH=str(self.public_key),
            RATELIMIT_ENABLED="false",
            LOGIN_MAX_FAILURES="0",
            LOG_LEVEL="warning",
            LOG_FORMAT="text",
            BCRYPT_ROUNDS=str(self.bcrypt_rounds),
        )
        env.update(extra)
        return env

    def run_checked(self, *args: str) -> None:
        """Run a command to completion in the system's environment; raise BenchError on failure."""
        result = subprocess.run(
            args, cwd=ROOT, env=self.environ(), capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise BenchError(f"{' '.join(args)} failed: {result.stderr[-2000:]}")

    # -- processes -----------------------------------------------------------
    def spawn(self, name: str, *args: str, cwd: Path = ROOT, **extra_env: str) -> subprocess.Popen:
        """Start one process in ``cwd`` with its output in ``<tmp>/<name>.log``."""
        log = self.tmp / f"{name}.log"
        with log.open("ab") as handle:
            process = subprocess.Popen(
                args, cwd=cwd, env=self.environ(**extra_env), stdout=handle, stderr=handle
            )
        self.processes[name] = process
        return process

    def start_web(
        self,
        name: str,
        app_uri: str,
        *extra_args: str,
        env: dict[str, str] | None = None,
        source: Path = ROOT,
    ) -> str:
        """Start gunicorn as the Procfile does on a free port; return its base URL once ready.

        ``env`` is added to the system's environment for this process. ``source``
        is the source tree it serves (its gunicorn.conf.py and its packages,
        which the working directory puts before the installed ones): another
        commit's checkout (see :meth:`checkout`) serves that commit's code.
        """
        port = free_port()
        self.ports[name] = port
        process = self.spawn(
            name,
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            *extra_args,
            app_uri,
            cwd=source,
            **(env or {}),
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", process, self.tmp / f"{name}.log")
        return base

    def start_procfile(self, name: str = "honcho") -> dict[str, str]:
        """Start the Procfile's processes under honcho as ``make run`` does; their base URLs.

        The processes are the Makefile's RUN_PROCESSES (every type but
        ``release`` and ``web``), the venv first on PATH, mail to the
        Procfile's mailsink. Only the addresses differ: free ports for the two
        web services and the sink (through a copy of the Procfile), so the run
        takes no port another instance on this host may hold. Returns
        ``{"auth": url, "user": url}`` once both answer.
        """
        procfile = (ROOT / "Procfile").read_text()
        sink = free_port()
        copy = self.tmp / f"{name}.Procfile"
        copy.write_text(procfile.replace("127.0.0.1:1025", f"127.0.0.1:{sink}"))
        ports = {"auth": free_port(), "user": free_port()}
        types = [
            line.partition(":")[0].strip()
            for line in procfile.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        venv_bin = Path(sys.executable).parent
        process = self.spawn(
            name,
            str(venv_bin / "honcho"),
            "start",
            "--procfile",
            str(copy),
            "--app-root",
            str(ROOT),
            *[kind for kind in types if kind not in ("release", "web")],
            PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            SMTP_URL=f"smtp://127.0.0.1:{sink}",
            AUTH_BIND=f"127.0.0.1:{ports['auth']}",
            USER_BIND=f"127.0.0.1:{ports['user']}",
        )
        urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
        for url in urls.values():
            wait_http(url + "/health", process, self.tmp / f"{name}.log")
        return urls

    def checkout(self, commit: str) -> Path:
        """The source tree of ``commit``, exported under the system's temporary directory.

        ``git archive`` rather than ``git worktree add``: the repository's own
        worktree list is left alone, and nothing outlives the run.
        """
        target = self.tmp / f"src-{commit}"
        if not target.exists():
            target.mkdir()
            archive = subprocess.run(
                ["git", "archive", "--format=tar", commit],
                cwd=ROOT,
                capture_output=True,
                timeout=120,
            )
            if archive.returncode != 0:
                raise BenchError(f"git archive {commit} failed: {archive.stderr.decode()[-500:]}")
            subprocess.run(
                ["tar", "-x", "-C", str(target)], input=archive.stdout, check=True, timeout=120
            )
        return target

    def start_worker(self, name: str, *module_args: str) -> subprocess.Popen:
        """Start ``python -m <module_args>`` (a relay or a worker) as the Procfile does."""
        return self.spawn(name, sys.executable, "-m", *module_args)

    def check_alive(self) -> None:
        """Raise BenchError naming any process of the system that has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.tmp / f"{name}.log").read_text()[-2000:]
                raise BenchError(f"{name} exited with {process.returncode}: {log}")

    @contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """Hold one process still (SIGSTOP) for the block, then let it go on (SIGCONT)."""
        process = self.processes[name]
        process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.send_signal(signal.SIGCONT)

    def stop(self, name: str) -> None:
        """SIGTERM one process and wait for it (SIGKILL after 20 s)."""
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        """Stop every process this system started."""
        for name in list(self.processes):
            self.stop(name)
