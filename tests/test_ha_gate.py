"""No replication runs across a promotion: the gate between the serving node's HA loop and
``bulwark repl promote``, and a fetch that gives itself up when replication is stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from bulwark.clock import SystemClock
from bulwark.errors import GitError, Unavailable
from bulwark.git.runner import GitRunner
from bulwark.ha import state as ha_state
from bulwark.ha.gate import ReplicationGate
from bulwark.ha.loop import HALoop, PrimaryDuties
from bulwark.ha.promote import promote
from bulwark.ha.replicator import Replicator
from bulwark.processes import pid_exists
from bulwark.roles import NodeRole
from bulwark.store.changes import ChangeLog
from bulwark.store.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "metadata.db")
    ha_state.save(s, ha_state.HAState(role=NodeRole.HA_REPLICA, epoch=3, primary_url="http://10.0.0.1:8080",
                                      primary_id="p", credential="c", replicating=True))
    yield s
    s.close()


class CycleUnderWay:
    """A replicator whose cycle is a fetch that runs until released, and that notes what the node
    was when it ended (it writes what it fetched then)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.started = threading.Event()
        self.release = threading.Event()
        self.role_at_end = ""
        self.failing = False

    def run_once(self) -> str:
        self.started.set()
        self.release.wait(30)
        self.role_at_end = ha_state.load(self.store).role
        return "fetched 1 repositories"

    def tidy(self) -> str | None:
        return None


class NothingToTidy:
    """A replicator that is never asked to replicate; the loop still asks it to tidy."""

    failing = False

    def tidy(self) -> str | None:
        return None


@pytest.mark.system
def test_a_promotion_waits_for_the_replication_cycle_under_way(store: SQLiteStore, tmp_path: Path) -> None:
    cycle = CycleUnderWay(store)
    loop = HALoop(store, cast(Replicator, cycle), PrimaryDuties(store, cast(ChangeLog, store), SystemClock()),
                  gate=ReplicationGate(tmp_path))
    serving = threading.Thread(target=loop.run_once)
    serving.start()
    assert cycle.started.wait(10)

    told: list[str] = []
    report: list[object] = []
    promoting = threading.Thread(target=lambda: report.append(promote(
        store, cast(ChangeLog, store), cast(Replicator, None), client=None,
        gate=ReplicationGate(tmp_path), waiting=lambda: told.append("waiting"))))
    promoting.start()
    promoting.join(1.0)  # long enough to finish, were it not held at the gate
    assert ha_state.load(store).replicating is False  # the flag is down at once
    cycle.release.set()
    serving.join(10)
    promoting.join(10)
    assert cycle.role_at_end == "ha-replica"  # the cycle ended before this node took writes
    assert told == ["waiting"] and len(report) == 1
    assert ha_state.load(store).role == "ha-primary" and ha_state.load(store).epoch == 4
    # Once promoted, the loop does a primary's work and never enters a replication cycle again.
    cycle.started.clear()
    assert loop.run_once()[0].startswith("still primary") and not cycle.started.is_set()


def test_a_promotion_that_cannot_get_the_gate_says_why_and_leaves_replication_as_it_was(
    store: SQLiteStore, tmp_path: Path
) -> None:
    with ReplicationGate(tmp_path).cycle() as ours:
        assert ours
        with pytest.raises(Unavailable, match="did not stop within 0s"):
            promote(store, cast(ChangeLog, store), cast(Replicator, None), client=None,
                    gate=ReplicationGate(tmp_path), gate_timeout=0.2)
    state = ha_state.load(store)
    assert state.role == "ha-replica" and state.replicating is True and state.epoch == 3


def test_while_a_promotion_holds_the_gate_no_cycle_begins(tmp_path: Path) -> None:
    with ReplicationGate(tmp_path).exclusive(1.0), ReplicationGate(tmp_path).cycle() as ours:
        assert not ours
    with ReplicationGate(tmp_path).cycle() as ours:
        assert ours


def test_the_gate_of_a_killed_process_is_free(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from bulwark.ha.gate import "
         "ReplicationGate\nwith ReplicationGate(Path(sys.argv[1])).cycle() as ours:\n"
         "    print(ours, flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        with ReplicationGate(tmp_path).cycle() as ours:
            assert not ours
    finally:
        holder.kill()
        holder.wait()
    with ReplicationGate(tmp_path).exclusive(5.0):
        pass


def test_a_git_that_may_be_stopped_is_stopped_when_asked(tmp_path: Path) -> None:
    git = GitRunner(tmp_path)
    asked = threading.Event()

    def stop() -> bool:
        asked.set()
        return True

    with pytest.raises(GitError, match="was stopped"):
        git.run(["-c", "alias.snooze=!sleep 30", "snooze"], timeout=60, stop=stop)
    assert asked.is_set()
    done = git.run(["-c", "alias.hello=!echo hello", "hello"], stop=lambda: False)
    assert done.stdout == b"hello\n"


class Resumer:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "finished"


def test_a_promotion_whose_process_died_is_finished_by_the_loop(store: SQLiteStore, tmp_path: Path) -> None:
    ha_state.save(store, ha_state.load(store).with_(replicating=False, promoting=4242))
    resume, alive = Resumer(), {4242: True}
    loop = HALoop(store, cast(Replicator, NothingToTidy()),
                  PrimaryDuties(store, cast(ChangeLog, store), SystemClock()),
                  gate=ReplicationGate(tmp_path), resume=resume, alive=lambda pid: alive.get(pid, False))
    assert loop.run_once()[0] == "a promotion is under way (process 4242)" and resume.calls == 0
    alive[4242] = False
    assert loop.run_once()[0] == "finished" and resume.calls == 1


def test_a_promotion_records_its_process_until_it_ends(store: SQLiteStore, tmp_path: Path) -> None:
    seen: list[int | None] = []
    report = promote(store, cast(ChangeLog, store), cast(Replicator, None), client=None,
                     gate=ReplicationGate(tmp_path), pid=77, waiting=None)
    assert report.epoch == 4 and ha_state.load(store).promoting is None
    ha_state.save(store, ha_state.HAState(role=NodeRole.HA_REPLICA, epoch=3, replicating=True))
    with ReplicationGate(tmp_path).cycle() as ours:
        assert ours
        with pytest.raises(Unavailable):
            promote(store, cast(ChangeLog, store), cast(Replicator, None), client=None,
                    gate=ReplicationGate(tmp_path), gate_timeout=0.3,
                    waiting=lambda: seen.append(ha_state.load(store).promoting))
    assert seen == [os.getpid()]  # recorded while it waited
    state = ha_state.load(store)
    assert state.promoting is None and state.replicating is True and state.role == "ha-replica"


def test_a_killed_promotion_not_yet_reaped_counts_as_gone() -> None:
    """The loop's test of the promoting process: a killed CLI whose parent has not collected it
    yet is a zombie, and must not hold the promotion up for ever."""
    assert pid_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    deadline = time.monotonic() + 10
    while pid_exists(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_exists(child.pid)
    child.wait()
