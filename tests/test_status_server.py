"""`bulwark status` asks the running server: a real `bulwark serve` on any free port, then killed,
restarted, stopped cleanly and frozen, and `bulwark status` judging each from the outside."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.helpers import Server, bulwark, server_record, start_on_any_port
from tests.support.monitoring_helpers import CALM

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]


def status(server: Server) -> tuple[int, dict[str, Any]]:
    r = bulwark("status", "--json", *CALM, env=server.env())
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def server_check(report: dict[str, Any]) -> dict[str, Any]:
    (check,) = [c for c in report["checks"] if c["check"] == "server"]
    return dict(check)


def test_the_record_names_the_real_port_and_only_its_secret_opens_the_node_facts(tmp_path: Path) -> None:
    server = start_on_any_port(Server(data_dir=tmp_path / "node"))
    try:
        record = server_record(server.data_dir)
        assert record is not None and server.port != 0 and record["listen"] == f"127.0.0.1:{server.port}"
        assert (server.data_dir / "server.json").stat().st_mode & 0o777 == 0o600
        assert httpx.get(f"{server.url}/status").json()["node_id"]
        assert server.api("GET", "/user").json()["url"] == f"{server.url}/api/v3/users/admin"  # not port 0
        code, report = status(server)
        # The command's own settings say 127.0.0.1:8080; the record says where the server is.
        assert code == 0, report
        assert report["server"] == {**report["server"], "state": "answering", "url": server.url,
                                    "pid": server.proc.pid if server.proc else None}
        assert report["url"] == server.url and server_check(report)["level"] == "OK"

        node = f"{server.url}/status/node"
        assert httpx.get(node).status_code == 401
        assert httpx.get(node, headers={"X-Bulwark-Monitor": "guess"}).status_code == 401
        mine = httpx.get(node, headers={"X-Bulwark-Monitor": record["secret"]})
        assert mine.status_code == 200 and mine.json()["facts"]["role"] == "standalone"
        assert mine.json()["nodes"][0]["checks"] and mine.json()["pid"] == record["pid"]
        admin = httpx.get(node, headers={"Authorization": f"token {server.token}"})
        assert admin.status_code == 200
    finally:
        server.stop()


def test_a_killed_server_is_critical_and_told_apart_from_a_clean_stop(tmp_path: Path) -> None:
    server = start_on_any_port(Server(data_dir=tmp_path / "node"))
    try:
        assert status(server)[0] == 0
        killed = server.proc.pid if server.proc else 0
        server.kill()

        r = bulwark("status", "--nagios", *CALM, env=server.env())
        assert r.returncode == 2 and r.stdout.startswith("BULWARK CRITICAL - node "), r.stdout + r.stderr
        assert f"server: not running: the server (pid {killed}," in r.stdout and "killed or crashed" in r.stdout
        code, report = status(server)
        assert code == 2 and report["level"] == "CRITICAL" and report["server"]["state"] == "crashed", report
        assert next(c for c in report["checks"] if c["check"] == "role")["detail"].endswith("not running")
        r = bulwark("status", *CALM, env=server.env())
        assert r.returncode == 2 and r.stdout.startswith("CRITICAL: node ") and "killed or crashed" in r.stdout

        # The record the killed server left does not confuse the next start, nor status after it.
        start_on_any_port(server)
        assert "did not stop cleanly" in server.log()
        code, report = status(server)
        assert code == 0 and report["server"]["url"] == server.url, report

        # A clean stop removes the record: CRITICAL as well, but saying so.
        server.stop()
        assert server_record(server.data_dir) is None
        code, report = status(server)
        assert code == 2 and report["server"]["state"] == "stopped", report
        assert "was stopped cleanly at" in server_check(report)["detail"]
    finally:
        server.stop()


def test_a_server_that_runs_but_does_not_answer_is_critical(tmp_path: Path) -> None:
    server = start_on_any_port(Server(data_dir=tmp_path / "node"))
    assert server.proc is not None
    pid = server.proc.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        code, report = status(server)
        assert code == 2 and report["server"]["state"] == "not-answering", report
        assert f"process {pid} runs but does not answer at {server.url}" in server_check(report)["detail"]
        os.kill(pid, signal.SIGCONT)
        code, report = status(server)
        assert code == 0, report
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()
