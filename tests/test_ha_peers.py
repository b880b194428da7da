"""An HA pair checks itself, with real processes: setup refuses a replica the primary cannot call back,
a replica reports its killed primary down (command, metric, check, page), a primary reports a replica
it cannot reach (command, metric, log), and a replica answers the site administrators' GETs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from bulwark.http import replication
from tests.support.ha_helpers import ha_pair, repl, repl_status, wait_for
from tests.support.helpers import Server, bulwark, free_port
from tests.support.monitoring_helpers import CALM, overview, scrape

pytestmark = [pytest.mark.timeout(180), pytest.mark.system]

# The site administrators' GETs under /manage/v1 (what each answers on a replica that is no cluster member),
# and the replication stream's, which serve replicas from a primary only.
ADMIN_GETS = {"/replication/status": 200, "/replication/replicas": 200, "/cluster/status": 404}
STREAM_GETS = {"/replication/snapshot", "/replication/changes", "/replication/checksums"}


def test_setup_calls_the_replica_back_and_a_replica_answers_admin_gets(tmp_path: Path) -> None:
    primary = Server(data_dir=tmp_path / "primary").start()
    replica = Server(data_dir=tmp_path / "replica").start()
    try:
        nowhere = f"http://127.0.0.1:{free_port()}"
        r = repl(replica, "setup", "--primary", primary.url, "--token", primary.token, "--advertise-url", nowhere)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert f"cannot reach the replica at its advertised URL {nowhere}" in r.stderr, r.stderr
        # The primary's own URL given by mistake: it answers, but as another node.
        r = repl(replica, "setup", "--primary", primary.url, "--token", primary.token,
                 "--advertise-url", primary.url)
        assert r.returncode == 1 and f"the advertised URL {primary.url} is node " in r.stderr, r.stderr
        # Refused before anything changed, on either side.
        assert repl_status(replica)["role"] == "standalone" and repl_status(primary)["role"] == "standalone"

        # Without --advertise-url the replica advertises where its server really listens (its record),
        # not the listen address of the command's own settings (127.0.0.1:8080).
        r = repl(replica, "setup", "--primary", primary.url, "--token", primary.token)
        assert r.returncode == 0, r.stdout + r.stderr
        on_primary = repl_status(primary)
        assert [x["url"] for x in on_primary["replicas"]] == [replica.url]

        assert {p for r_ in replication.routes if "GET" in (getattr(r_, "methods", None) or ())
                for p in [getattr(r_, "path", "")]} == set(ADMIN_GETS) | STREAM_GETS
        headers = {"Authorization": f"token {replica.token}"}
        for path, expected in ADMIN_GETS.items():
            answer = wait_for(lambda p=path: httpx.get(f"{replica.url}/manage/v1{p}", headers=headers, timeout=10),
                              what=f"GET {path} on the replica")
            assert answer.status_code == expected, (path, answer.text)
        report = httpx.get(f"{replica.url}/manage/v1/replication/status", headers=headers, timeout=10).json()
        assert report["role"] == "ha-replica" and report["primary"]["timeout"] == 10
        anonymous = httpx.get(f"{replica.url}/manage/v1/replication/status", timeout=10)
        assert anonymous.status_code == 401
    finally:
        replica.stop()
        primary.stop()


def test_the_maintenance_get_answers_on_a_replica(tmp_path: Path) -> None:
    with ha_pair(tmp_path) as (_primary, replica):
        wait_for(lambda: httpx.get(f"{replica.url}/status").json()["role"] == "ha-replica", what="a replica")
        headers = {"Authorization": f"token {replica.token}"}
        r = httpx.get(f"{replica.url}/manage/v1/maintenance", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["enabled"] is False
        # Turning it on is a write, and a replica refuses writes.
        r = httpx.post(f"{replica.url}/manage/v1/maintenance", headers=headers, json={"message": "x"})
        assert r.status_code == 503, r.text
        assert "read-only replica" in r.json()["message"], r.text


def test_a_replica_sees_its_primary_die_and_a_primary_its_replica_vanish(tmp_path: Path) -> None:
    with ha_pair(tmp_path, extra_env={"BULWARK_ALERT_LOAD_WARNING": "1000", "BULWARK_ALERT_LOAD_CRITICAL": "1000"}
                 ) as (primary, replica):
        replica_id = repl_status(replica)["node_id"]
        wait_for(lambda: scrape(replica.url).value("bulwark_ha_primary_up") == 1, what="the primary up")
        wait_for(lambda: scrape(primary.url).value("bulwark_ha_replica_reachable", replica=replica_id) == 1,
                 what="the replica reachable")
        assert repl_status(primary)["replicas"][0]["reachable"] is True

        # The primary killed: the replica reports it down once it has been silent for ha_primary_timeout.
        primary.kill()
        killed = time.monotonic()
        m = wait_for(lambda: (s := scrape(replica.url)).value("bulwark_ha_primary_up") == 0 and s,
                     timeout=60, interval=0.2, what="bulwark_ha_primary_up 0 on the replica")
        print(f"\nprimary killed -> replica's bulwark_ha_primary_up 0 after {time.monotonic() - killed:.1f}s")
        silent = m.value("bulwark_ha_primary_seconds_since_answer")
        assert silent is not None and silent >= 10
        assert m.value("bulwark_check_level", check="replication") == 2
        report = repl_status(replica)
        assert report["primary"]["state"] == "down" and report["exit_code"] == 2, report
        stream = next(s for s in report["streams"] if s["name"] == "primary")
        assert stream["level"] == "CRITICAL" and primary.url in stream["detail"]
        assert "bulwark repl promote" in stream["detail"]
        r = bulwark("status", "--json", *CALM, env=replica.env())
        checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
        assert r.returncode == 2 and checks["replication"]["detail"].startswith("primary: "), r.stdout
        assert checks["server"]["level"] == "OK"  # the replica itself is fine
        alerts = overview(replica.url, replica.token)["alerts"]
        assert any(a["node"] == replica_id and a["level"] == "CRITICAL" and "has not answered" in a["detail"]
                   for a in alerts), alerts
        assert "ha: primary down" in replica.log_path.read_text()

        primary.start()
        wait_for(lambda: scrape(replica.url).value("bulwark_ha_primary_up") == 1, timeout=30,
                 what="the primary up again")
        assert repl_status(replica)["primary"]["state"] == "up"

        # The replica gone: the primary's epoch check cannot reach it, and says so.
        replica.stop()
        wait_for(lambda: scrape(primary.url).value("bulwark_ha_replica_reachable", replica=replica_id) == 0,
                 timeout=30, what="the replica unreachable")
        report = repl_status(primary)
        (row,) = report["replicas"]
        assert row["reachable"] is False and row["level"] == "WARNING" and report["exit_code"] >= 1, report
        assert f"cannot reach it at {replica.url}" in row["reach"]
        table = repl(primary, "status")
        assert table.returncode == report["exit_code"] and f"cannot reach it at {replica.url}" in table.stdout
        log = primary.log_path.read_text()
        assert f"replica {replica_id} at {replica.url} does not answer, so this primary cannot check its epoch" in log
        replica.start()
        wait_for(lambda: scrape(primary.url).value("bulwark_ha_replica_reachable", replica=replica_id) == 1,
                 timeout=30, what="the replica reachable again")
        assert f"replica {replica_id} answers again" in primary.log_path.read_text()
