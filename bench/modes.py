"""Bulwark's own modes: HA replication lag, cluster push latency, failover, repair, and backups."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cluster_push, ha_lag
from bench.common import Summary, client_env, percentile, run_git, timed
from bench.data import Sources
from bench.fixtures import LARGE, OWNER
from bulwark.cluster.dev import DevCluster
from tests.support.cluster_helpers import Seeded, fully_replicated, git, seed
from tests.support.helpers import Server

FAILOVER_ENV = {"BULWARK_CLUSTER_REPLACE_AFTER": "5", "BULWARK_CLUSTER_RECONCILE_INTERVAL": "1"}


def measure_ha_lag(pushes: int, root: Path) -> dict[str, Any]:
    lags = ha_lag.measure(pushes, root)
    return {"unit": "s", "pushes": pushes, "summary": Summary.of(lags).to_json(), "p99": percentile(lags, 0.99),
            "raw": lags, "note": "each lag includes one ls-remote poll of the replica (every 10 ms)"}


def measure_cluster_push(rounds: int, root: Path) -> dict[str, Any]:
    times = cluster_push.measure(rounds, root)
    base = Summary.of(times[cluster_push.STANDALONE])
    out: dict[str, Any] = {"unit": "s", "rounds": rounds}
    for name, values in times.items():
        summary = Summary.of(values)
        paired = [x / y for x, y in zip(values, times[cluster_push.STANDALONE], strict=True)]
        out[name] = {"summary": summary.to_json(), "ratio": summary.median / base.median,
                     "ratio_rounds": Summary.of(paired).to_json(), "raw": values}
    return out


# -- failover ------------------------------------------------------------------------------------


@dataclass
class Attempt:
    repo: str
    started: float
    ended: float
    ok: bool
    error: str = ""


@dataclass
class SteadyPushes:
    """One thread per repository pushing a new commit through the load balancer, again and again."""

    seeded: Seeded
    workdir: Path
    attempts: list[Attempt] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SteadyPushes:
        for repo in self.seeded.repos:
            work = self.workdir / repo
            git("init", "-q", "-b", "main", str(work))
            git("remote", "add", "origin", self.seeded.url(repo), cwd=work)
            t = threading.Thread(target=self._run, args=(repo, work), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def _run(self, repo: str, work: Path) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                error = self._push_one(repo, work)
            except subprocess.TimeoutExpired:
                error = "timed out"
            ok = not error
            with self._lock:
                self.attempts.append(Attempt(repo, started, time.monotonic(), ok, error))
            if not ok:
                time.sleep(0.05)

    @staticmethod
    def _push_one(repo: str, work: Path) -> str:
        """Fetch, commit and push; git's last words if the push failed, else an empty string."""
        # Start from what the server has, so that a push which failed half-way is retried cleanly.
        if git("fetch", "-q", "origin", cwd=work, check=False, timeout=30).returncode == 0 and git(
                "rev-parse", "-q", "--verify", "origin/main", cwd=work, check=False).returncode == 0:
            git("reset", "-q", "--hard", "origin/main", cwd=work)
        git("commit", "-q", "--allow-empty", "-m", f"{repo} {time.time()}", cwd=work)
        proc = git("push", "-q", "origin", "HEAD:main", cwd=work, check=False, timeout=30)
        if proc.returncode == 0:
            return ""
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        return " / ".join(lines[-2:]) or f"exit {proc.returncode}"

    def first_success_after(self, moment: float, repo: str | None = None) -> float | None:
        """When the first attempt begun after ``moment`` (on ``repo``, or any) was acknowledged."""
        with self._lock:
            ends = [a.ended for a in self.attempts if a.ok and a.started >= moment and repo in (None, a.repo)]
        return min(ends) if ends else None


