"""Webhook delivery: latency after a push, and a backlog drained after a receiver outage.

A standalone node delivers to a receiver in this process (so arrival and acknowledgement are
read on one clock). Latency: a push acknowledged to ``git push`` → its delivery arriving, for
pushes one after another. Backlog: the receiver is down while pushes of many new branches to
several repositories queue ``backlog`` push events; then it comes back, and the time from its
first delivery to the last gives deliveries per second. No peer server is run beside it: no
other Git server with webhooks installs here.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import client_env, percentile, run_git
from tests.support.helpers import Server, admin_token, free_port


class Receiver:
    """A receiver on a fixed port that can go down and come back; it notes when each push arrived."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrived: dict[str, float] = {}
        self.count = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.monotonic()
                if self.headers.get("X-GitHub-Event") == "push":
                    payload = json.loads(body)
                    with receiver._lock:
                        receiver.arrived.setdefault(f"{payload['ref']} {payload['after']}", now)
                        receiver.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _hook(srv: Server, repo: str, url: str) -> None:
    r = srv.api("POST", f"/repos/admin/{repo}/hooks", json={"config": {"url": url, "content_type": "json"},
                                                            "events": ["push"]})
    assert r.status_code == 201, r.text


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def latency(srv: Server, receiver: Receiver, work: Path, env: dict[str, str], pushes: int) -> dict[str, Any]:
    srv.create_repo(srv.token, "latency")
    _hook(srv, "latency", receiver.url)
    remote = srv.remote("admin", "latency", token=srv.token)
    run_git(["init", "-q", "-b", "main", str(work)], env)
    seconds: list[float] = []
    pushing: list[float] = []
    for i in range(pushes):
        (work / "f").write_text(str(i))
        run_git(["add", "f"], env, cwd=work)
        run_git(["commit", "-q", "-m", f"c{i}"], env, cwd=work)
        sha = run_git(["rev-parse", "HEAD"], env, cwd=work).strip()
        started = time.monotonic()
        run_git(["push", "-q", remote, "HEAD:refs/heads/main"], env, cwd=work)
        acked = time.monotonic()
        pushing.append(acked - started)
        key = f"refs/heads/main {sha}"

        def arrived(key: str = key) -> bool:
            return key in receiver.arrived

        _wait(arrived, 30, "a push's delivery")
        seconds.append(receiver.arrived[key] - started)
    # From the push's start: a delivery can arrive before ``git push`` has exited, since the node
    # sends it as soon as the push is recorded, just before the client reads the end of the report.
    return {"pushes": pushes, "p50_ms": statistics.median(seconds) * 1000,
            "p99_ms": percentile(seconds, 0.99) * 1000, "max_ms": max(seconds) * 1000,
            "push_p50_ms": statistics.median(pushing) * 1000}


def backlog(srv: Server, receiver: Receiver, work: Path, env: dict[str, str], events: int, repos: int,
            log: Callable[[str], None]) -> dict[str, Any]:
    """``events`` push events over ``repos`` repositories of an organization with one hook (a CI
    system's), queued while the receiver is down."""
    per_repo = events // repos
    r = srv.api("POST", "/admin/organizations", json={"login": "ci", "admin": "admin"})
    assert r.status_code == 201, r.text
    r = srv.api("POST", "/orgs/ci/hooks", json={"config": {"url": receiver.url, "content_type": "json"},
                                               "events": ["push"]})
    assert r.status_code == 201, r.text
    receiver.stop()
    started = time.monotonic()
    for n in range(repos):
        name = f"backlog-{n}"
        srv.create_repo(srv.token, name, org="ci")
        clone = work / name
        run_git(["init", "-q", "-b", "main", str(clone)], env)
        (clone / "f").write_text(name)
        run_git(["add", "f"], env, cwd=clone)
        run_git(["commit", "-q", "-m", name], env, cwd=clone)
        updates = "".join(f"create refs/heads/b{i} HEAD\n" for i in range(per_repo))
        run_git(["update-ref", "--stdin"], env, cwd=clone, stdin=updates.encode())
        run_git(["push", "-q", srv.remote("ci", name, token=srv.token), "refs/heads/b*:refs/heads/b*"], env,
                cwd=clone)
    queued = time.monotonic() - started
    log(f"webhooks: {per_repo * repos} push events queued in {queued:.1f} s; the receiver comes back")
    before = receiver.count
    receiver.start()
    back = time.monotonic()
    total = per_repo * repos
    _wait(lambda: receiver.count - before >= 1, 300, "the first delivery after the outage")
    first = time.monotonic()
    _wait(lambda: receiver.count - before >= total, 1800, "the backlog to drain")
    last = time.monotonic()
    drain = last - first
    return {"events": total, "repositories": repos, "queue_seconds": queued,
            "retry_wait_seconds": first - back, "drain_seconds": drain,
            "deliveries_per_second": total / drain if drain > 0 else None}


def measure(work: Path, profile: str, log: Callable[[str], None]) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir()
    env = client_env(home)
    receiver = Receiver(free_port())
    receiver.start()
    srv = Server(data_dir=work / "node", token=admin_token(7),
                 extra_env={"BULWARK_WEBHOOK_ALLOW_PRIVATE": "1", "BULWARK_LOG_FORMAT": "json"}).start()
    try:
        quick = profile != "full"
        log("webhooks: delivery latency after a push")
        result = {"latency": latency(srv, receiver, work / "latency", env, 20 if quick else 100)}
        log("webhooks: a backlog after a receiver outage")
        result["backlog"] = backlog(srv, receiver, work, env, 1_000 if quick else 10_000, 10, log)
        return result
    finally:
        srv.stop()
        receiver.stop()


def markdown(report: dict[str, Any]) -> str:
    figures = report["results"]["webhooks"]
    if "error" in figures:
        return f"## Webhooks\n\nThe run failed: {figures['error']}\n"
    lat, back = figures["latency"], figures["backlog"]
    return "\n".join([
        "## Webhooks",
        "",
        f"A standalone node delivering to a receiver on the same machine ({report['profile']} profile).",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| `git push` started → its delivery arrived, p50 ({lat['pushes']} pushes) | {lat['p50_ms']:.1f} ms |",
        f"| same, p99 | {lat['p99_ms']:.1f} ms |",
        f"| `git push` started → exited, p50 (for scale) | {lat['push_p50_ms']:.1f} ms |",
        f"| backlog queued while the receiver was down | {back['events']:,} push events over "
        f"{back['repositories']} repositories of one organization hook ({back['queue_seconds']:.1f} s to push) |",
        f"| receiver back → first delivery (the retry back-off) | {back['retry_wait_seconds']:.1f} s |",
        f"| first delivery → last | {back['drain_seconds']:.1f} s |",
        f"| deliveries per second while draining | {back['deliveries_per_second']:.0f} |",
        "",
    ])


def write(report: dict[str, Any], out: Path) -> list[Path]:
    figures = report["results"].get("webhooks")
    if not figures:
        return []
    out.mkdir(parents=True, exist_ok=True)
    own = {**report, "sections": ["webhooks"], "results": {"webhooks": figures}}
    (out / "webhooks.json").write_text(json.dumps(own, indent=1) + "\n")
    (out / "webhooks.md").write_text(markdown(own))
    return [out / "webhooks.json", out / "webhooks.md"]
