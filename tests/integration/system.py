"""Both services on PostgreSQL with their relays and workers, for the loop tests.

``System`` builds the two Flask apps (test clients), fresh databases created
from the migrations, and runs the relays and consumers either as threads (fast
loop tests) or as real processes (crash and restart tests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth_app import create_app as create_auth_app
from auth_app import models as auth_models
from common.db import make_engine
from tests.support.broker import Running
from user_app import create_app as create_user_app
from user_app import models as user_models
from workers import auth_worker, user_worker
from workers.relay import Relay
from workers.settings import BrokerSettings

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct-Horse-battery-9"
# The roles both services of the system know.
ROLES = ("user", "admin", "editor")


def migrate(name: str, url: str) -> None:
    """Build a service's schema with its real migrations."""
    config = Config(str(ROOT / "alembic.ini"), ini_section=name)
    config.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()
    command.upgrade(config, "head")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class System:
    """Two services, their databases, and the processes that join them."""

    def __init__(self, *, auth_url, user_url, amqp_url, redis_prefix, keys, queue_type="quorum"):
        self.auth_url, self.user_url, self.amqp_url = auth_url, user_url, amqp_url
        self.redis_prefix = redis_prefix
        self.private_path, self.public_path = keys
        self.queue_type = queue_type
        migrate("auth", auth_url)
        migrate("user", user_url)
        self.auth_app = create_auth_app(self.auth_config())
        self.user_app = create_user_app(
            {
                "TESTING": True,
                "DATABASE_URL": user_url,
                "PUBLIC_KEY_PATH": self.public_path,
                "ROLES": ROLES,
                "LOG_FORMAT": "text",
            }
        )
        self.auth = self.auth_app.test_client()
        self.user = self.user_app.test_client()
        self.auth_engine = make_engine(auth_url)
        self.user_engine = make_engine(user_url)
        self.processes: list[subprocess.Popen] = []

    def auth_config(self) -> dict:
        """Flask settings of the auth app under test."""
        return {
            "TESTING": True,
            "DATABASE_URL": self.auth_url,
            "REDIS_KEY_PREFIX": self.redis_prefix,
            "ROLES": ROLES,
            "RATELIMIT_ENABLED": False,
            "RATELIMIT_KEY_PREFIX": self.redis_prefix + "limiter",
            "PRIVATE_KEY_PATH": self.private_path,
            "PUBLIC_KEY_PATH": self.public_path,
            "BCRYPT_ROUNDS": 4,
            "LOG_FORMAT": "text",
        }

    # -- processes -----------------------------------------------------------
    def environ(self) -> dict:
        """Environment of the worker processes."""
        env = dict(os.environ)
        env.update(
            AUTH_DATABASE_URL=self.auth_url,
            USER_DATABASE_URL=self.user_url,
            RABBITMQ_URL=self.amqp_url,
            AUTH_REDIS_KEY_PREFIX=self.redis_prefix,
            RABBITMQ_QUEUE_TYPE=self.queue_type,
            PRIVATE_KEY_PATH=str(self.private_path),
            PUBLIC_KEY_PATH=str(self.public_path),
            ROLES=",".join(ROLES),
            LOG_FORMAT="text",
            LOG_LEVEL="warning",
        )
        return env

    def spawn(self, *args: str) -> subprocess.Popen:
        """Start ``python -m <args>`` as a real worker process."""
        process = subprocess.Popen([sys.executable, "-m", *args], env=self.environ(), cwd=ROOT)
        self.processes.append(process)
        return process

    def settings(self) -> BrokerSettings:
        """Broker settings of in-process relays and consumers."""
        return BrokerSettings(url=self.amqp_url, queue_type=self.queue_type, max_tries=3)

    def threads(self, stack: ExitStack) -> None:
        """Run both relays and both consumers in threads until ``stack`` closes."""
        settings = self.settings()
        user_consumer = user_worker.build_consumer(
            self.user_engine, settings, self.user_app.extensions["settings"]
        )
        auth_settings = self.auth_app.extensions["settings"]
        auth_consumer = auth_worker.build_consumer(
            self.auth_engine, settings, auth_worker.revocation_store(auth_settings), auth_settings
        )
        for runner in (
            Relay("auth_relay", auth_models.OutboxEvent, self.auth_engine, settings),
            Relay("user_relay", user_models.OutboxEvent, self.user_engine, settings),
            user_consumer,
            auth_consumer,
        ):
            stack.enter_context(Running(runner))

    def stop_processes(self) -> None:
        """SIGTERM every spawned process and wait for it."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=20)
        self.processes.clear()

    def close(self) -> None:
        """Stop processes and release the engines."""
        self.stop_processes()
        self.auth_engine.dispose()
        self.user_engine.dispose()
        self.auth_app.extensions["database"].engine.dispose()
        self.user_app.extensions["database"].engine.dispose()

    # -- user-level actions --------------------------------------------------
    def register(self, name: str | None = None) -> dict:
        """Register a user at the auth service; returns its user object."""
        name = name or f"u{uuid.uuid4().hex[:12]}"
        response = self.auth.post(
            "/api/v1/auth/register",
            json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
        )
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def login(self, email: str) -> dict:
        """Log in at the auth service; returns the token pair (asserts 200)."""
        response = self.auth.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    # -- what the databases hold ---------------------------------------------
    def profile_count(self) -> int:
        with Session(self.user_engine) as session:
            return session.scalar(select(func.count()).select_from(user_models.Profile))

    def profile(self, user_id: str):
        with Session(self.user_engine) as session:
            return session.get(user_models.Profile, user_id)

    def account(self, user_id: str):
        with Session(self.auth_engine) as session:
            return session.get(auth_models.User, user_id)

    def provisioned_count(self) -> int:
        with Session(self.auth_engine) as session:
            return session.scalar(
                select(func.count())
                .select_from(auth_models.User)
                .where(auth_models.User.provisioned_at.is_not(None))
            )

    def pending_outbox_rows(self) -> int:
        """Events of either service its relay has not published yet."""
        count = 0
        for engine, model in (
            (self.auth_engine, auth_models.OutboxEvent),
            (self.user_engine, user_models.OutboxEvent),
        ):
            with Session(engine) as session:
                count += (
                    session.scalar(
                        select(func.count()).select_from(model).where(model.published_at.is_(None))
                    )
                    or 0
                )
        return count

    def user_created_answers(self) -> list[str]:
        """The user ids of every user.created the user service wrote (duplicates show)."""
        with Session(self.user_engine) as session:
            rows = session.scalars(
                select(user_models.OutboxEvent.body).where(
                    user_models.OutboxEvent.routing_key == "user.created"
                )
            )
            return [json.loads(body)["data"]["user_id"] for body in rows]


@contextmanager
def fresh_system(
    label: str,
    keys_dir: Path,
    amqp_url: str | None = None,
    database_urls: tuple[str, str] | None = None,
):
    """A System on fresh databases and a fresh vhost (unless given), with a Redis prefix of its own.

    ``database_urls`` are the auth and user databases, empty, when the test brings its own.
    """
    from tests.support.servers import (
        check_redis,
        fresh_postgres_database,
        fresh_vhost,
        run_id,
        write_test_keys,
    )

    check_redis()
    keys = write_test_keys(keys_dir)
    with ExitStack() as stack:
        if amqp_url is None:
            amqp_url = stack.enter_context(fresh_vhost(label))
        if database_urls is None:
            database_urls = (
                stack.enter_context(fresh_postgres_database(f"{label}_auth")),
                stack.enter_context(fresh_postgres_database(f"{label}_user")),
            )
        auth_url, user_url = database_urls
        system = System(
            auth_url=auth_url,
            user_url=user_url,
            amqp_url=amqp_url,
            redis_prefix=f"test:{label}:{run_id()}:",
            keys=keys,
        )
        try:
            yield system
        finally:
            system.close()
