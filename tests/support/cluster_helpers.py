"""Helpers for cluster tests: a seeded DevCluster, pushers through the load balancer, disk checks."""

from __future__ import annotations

import functools
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bulwark.cluster import state
from bulwark.cluster.dev import DevCluster
from bulwark.cluster.state import ClusterSnapshot
from bulwark.etcd import Etcd
from bulwark.git.runner import GitRunner
from tests.support import ha_helpers

# Fast cycles so that tests see repair within seconds.
FAST = {
    "BULWARK_CLUSTER_RECONCILE_INTERVAL": "0.5",
    "BULWARK_CLUSTER_VERIFY_INTERVAL": "3",
    "BULWARK_CLUSTER_REPLACE_AFTER": "4",
}

# ha_helpers.wait_for, polling every 0.2 s.
wait_for = functools.partial(ha_helpers.wait_for, interval=0.2)


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin",
                **(env or {})}
    proc = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def remote(base_url: str, token: str, owner: str, repo: str) -> str:
    scheme, rest = base_url.split("://", 1)
    return f"{scheme}://x:{token}@{rest}/{owner}/{repo}.git"


@dataclass
class Seeded:
    cluster: DevCluster
    user_token: str
    repos: list[str]
    owner: str = "alice"

    def url(self, repo: str, base: str | None = None) -> str:
        return remote(base or self.cluster.lb_url, self.user_token, self.owner, repo)

    def etcd(self) -> Etcd:
        return Etcd(self.cluster.etcd_endpoints, timeout=2)

    def snapshot(self) -> ClusterSnapshot:
        etcd = self.etcd()
        try:
            return state.snapshot(etcd)
        finally:
            etcd.close()

    def disk(self, node: str) -> GitRunner:
        return GitRunner(self.cluster.base_dir / node / "repositories")


def seed(cluster: DevCluster, repos: int) -> Seeded:
    admin = {"Authorization": f"token {cluster.admin_token}"}
    with httpx.Client(base_url=f"{cluster.lb_url}/api/v3", timeout=30) as client:
        r = client.post("/admin/users", json={"login": "alice", "email": "alice@example.com"}, headers=admin)
        assert r.status_code == 201, r.text
        r = client.post("/admin/users/alice/authorizations", json={"scopes": ["repo"]}, headers=admin)
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        names = [f"r{i}" for i in range(repos)]
        for name in names:
            r = client.post("/user/repos", json={"name": name}, headers={"Authorization": f"token {token}"})
            assert r.status_code == 201, r.text
    return Seeded(cluster, token, names)


def storage_ids(seeded: Seeded) -> dict[str, str]:
    """Repository name -> storage id, from the metadata store in etcd."""
    from bulwark.store.etcd import EtcdStore

    etcd = seeded.etcd()
    try:
        store = EtcdStore(etcd)
        owner = store.get_account(seeded.owner)
        assert owner is not None
        return {r.name: r.storage_id for r in store.list_repos(owner_id=owner.id)}
    finally:
        etcd.close()


@dataclass
class Load:
    """Clients that push a new commit to each repository in turn, and clone, until stopped.

    Every push whose ``git push`` exited 0 is *acknowledged*: the tests check that each one
    is in every later clone.
    """

    seeded: Seeded
    workdir: Path
    clients: int = 3
    clone_every: int = 3
    acked: dict[str, list[str]] = field(default_factory=dict)  # repo -> acknowledged commits, in order
    failures: list[tuple[float, str, str]] = field(default_factory=list)  # (time, what, message)
    successes: list[tuple[float, str]] = field(default_factory=list)  # (time, repo) of acknowledged pushes
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        repos = self.seeded.repos
        for i in range(self.clients):
            mine = repos[i::self.clients]
            t = threading.Thread(target=self._run, args=(i, mine), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _run(self, index: int, repos: list[str]) -> None:
        clones: dict[str, Path] = {}
        rounds = 0
        while not self._stop.is_set():
            rounds += 1
            for repo in repos:
                if self._stop.is_set():
                    return
                work = clones.get(repo)
                try:
                    if work is None:
                        work = self.workdir / f"c{index}-{repo}"
                        git("clone", "-q", self.seeded.url(repo), str(work))
                        clones[repo] = work
                    self._push_one(repo, work)
                    if rounds % self.clone_every == 0:
                        target = self.workdir / f"v{index}-{repo}-{rounds}"
                        git("clone", "-q", self.seeded.url(repo), str(target))
                except AssertionError as exc:
                    with self._lock:
                        self.failures.append((time.monotonic(), repo, str(exc)))
                    time.sleep(0.2)

    def _push_one(self, repo: str, work: Path) -> None:
        # Start from what the server has, so a push that failed half-way is retried cleanly.
        fetched = git("fetch", "-q", "origin", cwd=work, check=False)
        if fetched.returncode == 0 and git("rev-parse", "-q", "--verify", "origin/main", cwd=work,
                                           check=False).returncode == 0:
            git("reset", "-q", "--hard", "origin/main", cwd=work)
        git("commit", "-q", "--allow-empty", "-m", f"{repo} {time.time()}", cwd=work)
        head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        with self._lock:
            self.acked.setdefault(repo, []).append(head)
            self.successes.append((time.monotonic(), repo))


def is_ancestor(work: Path, commit: str, tip: str) -> bool:
    return git("merge-base", "--is-ancestor", commit, tip, cwd=work, check=False).returncode == 0


def replica_checksums(seeded: Seeded, storage_id: str, nodes: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for node in nodes:
        disk = seeded.disk(node)
        out[node] = disk.ref_checksum(storage_id) if disk.exists(storage_id) else None
    return out


def fully_replicated(seeded: Seeded, rf: int = 3) -> bool:
    """Every repository on exactly ``rf`` live, up-to-date replicas with identical refs on disk."""
    snap = seeded.snapshot()
    for sid, placement in snap.placements.items():
        good = [n for n in placement.up_to_date() if n in snap.alive]
        if len(placement.replicas) != rf or len(good) != rf:
            return False
        sums = replica_checksums(seeded, sid, good)
        if None in sums.values() or len(set(sums.values())) != 1:
            return False
    return True
