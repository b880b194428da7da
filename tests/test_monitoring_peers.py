"""The pure parts of 'is the server, the primary, the replica there?': the server's record and state,
the checks' sentences, the HA peer judgements, the facts `bulwark status` gets from a server, the
metrics and their alert rules (run by promtool). The watch and the epoch check run against a real
SQLite store with fake peers and a fake clock."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bulwark.errors import PeerUnreachable
from bulwark.ha import state as ha_state
from bulwark.ha.health import Level, PrimaryState, Thresholds, judge_primary, judge_reach, observe
from bulwark.ha.loop import PrimaryDuties
from bulwark.ha.report import replication_report
from bulwark.ha.state import HAState, PeerCheck, ReplicaRecord
from bulwark.ha.watch import PrimaryWatch
from bulwark.monitoring import running
from bulwark.monitoring.checks import CheckName, check_server, evaluate
from bulwark.monitoring.checks import Thresholds as Limits
from bulwark.monitoring.facts import ReplicationFacts, ServerFacts, ServerState, facts_from_json, facts_to_json
from bulwark.monitoring.metrics import node_metrics
from bulwark.monitoring.probe import Answer, server_state
from bulwark.monitoring.running import Liveness
from bulwark.roles import NodeRole
from bulwark.store.sqlite import SQLiteStore
from tests.support.helpers import FakeClock
from tests.support.monitoring_helpers import REPLICA_REPORT, facts, machine

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the server's record -----------------------------------------------------------------------------


def test_the_record_is_replaced_whole_private_and_removed_only_by_its_own_server(tmp_path: Path) -> None:
    first = running.new_record("0.0.0.0", 8080)
    assert first.listen == "0.0.0.0:8080" and first.url == "http://127.0.0.1:8080"
    assert running.new_record("::", 9000).url == "http://[::1]:9000"
    running.write(tmp_path, first)
    assert running.read(tmp_path) == first
    assert (tmp_path / running.RECORD).stat().st_mode & 0o777 == 0o600  # it holds the monitor secret
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    second = running.new_record("127.0.0.1", 8081, pid=first.pid + 1)
    running.write(tmp_path, second)
    running.remove(tmp_path, first)  # an older server stopping does not take the newer one's record
    assert running.read(tmp_path) == second
    running.remove(tmp_path, second)
    assert running.read(tmp_path) is None
    stopped = running.read(tmp_path, running.STOPPED)
    assert stopped is not None and stopped.pid == second.pid and stopped.stopped_at and stopped.secret == ""
    (tmp_path / running.RECORD).write_text("{not json")
    assert running.read(tmp_path) is None


def test_liveness_tells_a_dead_or_reused_pid_from_a_live_one() -> None:
    record = running.new_record("127.0.0.1", 8080, pid=4242)
    here = record.hostname

    def same(pid: int) -> str | None:
        return record.process_start

    assert running.liveness(record, exists=lambda pid: True, started=same, hostname=here) is Liveness.RUNNING
    assert running.liveness(record, exists=lambda pid: False, started=same, hostname=here) is Liveness.GONE
    record = dataclasses.replace(record, process_start="boot:100")
    reused = running.liveness(record, exists=lambda pid: True, started=lambda pid: "boot:200", hostname=here)
    assert reused is Liveness.GONE
    unknown = running.liveness(record, exists=lambda pid: True, started=lambda pid: None, hostname=here)
    assert unknown is Liveness.RUNNING  # without a start time to compare, the pid is all there is
    assert running.liveness(record, exists=lambda pid: False, hostname="elsewhere") is Liveness.ELSEWHERE
    # This very process, for real.
    me = running.new_record("127.0.0.1", 1)
    assert running.liveness(me) is Liveness.RUNNING
    assert running.pid_exists(os.getpid())


def test_a_zombie_counts_as_gone(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while running.pid_exists(child.pid) and datetime.now(UTC) < deadline:
            time.sleep(0.01)  # until it has exited and waits, unreaped, as a zombie
        assert not running.pid_exists(child.pid)
    finally:
        child.wait()


def test_server_states_and_their_sentences() -> None:
    record = running.new_record("127.0.0.1", 8080)
    answered = Answer(200, {"role": "standalone"})
    refused = Answer(error="ConnectError: refused")
    assert server_state(None, None, None, None) is ServerState.NOT_STARTED
    assert server_state(None, record, None, None) is ServerState.STOPPED
    assert server_state(record, None, Liveness.GONE, None) is ServerState.CRASHED
    assert server_state(record, None, Liveness.RUNNING, refused) is ServerState.NOT_ANSWERING
    assert server_state(record, None, Liveness.ELSEWHERE, refused) is ServerState.NOT_ANSWERING
    assert server_state(record, None, Liveness.RUNNING, answered) is ServerState.ANSWERING

    def check(state: ServerState, **kw: Any) -> tuple[Level, str]:
        c = check_server(ServerFacts(state, "/srv/bulwark", url="http://127.0.0.1:8080", pid=7, **kw))
        assert c.name is CheckName.SERVER
        return c.level, c.detail

    level, detail = check(ServerState.ANSWERING, node={"facts": {}})
    assert level is Level.OK and "answers at http://127.0.0.1:8080 (pid 7" in detail
    level, detail = check(ServerState.ANSWERING, node_error="HTTP 401")
    assert level is Level.WARNING and "HTTP 401" in detail
    level, detail = check(ServerState.CRASHED)
    assert level is Level.CRITICAL and "killed or crashed" in detail and "pid 7" in detail
    level, detail = check(ServerState.STOPPED, stopped_at="2026-01-01T12:00:00+00:00")
    assert level is Level.CRITICAL and "stopped cleanly at 2026-01-01T12:00:00+00:00" in detail
    level, detail = check(ServerState.NOT_ANSWERING, error="no answer within 3s")
    assert level is Level.CRITICAL and "process 7 runs but does not answer" in detail
    level, detail = check(ServerState.NOT_STARTED)
    assert level is Level.CRITICAL and "no server has recorded itself in /srv/bulwark" in detail


# -- HA peers ----------------------------------------------------------------------------------------


def test_a_primary_is_down_timeout_seconds_after_its_last_answer() -> None:
    check = PeerCheck("http://p:8080", since=at(0))
    assert judge_primary(None, at(0), 10).state is PrimaryState.UNCHECKED
    assert judge_primary(check, at(1), 10).state is PrimaryState.LATE  # not asked yet
    check = observe(check, {"role": "ha-primary", "epoch": 3}, at(1))
    up = judge_primary(check, at(2), 10)
    assert (up.state, up.level, check.epoch) == (PrimaryState.UP, Level.OK, 3)
    check = observe(check, "ConnectError: refused", at(3))
    late = judge_primary(check, at(10.9), 10)
    assert late.state is PrimaryState.LATE and late.level is Level.OK and "refused" in late.detail
    # Judged when read: down at the last answer plus the timeout, whenever the next ask comes.
    down = judge_primary(check, at(11), 10)
    assert down.state is PrimaryState.DOWN and down.level is Level.CRITICAL
    assert "has not answered for 10s" in down.detail and "bulwark repl promote" in down.detail
    assert down.silent_seconds == 10
    again = observe(check, {"role": "ha-primary"}, at(12))
    assert judge_primary(again, at(12), 10).state is PrimaryState.UP and again.failing_since is None
    # Nobody asking (the replica's server is not running): a warning, not a verdict on the primary.
    stale = judge_primary(again, at(30), 10)
    assert stale.state is PrimaryState.UNCHECKED and stale.level is Level.WARNING and "running" in stale.detail
    fenced = observe(again, {"role": "ha-primary", "fenced": True}, at(13))
    assert judge_primary(fenced, at(13), 10).state is PrimaryState.NOT_PRIMARY


def test_a_restarted_replica_gives_its_primary_the_whole_timeout() -> None:
    # Last answered an hour ago, by an earlier run; this run began asking at 3600.
    check = PeerCheck("http://p", since=at(3600), answered_at=at(0))
    check = observe(check, "ConnectError", at(3601))
    assert judge_primary(check, at(3609), 10).state is PrimaryState.LATE
    assert judge_primary(check, at(3610), 10).state is PrimaryState.DOWN


def test_reach_of_a_replica() -> None:
    check = PeerCheck("http://r:1", since=at(0))
    assert judge_reach(None, at(0)) == (None, "not checked yet")
    assert judge_reach(observe(check, {"role": "ha-replica"}, at(1)), at(2)) == (True, "reachable")
    failed = observe(check, "ConnectError: refused", at(1))
    reachable, detail = judge_reach(failed, at(2))
    assert reachable is False and "cannot reach it at http://r:1" in detail and "refused" in detail
    assert judge_reach(failed, at(100))[0] is None  # too old to say


class FakePeer:
    """A peer's /status: a body, or the error it fails with."""

    def __init__(self, body: dict[str, Any] | None = None) -> None:
        self.body = body
        self.asked: list[str] = []

    def __call__(self, url: str, timeout: float) -> dict[str, Any]:
        self.asked.append(url)
        if self.body is None:
            raise PeerUnreachable("ConnectError: [Errno 111] Connection refused")
        return self.body


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "metadata.db")


