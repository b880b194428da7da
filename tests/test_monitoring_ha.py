"""Monitoring in HA mode: a real primary and replica, their metrics, `bulwark status` and the status page."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ha_helpers import ha_pair, repl, wait_for
from tests.support.helpers import Server, bulwark
from tests.support.monitoring_helpers import CALM, Browser, login_url, node_in, overview, scrape

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    with ha_pair(tmp_path) as servers:
        yield servers


def status_json(server: Server) -> tuple[int, dict[str, object]]:
    r = bulwark("status", "--json", *CALM, env=server.env())
    return r.returncode, json.loads(r.stdout)


def test_ha_metrics_status_and_page(pair: tuple[Server, Server], tmp_path: Path) -> None:
    primary, replica = pair
    m = wait_for(lambda: (s := scrape(replica.url)).value("bulwark_check_level", check="replication") == 0 and s,
                 timeout=20, what="the replica's replication check OK in /metrics")
    assert m.value("bulwark_node_role", role="ha-replica") == 1
    assert m.value("bulwark_node_serving") == 0  # a replica takes no load-balanced traffic
    lag = m.value("bulwark_ha_replication_lag_seconds")
    assert lag is not None and math.isfinite(lag) and lag < 30
    assert m.value("bulwark_ha_replication_lag_changes") == 0
    assert m.value("bulwark_ha_repositories_pending") == 0
    assert m.value("bulwark_ha_replicating") == 1
    p = scrape(primary.url)
    assert p.value("bulwark_node_role", role="ha-primary") == 1 and p.value("bulwark_ha_replicas") == 1
    seen = [v for (name, _), v in p.samples.items() if name == "bulwark_ha_replica_seconds_since_seen"]
    assert len(seen) == 1 and seen[0] < 30

    code, report = status_json(replica)
    assert code == 0, report
    checks = {c["check"]: c for c in report["checks"]}  # type: ignore[attr-defined]
    assert checks["role"]["level"] == "OK" and checks["role"]["detail"].startswith("ha-replica")
    assert checks["replication"]["level"] == "OK"
    code, report = status_json(primary)
    assert code == 0 and report["role"] == "ha-primary", report

    # Every node, from either side.
    on_primary = overview(primary.url, primary.token)
    replica_id = next(n["name"] for n in on_primary["nodes"] if not n.get("self"))
    assert on_primary["mode"] == "ha" and len(on_primary["nodes"]) == 2
    assert all(n["up"] for n in on_primary["nodes"])
    assert node_in(on_primary, replica_id)["role"] == "ha-replica"
    assert node_in(on_primary, replica_id)["lag_changes"] == 0
    on_replica = overview(replica.url, replica.token)
    assert {n["name"] for n in on_replica["nodes"]} == {n["name"] for n in on_primary["nodes"]}
    assert node_in(on_replica, replica_id)["self"]

    chromium = Browser(tmp_path / "chromium")
    dom = chromium.dump_dom(login_url(primary.url, primary.token))
    assert f'data-node="{replica_id}" data-up="true"' in dom and "ha mode" in dom, dom[-3000:]
    chromium.screenshot(login_url(primary.url, primary.token), tmp_path / "status-ha.png")

    # Replication stopped: CRITICAL on the replica, in the command, the metrics and the page's alerts.
    assert repl(replica, "stop").returncode == 0
    code, report = status_json(replica)
    assert code == 2 and report["level"] == "CRITICAL", report
    wait_for(lambda: scrape(replica.url).value("bulwark_ha_replicating") == 0, timeout=5, what="replicating 0")
    alerts = overview(replica.url, replica.token)["alerts"]
    assert any(a["node"] == replica_id and a["check"] == "replication" and a["level"] == "CRITICAL" for a in alerts)

    # The replica gone: the primary's page shows it down at once.
    replica.stop()
    doc = overview(primary.url, primary.token)
    gone = node_in(doc, replica_id)
    assert not gone["up"] and gone["level"] == "CRITICAL" and "does not answer" in gone["error"]
    assert doc["level"] == "CRITICAL"
