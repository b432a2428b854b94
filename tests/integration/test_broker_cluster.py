"""A RabbitMQ node dies under load: the processes move to the other nodes of the cluster.

The test starts three RabbitMQ nodes of its own on loopback (the machine's
node is not touched) and clusters them. The relays and consumers run as real
processes with ``RABBITMQ_URL`` listing the three nodes, the node leading the
quorum queues first, so every process is connected to it. While 1,000 users
register, that node is killed: every connection breaks and the queues elect a
new leader among the two nodes left. Then every registration has its profile at
the user service and its ``user.created`` answer, once each, nothing is
dead-lettered, and the killed node restarts and rejoins the cluster.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auth_app.models import OutboxEvent as AuthOutbox
from common.events import AUTH_QUEUE, USER_QUEUE
from tests.integration.system import System, fresh_system, wait_until
from tests.integration.test_worker_faults import processed_count, register_many, start_all
from tests.support.rabbitmq_cluster import RabbitCluster, rabbit_cluster
from user_app.models import OutboxEvent as UserOutbox
from workers.broker import connect, dead_letter_queue, declare_queue
from workers.settings import BrokerSettings

pytestmark = pytest.mark.slow

USERS = 1000
#: The broker connections of the relays and consumers, by the names they give them.
PROCESSES = sorted(["auth_relay", "user_relay", "auth_worker", "user_worker"])


class Progress:
    """Samples how many profiles the user service holds, every 100 ms, in a thread."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.system.profile_count()))
            self._stop.wait(0.1)

    def longest_stall(self, start: float, end: float) -> tuple[float, float]:
        """The longest time without a new profile between ``start`` and ``end``: (from, seconds)."""
        moves = [
            at
            for (_, before), (at, count) in pairwise(self.samples)
            if count > before and start < at <= end
        ]
        gaps = [(a, b - a) for a, b in pairwise([start, *moves])] or [(start, 0.0)]
        return max(gaps, key=lambda gap: gap[1])


def declare_topology(url: str) -> None:
    """Both services' queues, declared once the cluster has formed: a member on every node."""
    settings = BrokerSettings(url=url)
    connection = connect(settings, "test")
    try:
        channel = connection.channel()
        for queue in (USER_QUEUE, AUTH_QUEUE):
            declare_queue(channel, queue, settings)
    finally:
        connection.close()


def republished_rows(system: System) -> int:
    """Outbox rows sent more than once: their confirm was lost with the node, or refused."""
    count = 0
    for engine, model in ((system.auth_engine, AuthOutbox), (system.user_engine, UserOutbox)):
        with Session(engine) as session:
            count += session.scalar(
                select(func.count()).select_from(model).where(model.attempts > 1)
            )
    return count


def state(cluster: RabbitCluster, system: System) -> str:
    """Where events wait, for a failure message: the outboxes and each queue."""
    try:
        queues = "; ".join(
            f"{name}: {row['messages']} messages, leader {row['leader']}, online {row['online']}"
            for name, row in sorted(cluster.queues().items())
        )
    except RuntimeError as error:
        queues = f"queues not listed: {error}"
    return f"outbox rows pending: {system.pending_outbox_rows()}; {queues}"


def every_queue_online_on(cluster: RabbitCluster, name: str) -> bool:
    return all(name in queue["online"] for queue in cluster.queues().values())


def test_a_cluster_node_killed_under_load_loses_and_doubles_nothing(tmp_path, capsys):
    timeline: list[str] = []
    began = time.monotonic()

    def note(line: str) -> None:
        timeline.append(f"{time.monotonic() - began:6.1f}s  {line}")

    with rabbit_cluster(tmp_path / "rabbitmq") as cluster:
        note(f"cluster of {len(cluster.nodes)} nodes formed")
        declare_topology(cluster.url())
        queues = cluster.queues()
        for name in (USER_QUEUE, AUTH_QUEUE, dead_letter_queue(USER_QUEUE)):
            assert len(queues[name]["members"]) == 3, f"{name} is not replicated on every node"
        leader = cluster.leader(USER_QUEUE)
        # The leader first: every process connects to it, so its death moves the
        # connections and the queues' leadership at once.
        url = cluster.url(first=leader)

        with fresh_system("cluster", tmp_path, amqp_url=url) as system:
            processes = start_all(system)
            registered: list[str] = []
            loader = threading.Thread(
                target=lambda: registered.extend(register_many(system, USERS))
            )
            with Progress(system) as progress:
                # Connected first, then the load: the kill must land mid-flow.
                cluster.wait_for(
                    lambda: cluster.connections().get(leader.name, []) == PROCESSES,
                    f"the processes did not all connect to {leader.name}",
                )
                loader.start()
                note(f"every process connected to {leader.name}; {USERS} registrations started")
                assert wait_until(lambda: system.profile_count() >= USERS // 4, timeout=90), (
                    "the pipeline did not start"
                )
                at_kill = system.profile_count()
                killed_at = time.monotonic()
                leader.kill()
                note(f"{leader.name} killed (SIGKILL), leading {USER_QUEUE}; {at_kill} profiles")
                cluster.wait_for(
                    lambda: cluster.leader(USER_QUEUE) is not leader, "no new leader elected"
                )
                note(f"{cluster.leader(USER_QUEUE).name} leads {USER_QUEUE}")
                cluster.wait_for(
                    lambda: sorted(sum(cluster.connections().values(), [])) == PROCESSES,
                    "the processes did not reconnect to the nodes left",
                )
                note(f"every process reconnected: {cluster.connections()}")
                loader.join(timeout=240)
                note(f"{len(registered)} registrations answered 201")
                assert len(registered) == USERS
                assert wait_until(lambda: system.profile_count() == USERS, timeout=120), (
                    f"profiles: {system.profile_count()} of {USERS}; {state(cluster, system)}"
                )
                done_at = time.monotonic()
                note(f"all {USERS} profiles at the user service")
            stalled_from, stalled = progress.longest_stall(killed_at - 0.5, done_at)
            note(
                f"longest time without a new profile after the kill: {stalled:.1f}s "
                f"(from {stalled_from - began:.1f}s)"
            )
            # The answers (user.created, through auth_events) must all arrive too,
            # while the node is still down.
            assert wait_until(lambda: system.provisioned_count() == USERS, timeout=120), (
                f"provisioned: {system.provisioned_count()} of {USERS}; {state(cluster, system)}"
            )
            note(f"all {USERS} user.created answers accepted while {leader.name} is down")
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited"

            leader.start()
            leader.wait_ready()
            cluster.wait_for(
                lambda: every_queue_online_on(cluster, leader.name),
                f"{leader.name} did not rejoin every queue",
            )
            assert sorted(cluster.running_nodes(leader)) == sorted(n.name for n in cluster.nodes)
            note(f"{leader.name} restarted and rejoined every queue")
            answers = system.user_created_answers()
            assert sorted(answers) == sorted(registered), "a user.created is missing or doubled"
            assert processed_count(system) == USERS
            queues = cluster.queues()
            dead = {
                name: queues[dead_letter_queue(name)]["messages"]
                for name in (USER_QUEUE, AUTH_QUEUE)
            }
            assert dead == {USER_QUEUE: 0, AUTH_QUEUE: 0}, f"dead-lettered: {dead}"
            note(
                f"lost: nothing ({len(set(answers))} profiles and user.created answers for "
                f"{USERS} users, none twice); dead-lettered: 0; outbox rows sent more than "
                f"once (a confirm lost with the node, or a refusal): {republished_rows(system)}"
            )
    with capsys.disabled():
        print("\nbroker node failover timeline:\n" + "\n".join(timeline))