def test_the_watch_asks_the_primary_and_the_report_judges_it(store: SQLiteStore,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(at(0))
    primary = FakePeer({"role": "ha-primary", "epoch": 1})
    watch = PrimaryWatch(store, clock, timeout=10, ask=primary)
    assert watch.run_once() == "not a replica" and primary.asked == []
    ha_state.save(store, HAState(role=NodeRole.HA_REPLICA, epoch=1, primary_url="http://p:8080", replicating=True))
    watch.run_once()
    report = replication_report(store, store, now=at(1), limits=Thresholds(primary_timeout=10))
    assert report["primary"]["state"] == "up"
    assert next(s for s in report["streams"] if s["name"] == "primary")["level"] == "OK"

    primary.body = None
    caplog.set_level(logging.INFO, logger="bulwark.ha")
    for second in range(2, 14, 2):
        clock.current = at(second)
        watch.run_once()
    report = replication_report(store, store, now=at(12), limits=Thresholds(primary_timeout=10))
    assert report["primary"]["state"] == "down" and report["level"] == "CRITICAL" and report["exit_code"] == 2
    assert report["primary"]["seconds_since_answer"] == 12
    downs = [r for r in caplog.records if "primary down" in r.getMessage()]
    assert len(downs) == 1 and downs[0].levelno == logging.WARNING  # once, not at every ask
    facts = ReplicationFacts.from_report(report)
    assert facts is not None and facts.primary is not None and not facts.primary.up
    assert facts.summary.startswith("primary: http://p:8080 has not answered")

    # Promoted: nothing left to watch.
    ha_state.save(store, HAState(role=NodeRole.HA_PRIMARY, epoch=2))
    watch.run_once()
    assert ha_state.load_primary_check(store) is None


def test_the_epoch_check_notes_and_warns_once_about_an_unreachable_replica(
        store: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(at(0))
    ha_state.save(store, HAState(role=NodeRole.HA_PRIMARY, epoch=1))
    ha_state.save_replicas(store, [ReplicaRecord("r1", "http://r1:8080", "hash", at(0).isoformat(),
                                                 last_seen=at(0).isoformat())])
    replica = FakePeer(None)
    duties = PrimaryDuties(store, store, clock, ask=replica)
    caplog.set_level(logging.INFO, logger="bulwark.ha")
    ha = ha_state.load(store)
    assert "could not ask replicas r1" in duties.check_epochs(ha)
    duties.check_epochs(ha)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "r1 at http://r1:8080 does not answer" in warnings[0].getMessage()
    report = replication_report(store, store, now=at(1), limits=Thresholds())
    (row,) = report["replicas"]
    assert row["reachable"] is False and row["level"] == "WARNING" and report["level"] == "WARNING"
    assert "cannot reach it at http://r1:8080" in row["reach"]
    primary = ReplicationFacts.from_report(report)
    assert primary is not None and "replica r1: the primary cannot reach it" in primary.summary

    replica.body = {"role": "ha-replica", "epoch": 1}
    assert duties.check_epochs(ha) == "still primary: no peer knows an epoch above 1"
    assert any("r1 answers again" in r.getMessage() for r in caplog.records)
    assert replication_report(store, store, now=at(1), limits=Thresholds())["replicas"][0]["reachable"] is True
    # A replica promoted over this primary: fenced, as before.
    replica.body = {"role": "ha-primary", "epoch": 2}
    assert duties.check_epochs(ha).startswith("fenced this node")


# -- what bulwark status gets from a server, and the metrics -----------------------------------------


def test_facts_survive_the_trip_from_the_server() -> None:
    report = {**REPLICA_REPORT, "primary": {"state": "down", "level": "CRITICAL", "detail": "gone",
                                            "seconds_since_answer": 12.0}}
    replica = facts(NodeRole.HA_REPLICA, serving=False, reason="replica of p",
                    replication=ReplicationFacts.from_report(report))
    back = facts_from_json(json.loads(json.dumps(facts_to_json(replica))), machine())
    assert back == replica
    never = facts(NodeRole.HA_REPLICA, replication=ReplicationFacts.from_report({**report, "lag_seconds": None}))
    assert facts_from_json(json.loads(json.dumps(facts_to_json(never))), machine()) == never
    primary = facts(NodeRole.HA_PRIMARY, replication=ReplicationFacts.from_report({
        "role": "ha-primary", "level": "WARNING",
        "replicas": [{"node_id": "r1", "url": "http://r1", "level": "WARNING", "seconds_since_seen": None,
                      "lag_changes": 0, "reachable": False, "reach": "cannot reach it"}]}))
    assert facts_from_json(json.loads(json.dumps(facts_to_json(primary))), machine()) == primary
    with pytest.raises(ValueError):
        facts_from_json({"name": "x"}, machine())


def test_peer_metrics() -> None:
    down = {**REPLICA_REPORT, "primary": {"state": "down", "level": "CRITICAL", "detail": "gone",
                                          "seconds_since_answer": 12.5}}
    replica = facts(NodeRole.HA_REPLICA, replication=ReplicationFacts.from_report(down))
    samples = {s.name: s.value for f in node_metrics(replica, evaluate(replica, Limits())) for s in f.samples}
    assert samples["bulwark_ha_primary_up"] == 0 and samples["bulwark_ha_primary_seconds_since_answer"] == 12.5
    up = {**REPLICA_REPORT, "primary": {"state": "late", "level": "OK", "detail": "", "seconds_since_answer": None}}
    replica = facts(NodeRole.HA_REPLICA, replication=ReplicationFacts.from_report(up))
    samples = {s.name: s.value for f in node_metrics(replica, ()) for s in f.samples}
    assert samples["bulwark_ha_primary_up"] == 1 and samples["bulwark_ha_primary_seconds_since_answer"] == float("inf")
    primary = facts(NodeRole.HA_PRIMARY, replication=ReplicationFacts.from_report({
        "role": "ha-primary", "level": "WARNING",
        "replicas": [{"node_id": "r1", "url": "u", "level": "WARNING", "seconds_since_seen": 1.0, "lag_changes": 0,
                      "reachable": False, "reach": "x"},
                     {"node_id": "r2", "url": "u", "level": "OK", "seconds_since_seen": 1.0, "lag_changes": 0,
                      "reachable": None, "reach": "not checked yet"}]}))
    by_label = {(s.name, tuple(s.labels.values())): s.value for f in node_metrics(primary, ()) for s in f.samples}
    assert by_label[("bulwark_ha_replica_reachable", ("r1",))] == 0
    assert ("bulwark_ha_replica_reachable", ("r2",)) not in by_label  # unknown is no series, not a 0