def _wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def failover_round(root: Path, repos: int) -> dict[str, Any]:
    """A 4-node cluster under steady pushes through HAProxy; ``kill -9`` of node2 and its etcd member.

    Returns seconds from the kill to: the first acknowledged push begun after it; a push acknowledged
    on every repository; every repository back on 3 up-to-date replicas.
    """
    with DevCluster(root / "cluster", nodes=4, replication_factor=3, node_env=FAILOVER_ENV) as cluster:
        seeded = seed(cluster, repos)
        (root / "pushers").mkdir()
        pushes = SteadyPushes(seeded, root / "pushers").start()
        try:
            _wait(lambda: all(pushes.first_success_after(0, r) is not None for r in seeded.repos), 60,
                  "a first push to every repository")
            time.sleep(2)
            killed = time.monotonic()
            cluster.kill_node("node2")
            _wait(lambda: all(pushes.first_success_after(killed, r) is not None for r in seeded.repos), 90,
                  "a push to every repository after the kill")
            first = pushes.first_success_after(killed)
            every = max(pushes.first_success_after(killed, r) or 0.0 for r in seeded.repos)
        finally:
            pushes.stop()
        failures = [a for a in pushes.attempts if not a.ok and a.ended >= killed]
        errors: dict[str, int] = {}
        for a in failures:
            errors[a.error] = errors.get(a.error, 0) + 1
        slowest = max(seeded.repos, key=lambda r: pushes.first_success_after(killed, r) or 0.0)
        _wait(lambda: fully_replicated(seeded), 120, "the replication factor restored", interval=0.2)
        restored = time.monotonic()
        assert first is not None
        return {"first_push_s": first - killed, "every_repo_push_s": every - killed,
                "rf_restored_s": restored - killed, "failed_pushes": len(failures),
                "failed_by_repo": {r: sum(1 for a in failures if a.repo == r) for r in seeded.repos},
                "slowest_repo": slowest, "errors": errors}


def measure_failover(rounds: int, root: Path, repos: int = 6) -> dict[str, Any]:
    results = [failover_round(root / f"round-{i}", repos) for i in range(rounds)]
    out: dict[str, Any] = {"rounds": rounds, "repositories": repos, "node_env": FAILOVER_ENV, "raw": results}
    for key in ("first_push_s", "every_repo_push_s", "rf_restored_s"):
        out[key] = Summary.of([r[key] for r in results]).to_json()
    return out


# -- backups ---------------------------------------------------------------------------------------


class Changes:
    """New commits pushed to some repositories of a Bulwark node, between two backups."""

    def __init__(self, server: Server, token: str, sources: Sources, names: list[str], work: Path) -> None:
        self.server = server
        self.token = token
        self.names = names
        self.env = client_env(work)
        self.repo = work / "changes.git"
        run_git(["clone", "-q", "--bare", "--shared", str(sources.small), str(self.repo)], self.env)
        run_git(["fetch", "-q", str(sources.large), f"refs/heads/main:refs/heads/{LARGE}"], self.env, cwd=self.repo)
        self.tips = {name: name for name in names} | {LARGE: LARGE}
        self.serial = 0

    def push(self) -> None:
        self.serial += 1
        for name in [*self.names, LARGE]:
            tip = self.tips[name]
            tree = run_git(["rev-parse", f"{tip}^{{tree}}"], self.env, cwd=self.repo).strip()
            commit = run_git(["commit-tree", tree, "-p", tip, "-m", f"change {self.serial}"], self.env,
                             cwd=self.repo).strip()
            url = self.server.remote(OWNER, name, token=self.token)
            run_git(["push", "-q", url, f"{commit}:refs/heads/main"], self.env, cwd=self.repo)
            self.tips[name] = commit


def measure_backup(server: Server, changes: Changes, work: Path, rounds: int) -> dict[str, Any]:
    """``bulwark backup create`` (full, then incremental after each change) against ``rsync -a`` of the
    node's data dir into a copy kept from run to run (so its later runs are incremental too)."""
    backup_dir, copy = work / "backup", work / "rsync-copy"

    def backup() -> float:
        argv = [sys.executable, "-m", "bulwark", "backup", "create", "-q", "--from", server.url, "--to",
                str(backup_dir), "--token", server.token]
        return timed(lambda: subprocess.run(argv, check=True, capture_output=True, timeout=1800))

    def rsync() -> float:
        argv = ["rsync", "-a", "--delete", f"{server.data_dir}/", f"{copy}/"]
        return timed(lambda: subprocess.run(argv, check=True, capture_output=True, timeout=1800))

    startup = timed(lambda: subprocess.run([sys.executable, "-m", "bulwark", "backup", "create", "--help"],
                                           check=True, capture_output=True, timeout=60))
    full = {"rsync": rsync(), "backup": backup()}
    incremental: dict[str, list[float]] = {"backup": [], "rsync": []}
    for i in range(rounds):
        changes.push()
        for name in ("backup", "rsync") if i % 2 == 0 else ("rsync", "backup"):
            incremental[name].append(backup() if name == "backup" else rsync())
    b, r = Summary.of(incremental["backup"]), Summary.of(incremental["rsync"])
    return {
        "unit": "s",
        "changed_per_round": len(changes.names) + 1,
        "cli_startup_s": startup,
        "full": {**full, "ratio": full["backup"] / full["rsync"]},
        "incremental": {"backup": b.to_json(), "rsync": r.to_json(), "ratio": b.median / r.median,
                        "raw": incremental},
        "note": "rsync -a copies the live data dir (not a consistent point); the backup is a consistent "
                "snapshot fetched over HTTP with git, hard-linked to the previous one",
    }
