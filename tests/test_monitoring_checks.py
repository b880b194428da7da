"""Monitoring's pure parts: checks and thresholds, route classes, request ids, metrics, the overview."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from starlette.requests import Request

from bulwark.cluster.report import cluster_report
from bulwark.config import Settings, load_settings
from bulwark.errors import InvalidInput
from bulwark.ha.health import Level
from bulwark.http.accesslog import accepted_request_id
from bulwark.http.metrics import is_local
from bulwark.monitoring import overview as ov
from bulwark.monitoring.checks import (
    CheckName,
    Thresholds,
    check_cluster,
    check_disk,
    check_load,
    check_memory,
    check_role,
    evaluate,
    level_of,
    nagios_line,
    worst,
)
from bulwark.monitoring.facts import ClusterFacts, NodeFacts, ReplicationFacts
from bulwark.monitoring.gather import NodeMonitor
from bulwark.monitoring.metrics import GitObservation, Metrics, NodeCollector, RouteClass, node_metrics, route_class
from bulwark.monitoring.system import SystemSample, sample
from bulwark.roles import NodeRole
from tests.support.cluster_fakes import make_snapshot
from tests.support.monitoring_helpers import REPLICA_REPORT, facts, machine, parse_metrics

pytestmark = pytest.mark.timeout(30)

# -- thresholds and checks ---------------------------------------------------------------------------


def test_levels_at_and_above_the_thresholds() -> None:
    assert level_of(69.9, 70, 85) is Level.OK
    assert level_of(70, 70, 85) is Level.WARNING
    assert level_of(85, 70, 85) is Level.CRITICAL
    assert worst([Level.OK, Level.UNKNOWN]) is Level.UNKNOWN
    assert worst([Level.UNKNOWN, Level.WARNING]) is Level.WARNING
    assert worst([Level.CRITICAL, Level.UNKNOWN, Level.WARNING]) is Level.CRITICAL
    assert worst([]) is Level.OK


def test_default_thresholds_are_the_documented_ones() -> None:
    t = Thresholds.from_settings(Settings())
    assert (t.disk_warning, t.disk_critical, t.memory_warning, t.memory_critical, t.load_warning,
            t.load_critical) == (70, 85, 50, 70, 1, 2)


def test_disk_memory_and_load_checks() -> None:
    t = Thresholds()
    assert check_disk(machine(disk=0.69), t).level is Level.OK
    assert check_disk(machine(disk=0.70), t).level is Level.WARNING
    assert check_disk(machine(disk=0.86), t).level is Level.CRITICAL
    assert check_memory(machine(memory=0.49), t).level is Level.OK
    assert check_memory(machine(memory=0.55), t).level is Level.WARNING
    assert check_memory(machine(memory=0.75), t).level is Level.CRITICAL
    # The 15-minute load per core: 2.0 on 2 cores is 1 per core.
    assert check_load(machine(load15=1.9, cpus=2), t).level is Level.OK
    assert check_load(machine(load15=2.0, cpus=2), t).level is Level.WARNING
    assert check_load(machine(load15=4.0, cpus=2), t).level is Level.CRITICAL
    unknown = SystemSample(None, None, None, None, None, 1)
    assert {check_disk(unknown, t).level, check_memory(unknown, t).level, check_load(unknown, t).level} == {
        Level.UNKNOWN}


def test_thresholds_come_from_settings_and_flags(tmp_path: Path) -> None:
    settings = load_settings(env={"BULWARK_ALERT_DISK_WARNING": "40", "BULWARK_ALERT_LOAD_CRITICAL": "3"},
                             overrides={"data_dir": tmp_path})
    t = Thresholds.from_settings(settings)
    assert (t.disk_warning, t.disk_critical, t.load_critical) == (40, 85, 3)
    assert check_disk(machine(disk=0.45), t).level is Level.WARNING
    assert t.overridden(disk_critical=50, load_warning=None).disk_critical == 50
    with pytest.raises(InvalidInput, match="disk warning threshold"):
        t.overridden(disk_warning=90)
    with pytest.raises(InvalidInput):
        load_settings(env={"BULWARK_ALERT_MEMORY_WARNING": "150"}, overrides={"data_dir": tmp_path})
    with pytest.raises(InvalidInput, match=r"alert_load_critical: .*must not be below alert_load_warning"):
        load_settings(env={"BULWARK_ALERT_LOAD_WARNING": "3"}, overrides={"data_dir": tmp_path})


def test_the_real_machine_can_be_sampled(tmp_path: Path) -> None:
    s = sample(tmp_path)
    assert s.disk_ratio is not None and 0 < s.disk_ratio < 1
    assert s.memory_ratio is not None and 0 < s.memory_ratio < 1
    assert s.load is not None and s.cpus >= 1


def test_role_check() -> None:
    assert check_role(facts()).level is Level.OK
    assert check_role(facts(fenced="superseded", serving=False)).level is Level.CRITICAL
    assert check_role(facts(maintenance="upgrade", serving=False, reason="maintenance mode: upgrade")).level \
        is Level.WARNING
    # A replica takes no load-balanced traffic on purpose.
    assert check_role(facts(NodeRole.HA_REPLICA, serving=False, reason="replica of x")).level is Level.OK
    assert check_role(facts(NodeRole.CLUSTER_MEMBER, serving=False, reason="does not answer")).level is Level.WARNING


def test_replication_facts_from_the_ha_report() -> None:
    replica = ReplicationFacts.from_report(REPLICA_REPORT)
    assert replica is not None
    assert (replica.level, replica.lag_seconds, replica.lag_changes, replica.pending, replica.faulty) == (
        Level.WARNING, 42.0, 3, 2, 1)
    assert replica.summary.startswith("metadata: 42.0s")
    never = ReplicationFacts.from_report({**REPLICA_REPORT, "lag_seconds": None})
    assert never is not None and never.lag_seconds == float("inf")
    primary = ReplicationFacts.from_report({
        "role": "ha-primary", "level": "CRITICAL",
        "replicas": [{"node_id": "r1", "url": "http://r:1", "level": "CRITICAL", "seconds_since_seen": 400.0,
                      "lag_changes": 7}],
    })
    assert primary is not None and primary.replicas[0].lag_changes == 7
    assert "replica r1 last seen 400s ago" in primary.summary
    assert ReplicationFacts.from_report({"role": "standalone", "level": "OK"}) is None


def test_cluster_check() -> None:
    healthy = cluster_report(make_snapshot(placements={"a": {"n1": 1, "n2": 1, "n3": 1}}))
    assert check_cluster(ClusterFacts("n1", True, True, healthy)).level is Level.OK
    one_down = cluster_report(make_snapshot(dead=["n3"], placements={"a": {"n1": 1, "n2": 1, "n3": 1}}))
    check = check_cluster(ClusterFacts("n1", True, True, one_down))
    assert check.level is Level.WARNING and "nodes down: n3" in check.detail
    assert check_cluster(ClusterFacts("n1", False, True, healthy)).level is Level.CRITICAL
    lost = check_cluster(ClusterFacts("n1", False, False, None, "etcd is unreachable at x"))
    assert lost.level is Level.CRITICAL and "unreachable" in lost.detail


def test_evaluate_and_nagios_line() -> None:
    replica = facts(NodeRole.HA_REPLICA, serving=False, reason="replica of p",
                    replication=ReplicationFacts.from_report(REPLICA_REPORT), system=machine(disk=0.9))
    checks = evaluate(replica, Thresholds())
    assert [c.name for c in checks] == [CheckName.DISK, CheckName.MEMORY, CheckName.LOAD, CheckName.ROLE,
                                        CheckName.REPLICATION]
    line = nagios_line("n1", checks, Thresholds())
    assert line.startswith("BULWARK CRITICAL - node n1: disk: 90.0% of the data dir's filesystem used")
    assert "replication: metadata: 42.0s" in line
    assert line.endswith("| disk=90.00%;70;85 memory=30.00%;50;70 load=0.25;1;2")


# -- HTTP details ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("/alice/secret.git/info/refs", RouteClass.GIT),
    ("/alice/secret/git-upload-pack", RouteClass.GIT),
    ("/alice/secret.git/git-receive-pack", RouteClass.GIT),
    ("/api/v3/repos/alice/secret", RouteClass.API),
    ("/manage/v1/replication/changes", RouteClass.MANAGE),
    ("/manage/v1/replication/git/abc/git-upload-pack", RouteClass.MANAGE),
    ("/manage/status", RouteClass.MANAGE),
    ("/internal/cluster/git/abc/info/refs", RouteClass.INTERNAL),
    ("/status", RouteClass.STATUS),
    ("/status/replication", RouteClass.STATUS),
    ("/metrics", RouteClass.STATUS),
    ("/alice/secret.git/HEAD", RouteClass.OTHER),
    ("/favicon.ico", RouteClass.OTHER),
])
def test_route_classes(path: str, expected: RouteClass) -> None:
    assert route_class(path) is expected


def test_request_ids_kept_only_when_well_formed() -> None:
    assert accepted_request_id(b"3f2a-trace.1") == "3f2a-trace.1"
    assert accepted_request_id(b"") is None
    assert accepted_request_id(b"a" * 65) is None
    assert accepted_request_id(b'x", "user": "admin') is None
    assert accepted_request_id(b"two words") is None


def _request(host: str | None, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/metrics", "headers": raw,
                    "client": (host, 1234) if host else None})


def test_metrics_are_open_to_loopback_only() -> None:
    assert is_local(_request("127.0.0.1"))
    assert is_local(_request("::1"))
    assert not is_local(_request("10.0.0.5"))
    assert not is_local(_request("testclient"))
    assert not is_local(_request(None))
    # A proxy on the same machine that says it forwards someone else's request does not count as local.
    assert not is_local(_request("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}))
    assert not is_local(_request("127.0.0.1", {"Forwarded": "for=203.0.113.9"}))


# -- metrics ---------------------------------------------------------------------------------------


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.observe_request("/alice/private-thing.git/info/refs", 200, 0.01, 10, 2000)
    a.observe_request("/api/v3/user", 404, 0.002, 0, 50)
    a.observe_request("/status", 0, 0.001, 0, 0)
    run = GitObservation(a, "upload-pack")
    scraped = parse_metrics(a.render().decode())
    assert scraped.value("bulwark_git_processes", service="upload-pack", transport="http") == 1
    run.end(0)
    run.end(0)  # counted once
    GitObservation(a, "receive-pack").end(-15)
    GitObservation(a, "receive-pack").end(1)
    GitObservation(None, "upload-pack").end(0)  # an app without metrics
    text = a.render().decode()
    m = parse_metrics(text)
    assert m.value("bulwark_http_requests_total", route="git", status="200") == 1
    assert m.value("bulwark_http_requests_total", route="api", status="404") == 1
    assert m.value("bulwark_http_requests_total", route="status", status="none") == 1
    assert m.value("bulwark_http_received_bytes_total", route="git") == 10
    assert m.value("bulwark_http_sent_bytes_total", route="git") == 2000
    assert m.value("bulwark_git_processes", service="upload-pack", transport="http") == 0
    assert m.value("bulwark_git_operations_total", service="upload-pack", transport="http", result="ok") == 1
    assert m.value("bulwark_git_operations_total", service="receive-pack", transport="http", result="cancelled") == 1
    assert m.value("bulwark_git_operations_total", service="receive-pack", transport="http", result="failed") == 1
    assert m.value("bulwark_http_request_duration_seconds_count", route="git") == 1
    assert m.value("process_resident_memory_bytes") is not None
    assert "private-thing" not in text
    untouched = parse_metrics(b.render().decode())
    assert untouched.value("bulwark_http_requests_total", route="git", status="200") is None
    assert untouched.value("bulwark_git_operations_total", service="upload-pack", transport="http", result="ok") == 0


def test_node_metrics_of_a_cluster_member_with_a_dead_node() -> None:
    snap = make_snapshot(dead=["n3"], placements={"a": {"n1": 2, "n2": 2, "n3": 2}, "b": {"n1": 3, "n2": 2, "n3": 3}})
    etcd = {"http://127.0.0.1:2379": True, "http://127.0.0.2:2379": True, "http://127.0.0.3:2379": False}
    report = cluster_report(snap, etcd_health=etcd)
    member = facts(NodeRole.CLUSTER_MEMBER, cluster=ClusterFacts("n1", True, True, report))
    families = list(node_metrics(member, evaluate(member, Thresholds())))
    m = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}

    def value(name: str, **labels: str) -> float:
        return m[(name, frozenset(labels.items()))]

    assert value("bulwark_node_role", role="cluster-member") == 1
    assert value("bulwark_node_role", role="standalone") == 0
    assert value("bulwark_cluster_node_up", node="n3") == 0
    assert value("bulwark_cluster_node_up", node="n1") == 1
    assert value("bulwark_cluster_nodes", state="down") == 1
    assert value("bulwark_cluster_nodes", state="up") == 2
    assert value("bulwark_cluster_etcd_session") == 1
    assert value("bulwark_cluster_etcd_members", state="down") == 1
    # a: 2 live up-to-date replicas of 3 (under-replicated); b: n2 outdated, n1 and n3 hold generation 3.
    assert value("bulwark_cluster_repositories", state="under-replicated") == 2
    assert value("bulwark_cluster_node_outdated_replicas", node="n2") == 1
    assert value("bulwark_check_level", check="cluster") == int(Level.WARNING)


def test_node_metrics_of_an_ha_replica_and_a_primary() -> None:
    replica = facts(NodeRole.HA_REPLICA, replication=ReplicationFacts.from_report(REPLICA_REPORT))
    samples = {s.name: s.value for f in node_metrics(replica, ()) for s in f.samples}
    assert samples["bulwark_ha_replication_lag_seconds"] == 42
    assert samples["bulwark_ha_repositories_pending"] == 2
    assert samples["bulwark_ha_replicating"] == 1
    primary = facts(NodeRole.HA_PRIMARY, replication=ReplicationFacts.from_report({
        "role": "ha-primary", "level": "OK",
        "replicas": [{"node_id": "r1", "url": "http://r:1", "level": "OK", "seconds_since_seen": 1.5,
                      "lag_changes": 0}]}))
    by_label = {(s.name, tuple(s.labels.values())): s.value for f in node_metrics(primary, ()) for s in f.samples}
    assert by_label[("bulwark_ha_replicas", ())] == 1
    assert by_label[("bulwark_ha_replica_seconds_since_seen", ("r1",))] == 1.5


# -- the overview ----------------------------------------------------------------------------------


def test_cluster_overview_shows_dead_and_unreachable_nodes() -> None:
    report = cluster_report(make_snapshot(dead=["n3"], placements={"a": {"n1": 1, "n2": 1, "n3": 1}}))
    cluster = ClusterFacts("n1", True, True, report)
    member = facts(NodeRole.CLUSTER_MEMBER, cluster=cluster)
    local = {**ov.node_entry(member, evaluate(member, Thresholds())), "self": True}
    nodes = ov.cluster_nodes(local, cluster, {"n2": "ConnectTimeout"})
    by_name = {n["name"]: n for n in nodes}
    assert by_name["n1"]["up"] and by_name["n1"]["self"]
    assert by_name["n1"]["level"] == "OK"  # the cluster's WARNING is the cluster's, shown once below
    assert by_name["n2"]["up"] and by_name["n2"]["error"] == "does not answer: ConnectTimeout"
    assert by_name["n2"]["level"] == "WARNING"
    assert not by_name["n3"]["up"] and by_name["n3"]["level"] == "CRITICAL"
    doc = ov.document(ov.Mode.CLUSTER, "n1", nodes, ov.cluster_summary(cluster), Thresholds().to_json())
    assert doc["level"] == "CRITICAL"
    # The cluster's own reasons appear once, not once per member.
    cluster_alerts = [a for a in doc["alerts"] if a["check"] == "cluster"]
    assert [a["node"] for a in cluster_alerts] == ["cluster"] * len(report.reasons)
    assert any(a["node"] == "n3" and "no etcd lease" in a["detail"] for a in doc["alerts"])
    assert doc["alerts"][0]["level"] == "CRITICAL"


def test_ha_overviews() -> None:
    primary_facts = facts(NodeRole.HA_PRIMARY, name="p", replication=ReplicationFacts.from_report({
        "role": "ha-primary", "level": "WARNING",
        "replicas": [{"node_id": "r1", "url": "http://r1", "level": "WARNING", "seconds_since_seen": 40.0,
                      "lag_changes": 4}]}))
    assert primary_facts.replication is not None
    local = ov.node_entry(primary_facts, evaluate(primary_facts, Thresholds()))
    nodes = ov.primary_nodes(local, primary_facts.replication, {"r1": "ConnectError"})
    assert [n["name"] for n in nodes] == ["p", "r1"]
    assert not nodes[1]["up"] and nodes[1]["lag_changes"] == 4
    assert any("last heard from it 40s ago" in a["detail"] for a in nodes[1]["alerts"])
    # From the replica: the primary's picture with the replica's own fresh entry.
    replica_facts = facts(NodeRole.HA_REPLICA, name="r1", serving=False, reason="replica of p")
    mine = ov.node_entry(replica_facts, evaluate(replica_facts, Thresholds()))
    merged = ov.replica_nodes(mine, "http://p", {"nodes": [local, {**nodes[1], "reason": "old"}]})
    assert [n["name"] for n in merged] == ["p", "r1"] and merged[1]["reason"] == "replica of p"
    alone = ov.replica_nodes(mine, "http://p", "ConnectError")
    assert [n["up"] for n in alone] == [True, False]


def test_a_node_state_that_cannot_be_read_still_leaves_metrics() -> None:
    class Broken:
        thresholds = Thresholds()

        def facts(self) -> NodeFacts:
            raise RuntimeError("database is locked")

    m = parse_metrics(Metrics([NodeCollector(cast(NodeMonitor, Broken()))]).render().decode())
    assert m.value("bulwark_node_state_readable") == 0
    assert m.value("bulwark_git_processes", service="upload-pack", transport="http") == 0
