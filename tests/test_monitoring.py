"""Monitoring of a standalone node, with a real `bulwark serve`, the real git client and headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import httpx
import pytest

from tests.support.ha_helpers import wait_for
from tests.support.helpers import Server, bulwark, git
from tests.support.monitoring_helpers import CALM, Browser, access_lines, login_url, overview, scrape

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]


def test_metrics_count_git_and_http_without_naming_repositories(server: Server, genv: dict[str, str],
                                                                tmp_path: Path) -> None:
    alice = server.create_user("alice")
    server.create_repo(alice, "secret-plans", private=True)
    remote = server.remote("alice", "secret-plans", token=alice)
    work = tmp_path / "work"
    git("clone", "--quiet", remote, str(work), env=genv)
    (work / "plan.txt").write_text("take over the world\n")
    git("add", "plan.txt", cwd=work, env=genv)
    git("commit", "--quiet", "-m", "plan", cwd=work, env=genv)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work, env=genv)
    git("clone", "--quiet", remote, str(tmp_path / "again"), env=genv)
    # Anonymous access to a private repository: a 401, counted under the git class like the rest.
    assert httpx.get(f"{server.url}/alice/secret-plans.git/info/refs?service=git-upload-pack").status_code == 401

    m = scrape(server.url)  # from loopback: no token needed
    assert "secret-plans" not in m.text and "alice" not in m.text
    assert m.value("bulwark_git_operations_total", service="upload-pack", transport="http", result="ok") >= 3  # type: ignore[operator]
    assert m.value("bulwark_git_operations_total", service="receive-pack", transport="http", result="ok") >= 2  # type: ignore[operator]
    assert m.value("bulwark_git_processes", service="upload-pack", transport="http") == 0
    assert m.total("bulwark_http_requests_total", route="git", status="200") >= 5
    assert m.total("bulwark_http_requests_total", route="git", status="401") >= 1
    assert m.total("bulwark_http_requests_total", route="api") >= 3
    assert m.total("bulwark_http_received_bytes_total", route="git") > 0
    assert m.total("bulwark_http_sent_bytes_total", route="git") > 1000
    assert m.total("bulwark_http_request_duration_seconds_count", route="git") >= 5
    assert m.value("bulwark_node_role", role="standalone") == 1
    assert m.value("bulwark_node_serving") == 1
    assert m.value("bulwark_node_maintenance") == 0
    ratio = m.value("bulwark_data_dir_disk_used_ratio")
    assert ratio is not None and 0 < ratio < 1
    assert m.value("bulwark_system_memory_used_ratio") is not None
    assert m.value("bulwark_system_load15_per_cpu") is not None
    assert m.value("process_resident_memory_bytes") is not None
    assert m.value("process_cpu_seconds_total") is not None
    assert m.value("bulwark_check_level", check="role") == 0

    # Maintenance shows within the half second the facts are cached for.
    assert bulwark("maintenance", "on", "--message", "upgrade", env=server.env()).returncode == 0
    m = wait_for(lambda: (s := scrape(server.url)).value("bulwark_node_maintenance") == 1 and s, timeout=5,
                 what="maintenance in /metrics")
    assert m.value("bulwark_node_serving") == 0
    assert m.value("bulwark_check_level", check="role") == 1


def test_metrics_count_what_the_limits_turned_away(server: Server) -> None:
    """Wrong passwords, throttled sign-ins and refused or timed-out connections, on a real server."""
    server.create_user("carol")
    for _ in range(8):  # 5 free failures, then the throttle answers 429 unchecked
        httpx.get(f"{server.url}/api/v3/user", auth=("carol", "wrong password"))
    import socket

    with socket.create_connection((server.host, server.port)) as idle:
        idle.sendall(b"GET /status HTTP/1.1\r\n")  # headers never finished
        m = scrape(server.url)
        assert m.value("bulwark_connections_open") is not None and cast(float, m.value("bulwark_connections_open")) >= 2
    m = scrape(server.url)
    assert m.value("bulwark_sign_in_failures_total") >= 5  # type: ignore[operator]
    assert m.value("bulwark_sign_in_throttled_total") >= 1  # type: ignore[operator]
    assert m.value("bulwark_connections_refused_total") == 0
    assert m.value("bulwark_connections_header_timeouts_total") == 0


def test_metrics_need_a_site_admin_token_unless_local(server: Server) -> None:
    alice = server.create_user("alice")
    proxied = {"X-Forwarded-For": "203.0.113.9"}  # came through a proxy: not local any more
    r = httpx.get(f"{server.url}/metrics", headers=proxied)
    assert r.status_code == 401
    r = httpx.get(f"{server.url}/metrics", headers={**proxied, "Authorization": f"token {alice}"})
    assert r.status_code == 403
    assert scrape(server.url, server.token, **proxied).value("bulwark_node_serving") == 1
    # A site admin token needs the site_admin scope, like the admin API.
    out = bulwark("user", "promote", "alice", env=server.env())
    assert out.returncode == 0, out.stderr
    r = httpx.get(f"{server.url}/metrics", headers={**proxied, "Authorization": f"token {alice}"})
    assert r.status_code == 403


def test_request_ids_in_the_access_log(server: Server) -> None:
    r = httpx.get(f"{server.url}/status", headers={"X-Request-Id": "trace-7.a"})
    assert r.headers["x-request-id"] == "trace-7.a"
    r = httpx.get(f"{server.url}/status", headers={"X-Request-Id": 'no good"id'})
    made = r.headers["x-request-id"]
    assert made != 'no good"id' and len(made) == 32
    server.stop()  # flush the log
    lines = [line for line in access_lines(server.log_path) if line["path"] == "/status"]
    ids = [line["request_id"] for line in lines]
    assert "trace-7.a" in ids and made in ids
    assert all({"time", "level", "method", "status", "ms", "bytes_in", "bytes_out"} <= set(line) for line in lines)


def test_status_command_judges_the_node(server: Server) -> None:
    env = server.env()
    r = bulwark("status", "--json", *CALM, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["level"] == "OK" and report["role"] == "standalone" and report["exit_code"] == 0
    assert [c["check"] for c in report["checks"]] == ["server", "disk", "memory", "load", "role", "webhooks"]
    assert report["server"]["state"] == "answering" and report["server"]["url"] == server.url
    assert report["thresholds"]["disk_warning"] == 100

    # Default thresholds are the documented ones; a flag overrides one for one run.
    r = bulwark("status", "--json", env=env)
    assert json.loads(r.stdout)["thresholds"] == {"disk_warning": 70, "disk_critical": 85, "memory_warning": 50,
                                                  "memory_critical": 70, "load_warning": 1, "load_critical": 2}
    r = bulwark("status", "--nagios", *CALM, "--disk-warning", "0.001", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("BULWARK WARNING - node ") and "disk: " in r.stdout and "| disk=" in r.stdout
    # A setting (here from the environment) sets a threshold too; flags still win over it.
    r = bulwark("status", "--json", *CALM[2:], "--disk-critical", "0.001",
                env={**env, "BULWARK_ALERT_DISK_WARNING": "0.001"})
    assert r.returncode == 2 and json.loads(r.stdout)["thresholds"]["disk_warning"] == 0.001, r.stdout
    assert json.loads(r.stdout)["checks"][1]["level"] == "CRITICAL"
    r = bulwark("status", "--disk-warning", "90", "--disk-critical", "80", env=env)
    assert r.returncode == 3 and "above the critical one" in r.stderr
    # The default output is a table.
    r = bulwark("status", *CALM, env=env)
    assert r.returncode == 0 and r.stdout.startswith("OK: node ") and "disk" in r.stdout and "role" in r.stdout
    # Maintenance makes the role a WARNING; no data dir is UNKNOWN (3).
    assert bulwark("maintenance", "on", env=env).returncode == 0
    r = bulwark("status", "--nagios", *CALM, env=env)
    assert r.returncode == 1 and "role: standalone, maintenance mode" in r.stdout, r.stdout
    r = bulwark("status", "--data-dir", str(server.data_dir.parent / "nothing"), env=env)
    assert r.returncode == 3 and "no Bulwark data" in r.stderr


def test_status_page_logins_and_overview(server: Server, tmp_path: Path) -> None:
    alice = server.create_user("alice")
    page = f"{server.url}/manage/status"
    r = httpx.get(page)
    assert r.status_code == 401 and 'action="/manage/status/login"' in r.text
    assert "www-authenticate" not in r.headers  # a login form, not a browser password prompt
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    r = httpx.post(f"{page}/login", data={"token": "bwk_" + "0" * 40})
    assert r.status_code == 401 and "bad credentials" in r.text
    r = httpx.post(f"{page}/login", data={"token": alice})
    assert r.status_code == 401 and "not a site administrator" in r.text
    r = httpx.post(f"{page}/login", data={"token": server.token})
    assert r.status_code == 303 and r.headers["location"] == "/manage/status"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/manage" in cookie
    session = r.cookies["bulwark_admin"]
    assert server.token not in cookie and session.startswith("s1.")  # signed, not the token itself
    # The session opens the status page only: it is no credential for the API or git.
    assert httpx.get(f"{server.url}/api/v3/user", headers={"Authorization": f"token {session}"}).status_code == 401
    assert httpx.get(f"{server.url}/api/v3/user", cookies={"bulwark_admin": session}).status_code == 401
    forged = session[:-4] + ("0000" if not session.endswith("0000") else "1111")
    r = httpx.get(f"{server.url}/manage/v1/monitoring/overview", cookies={"bulwark_admin": forged})
    assert r.status_code == 401 and "log in again" in r.json()["message"]
    r = httpx.post(f"{page}/login", data={"token": server.token})
    with httpx.Client(base_url=server.url, cookies=r.cookies) as browser:
        r = browser.get("/manage/status")
        assert r.status_code == 200 and 'src="/manage/status/status.js"' in r.text
        r = browser.get("/manage/v1/monitoring/overview")
        assert r.status_code == 200 and r.json()["mode"] == "standalone"
        assert browser.get("/manage/status/status.js").headers["content-type"].startswith("text/javascript")
        r = browser.post("/manage/status/logout")
        assert r.status_code == 303 and 'bulwark_admin=""' in r.headers["set-cookie"]
    # A copy of the cookie taken before the log-out no longer opens anything.
    r = httpx.get(f"{server.url}/manage/v1/monitoring/overview", cookies={"bulwark_admin": session})
    assert r.status_code == 401 and "log in again" in r.json()["message"]
    r = httpx.get(f"{server.url}/manage/v1/monitoring/overview")
    assert r.status_code == 401 and "www-authenticate" not in r.headers
    r = httpx.get(f"{server.url}/manage/v1/monitoring/overview", headers={"Authorization": f"token {alice}"})
    assert r.status_code == 403
    # ?token= is exchanged for the cookie, and the URL cleaned.
    r = httpx.get(login_url(server.url, server.token))
    assert r.status_code == 303 and r.headers["location"] == "/manage/status" and "bulwark_admin=" in r.headers[
        "set-cookie"]

    # Revoking the token ends its sessions at once.
    ops = server.create_user("ops", site_admin=True, scopes=("site_admin",))
    r = httpx.post(f"{page}/login", data={"token": ops})
    assert r.status_code == 303
    with httpx.Client(base_url=server.url, cookies=r.cookies) as browser:
        assert browser.get("/manage/v1/monitoring/overview").status_code == 200
        assert server.api("DELETE", "/admin/users/ops/authorizations").status_code == 204
        r = browser.get("/manage/v1/monitoring/overview")
        assert r.status_code == 401 and "log in again" in r.json()["message"]
        r = browser.get("/manage/status")
        assert r.status_code == 401 and "log in again" in r.text

    doc = overview(server.url, server.token)
    assert doc["mode"] == "standalone" and len(doc["nodes"]) == 1
    node = doc["nodes"][0]
    assert node["self"] and node["up"] and node["role"] == "standalone"
    assert {c["check"] for c in node["checks"]} == {"disk", "memory", "load", "role", "webhooks"}

    chromium = Browser(tmp_path / "chromium")
    dom = chromium.dump_dom(login_url(server.url, server.token))
    assert 'id="nodes"' in dom and f'data-node="{node["name"]}" data-up="true"' in dom, dom[-3000:]
    assert "standalone mode" in dom
    shot = chromium.screenshot(login_url(server.url, server.token), tmp_path / "status-standalone.png")
    assert shot.stat().st_size > 5000
