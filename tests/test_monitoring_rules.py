"""The shipped Prometheus rules and Grafana dashboard: valid, tested with promtool, and built on real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest

from bulwark.clock import SystemClock
from bulwark.cluster.report import cluster_report
from bulwark.monitoring.checks import Thresholds, evaluate
from bulwark.monitoring.facts import ClusterFacts, ReplicationFacts
from bulwark.monitoring.metrics import GitObservation, Metrics, node_metrics
from bulwark.monitoring.webhooks import WebhookCollector
from bulwark.roles import NodeRole
from bulwark.webhooks.models import HookFigures
from tests.support.cluster_fakes import make_snapshot
from tests.support.monitoring_helpers import REPLICA_REPORT, ROOT, ensure_tool, facts, parse_metrics

pytestmark = pytest.mark.timeout(120)

RULES = ROOT / "deploy" / "prometheus" / "bulwark-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "bulwark-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bulwark-dashboard.json"
METRIC_NAME = re.compile(r"\b((?:bulwark|process)_[a-z0-9_]+)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = ensure_tool("promtool", "prometheus")
    return subprocess.run([binary, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60)


@pytest.mark.system
def test_rules_are_valid() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.system
def test_rules_fire_as_their_unit_tests_expect() -> None:
    # Disk warning and critical, replication lag, node down, cluster node down, etcd session lost,
    # outdated and under-replicated repositories, git error rate.
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names() -> set[str]:
    """Every metric name a node can export, whatever its mode."""
    metrics = Metrics()
    metrics.observe_request("/status", 200, 0.01, 0, 10)
    GitObservation(metrics, "upload-pack").end(0)
    names = parse_metrics(metrics.render().decode()).names()
    report = cluster_report(make_snapshot(placements={"a": {"n1": 1, "n2": 1, "n3": 0}}),
                            etcd_health={"http://127.0.0.1:2379": True})
    primary_report = {"role": "ha-primary", "level": "OK",
                      "replicas": [{"node_id": "r", "url": "u", "level": "OK", "seconds_since_seen": 1.0,
                                    "lag_changes": 0, "reachable": True, "reach": "reachable"}]}
    watched = {**REPLICA_REPORT, "primary": {"state": "up", "level": "OK", "detail": "answers",
                                             "seconds_since_answer": 1.0}}
    for node in (
        facts(),
        facts(NodeRole.HA_REPLICA, replication=ReplicationFacts.from_report(watched)),
        facts(NodeRole.HA_PRIMARY, replication=ReplicationFacts.from_report(primary_report)),
        facts(NodeRole.CLUSTER_MEMBER, cluster=ClusterFacts("n1", True, True, report)),
    ):
        for family in node_metrics(node, evaluate(node, Thresholds())):
            names |= {s.name for s in family.samples}
    figures = HookFigures(pending=1, oldest_pending_at=datetime.now(UTC), attempts=3, failed_attempts=1, gave_up=0,
                          failing_hooks=1)
    for family in WebhookCollector(lambda: figures, SystemClock()).collect():
        names |= {s.name for s in family.samples}
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_names()
    rules_text = RULES.read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    used = set(METRIC_NAME.findall(rules_text))
    for expr in dashboard_exprs(dashboard):
        used |= set(METRIC_NAME.findall(expr))
    assert used, "no metric found in the rules or the dashboard"
    assert used <= exported, f"not exported by Bulwark: {sorted(used - exported)}"
    # Every alert the issue asks for is there.
    for alert in ("BulwarkDiskWarning", "BulwarkDiskCritical", "BulwarkLoadWarning", "BulwarkMemoryWarning",
                  "BulwarkNodeDown", "BulwarkReplicationLagWarning", "BulwarkClusterOutdatedRepositories",
                  "BulwarkClusterUnderReplicated", "BulwarkEtcdSessionLost", "BulwarkGitErrorRate"):
        assert f"alert: {alert}\n" in rules_text, alert


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["expr"].count("(") == t["expr"].count(")") for t in panel["targets"]), panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
