"""Starting a node: first start creates the admin, restarts keep the data."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import BULWARK, Server, bulwark, free_port

pytestmark = [pytest.mark.timeout(60), pytest.mark.system]


def _start_and_capture(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, int]:
    port = free_port()
    proc = subprocess.Popen(
        [*BULWARK, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "Uvicorn running on" in line:  # listening: the line before it comes before the bind
            break
    return proc, "".join(lines), port


def test_first_start_prints_admin_token_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULWARK_")}
    proc, out, port = _start_and_capture(tmp_path / "d", env)
    try:
        token = next(w for w in out.split() if w.startswith("bwk_"))
        r = httpx.get(f"http://127.0.0.1:{port}/api/v3/user", headers={"Authorization": f"token {token}"})
        assert r.status_code == 200 and r.json()["login"] == "admin" and r.json()["site_admin"]
    finally:
        proc.terminate()
        proc.wait(10)
    proc, out, _ = _start_and_capture(tmp_path / "d", env)
    proc.terminate()
    proc.wait(10)
    assert "bwk_" not in out, "the token must be shown only on first start"


def test_admin_token_from_environment(tmp_path: Path) -> None:
    srv = Server(data_dir=tmp_path / "d").start()
    try:
        assert srv.api("GET", "/user").json()["login"] == "admin"
        assert httpx.get(f"{srv.url}/status").status_code == 200
    finally:
        srv.stop()
    # The secret never lands in the data dir.
    assert srv.token.encode() not in (tmp_path / "d" / "metadata.db").read_bytes()


def test_bad_flags_are_clear_errors(tmp_path: Path) -> None:
    r = bulwark("serve", "--data-dir", str(tmp_path), "--listen", "nowhere")
    assert r.returncode != 0 and "HOST:PORT" in r.stderr and "Traceback" not in r.stderr
    r = bulwark("serve", "--data-dir", str(tmp_path), "--config", str(tmp_path / "missing.toml"))
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_bad_admin_token_in_environment(tmp_path: Path) -> None:
    env = {**os.environ, "BULWARK_ADMIN_TOKEN": "short"}
    r = bulwark("serve", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{free_port()}", env=env)
    assert r.returncode != 0 and "BULWARK_ADMIN_TOKEN" in r.stderr


def test_sigterm_drains_then_stops_cleanly(tmp_path: Path) -> None:
    """Asked to stop, a node first tells the load balancer (``/status`` 503) while it still serves,
    then finishes and exits 0, having removed its record (so `bulwark status` says it was stopped)."""
    server = Server(tmp_path / "d", extra_env={"BULWARK_SHUTDOWN_DRAIN": "3"}).start()
    assert server.proc is not None
    assert httpx.get(f"{server.url}/status").status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    seen = []
    while server.proc.poll() is None:
        try:
            status = httpx.get(f"{server.url}/status", timeout=2)
            api = server.api("GET", "/user")
        except httpx.HTTPError:
            break  # the drain is over: the listener is closed
        seen.append((status.status_code, status.json()["reason"], api.status_code))
        time.sleep(0.2)
    assert server.proc.wait(15) == 0
    assert seen, "the server stopped without draining"
    assert all(s == 503 and reason.startswith("shutting down") and a == 200 for s, reason, a in seen), seen
    assert not (server.data_dir / "server.json").exists()
    assert "draining for 3s" in server.log_path.read_text()
