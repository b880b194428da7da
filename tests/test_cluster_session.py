"""A node's etcd session (on the fake etcd and a real one): a process that starts again under the same name
ends the session its killed predecessor left, so the locks that session held go at once."""

from __future__ import annotations

import time

import pytest

from bulwark.cluster import keys
from bulwark.cluster.runtime import port_is_free
from bulwark.cluster.session import LeaseSession
from bulwark.cluster.state import NodeBeat
from bulwark.etcd import Compare, Etcd, Op
from tests.support.etcd_helpers import BACKENDS, any_etcd, clean_backend
from tests.support.helpers import free_port

# The fake etcd in the fast tier, a real one in the system tier; emptied around each test.
etcd_backend = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd_backend")
etcd = pytest.fixture(clean_backend, name="etcd")


def beat(started_at: float) -> NodeBeat:
    return NodeBeat("node1", "http://127.0.0.1:1", started_at)


def killed_with_a_lock(etcd: Etcd) -> int:
    """node1 registers, takes a repository lock under its lease, and dies without leaving."""
    first = LeaseSession(etcd, "node1", lambda: beat(time.time() - 60), ttl=30)
    first.join()
    lease = first.lease()
    assert etcd.txn([Compare.absent(keys.lock("r1"))], [Op.put(keys.lock("r1"), "node1/t", lease)]).succeeded
    return lease  # no stop(): the process was killed


def test_a_restarted_node_ends_the_session_its_killed_process_left(etcd: Etcd) -> None:
    old = killed_with_a_lock(etcd)
    seen: list[NodeBeat] = []

    def take_over(previous: NodeBeat) -> bool:
        seen.append(previous)
        return True

    second = LeaseSession(etcd, "node1", lambda: beat(time.time()), ttl=30, take_over=take_over)
    second.join()
    assert [b.name for b in seen] == ["node1"]
    assert etcd.keepalive(old) == 0  # revoked, not left to run out its 30 s
    assert etcd.get(keys.lock("r1")) is None  # and the lock it held went with it
    assert etcd.get(keys.alive("node1")).lease == second.lease()  # type: ignore[union-attr]


def test_a_session_that_may_still_be_running_is_left_alone(etcd: Etcd) -> None:
    old = killed_with_a_lock(etcd)
    second = LeaseSession(etcd, "node1", lambda: beat(time.time()), ttl=30, take_over=lambda previous: False)
    second.join()
    assert etcd.keepalive(old) > 0
    assert etcd.get(keys.lock("r1")) is not None


def test_a_port_someone_listens_on_is_not_free() -> None:
    import socket

    port = free_port()
    assert port_is_free("127.0.0.1", port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not port_is_free("127.0.0.1", port)
