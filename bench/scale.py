"""Scale: how look-ups and lists grow with the number of repositories, standalone and on a cluster.

At each size N the records are grown to N repositories owned by one user (the worst case for
that user's lists) and the same requests are timed: a page of 100 of ``GET /user/repos`` (first,
middle and last page), the first page of ``GET /users/{u}/repos``, ``GET /repos/{o}/{r}``, the
authorization and advertisement of ``info/refs``, creating repositories through the API, and on
the cluster ``bulwark cluster status``. Beside them stand 10,000 users, all members of one
organization that owns 1,000 private repositories; one member's access to those (``GET`` and
``info/refs``) is timed too, an access decision through an organization. The bulk is written
through the store (empty repositories, with their data on disk and, on the cluster, their
placements), as an installation that grew would hold it; the API's create rate is measured apart.
A flat line against N is the goal.

    .venv/bin/python -m bench --only scale                       # 1,000 and 10,000 repositories
    .venv/bin/python -m bench --only scale --scale 100000        # up to 100,000
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bulwark.cluster import reconciler, state
from bulwark.cluster.dev import DevCluster
from bulwark.cluster.state import Placement
from bulwark.etcd import Etcd
from bulwark.git.runner import GitRunner
from bulwark.models import OrgRole, Visibility
from bulwark.store import Store
from bulwark.store.etcd import EtcdStore
from bulwark.store.sqlite import SQLiteStore
from tests.support.helpers import Server

SIZES = (1_000, 10_000, 100_000)
SAMPLES = 10
CREATES = 20
PARALLEL_CREATES = 160
GROW_WRITERS = 8
CLIENTS = 16
OWNER = "scale"
USERS = 10_000
ORG = "scale-org"
ORG_REPOS = 1_000
MEMBER = "member00000"  # one of the users, whose access to the organization's repositories is timed
MEASURES = ("list_first", "list_middle", "list_last", "owner_list", "get_repo", "info_refs",
            "org_get_repo", "org_info_refs")


def sizes_up_to(limit: int) -> list[int]:
    return [n for n in SIZES if n <= limit] or [limit]


class Target:
    """One installation under test: where to send requests, and how to grow its records."""

    def __init__(self, base_url: str, token: str, store: Store, disks: list[GitRunner],
                 place: Callable[[str], None] | None, pids: Callable[[], list[int]],
                 status: Callable[[], float] | None, etcd_bytes: Callable[[], int] | None) -> None:
        self.base_url, self.token, self.store, self.disks = base_url, token, store, disks
        self.place, self.pids, self.status, self.etcd_bytes = place, pids, status, etcd_bytes
        self.count = 0
        self.member_token = ""
        self.template: Path | None = None
        self.writers = GROW_WRITERS if place is not None else 1  # SQLite takes one writer at a time
        self.cycle: Callable[[], float] | None = None  # the reconciler's cycle, in seconds
        self.restart: Callable[[], float] | None = None  # a node's start until it serves, in seconds

    def grow(self, total: int, log: Callable[[str], None]) -> float:
        """Add empty repositories up to ``total``; seconds taken."""
        owner = self.store.get_account(OWNER)
        assert owner is not None
        started = time.monotonic()

        def add(number: int) -> None:
            self._add_repo(owner.id, f"bulk{number:06d}", f"{number:08d}{'a' * 24}", Visibility.PUBLIC)

        self._in_parallel(add, range(self.count, total), "repositories", log)
        self.count = total
        return time.monotonic() - started

    def add_people(self, admin_token: str, log: Callable[[str], None]) -> float:
        """USERS users, every one a member of ORG, which owns ORG_REPOS private repositories; the
        first user's token is kept for the measures. Seconds taken."""
        started = time.monotonic()
        # Not OWNER: the organization's repositories would join OWNER's own list and its pages.
        founder = self.store.create_user(f"{ORG}-founder", email=f"{ORG}-founder@example.com")
        org = self.store.create_org(ORG, owner_id=founder.id)

        def add_user(number: int) -> None:
            user = self.store.create_user(f"member{number:05d}", email=f"member{number:05d}@example.com")
            self.store.set_membership(org.id, user.id, OrgRole.MEMBER)

        def add_repo(number: int) -> None:
            self._add_repo(org.id, f"org{number:05d}", f"{number:08d}{'b' * 24}", Visibility.PRIVATE)

        self._in_parallel(add_user, range(USERS), "users", log)
        self._in_parallel(add_repo, range(ORG_REPOS), "organization repositories", log)
        with httpx.Client(base_url=f"{self.base_url}/api/v3", timeout=60,
                          headers={"Authorization": f"token {admin_token}"}) as client:
            r = client.post(f"/admin/users/{MEMBER}/authorizations", json={"scopes": ["repo"]})
            r.raise_for_status()
            self.member_token = str(r.json()["token"])
        return time.monotonic() - started

    def _add_repo(self, owner_id: int, name: str, storage_id: str, visibility: Visibility) -> None:
        self.store.create_repo(owner_id, name, storage_id=storage_id, visibility=visibility)
        for disk in self.disks:
            target = disk.path(storage_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self._template(), target)
        if self.place is not None:
            self.place(storage_id)

    def _in_parallel(self, add: Callable[[int], None], numbers: range, what: str, log: Callable[[str], None]) -> None:
        self._template()  # made before the writers start, which all copy it
        # A few writers at once: the bulk is set-up, not a measure, and etcd answers each one in ms.
        with ThreadPoolExecutor(self.writers) as pool:
            for done, _ in enumerate(pool.map(add, numbers), start=numbers.start + 1):
                if done % 5_000 == 0:
                    log(f"  {done} {what}")

    def _template(self) -> Path:
        if self.template is None:
            self.template = Path(self.disks[0].root).parent / "template.git"
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.template)], check=True)
            for sample in (self.template / "hooks").glob("*.sample"):
                sample.unlink()  # as Bulwark makes them
        return self.template


def _timed(client: httpx.Client, path: str, token: str) -> list[float]:
    times = []
    for _ in range(SAMPLES):
        started = time.monotonic()
        r = client.get(path, headers={"Authorization": f"token {token}"})
        times.append(time.monotonic() - started)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status_code}: {r.text[:200]}")
    return times


def _parallel_creates(target: Target, first: int) -> float:
    """Creates per second with CLIENTS clients sending one after another at once."""
    headers = {"Authorization": f"token {target.token}"}
    with httpx.Client(base_url=target.base_url, timeout=120, headers=headers,
                      limits=httpx.Limits(max_connections=CLIENTS)) as client:

        def create(number: int) -> None:
            r = client.post("/api/v3/user/repos", json={"name": f"api{number}"})
            if r.status_code != 201:
                raise RuntimeError(f"creating a repository: HTTP {r.status_code}: {r.text[:200]}")

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(create, range(first, first + PARALLEL_CREATES)))
        return PARALLEL_CREATES / (time.monotonic() - started)


def measure_at(target: Target, n: int, created: int) -> dict[str, Any]:
    pages = max(1, n // 100)
    paths = {
        "list_first": "/api/v3/user/repos?per_page=100&page=1",
        "list_middle": f"/api/v3/user/repos?per_page=100&page={max(1, pages // 2)}",
        "list_last": f"/api/v3/user/repos?per_page=100&page={pages}",
        "owner_list": f"/api/v3/users/{OWNER}/repos?per_page=100",
        "get_repo": f"/api/v3/repos/{OWNER}/bulk{n // 2:06d}",
        "info_refs": f"/{OWNER}/api0.git/info/refs?service=git-upload-pack",
        "org_get_repo": f"/api/v3/repos/{ORG}/org{ORG_REPOS // 2:05d}",
        "org_info_refs": f"/{ORG}/org{ORG_REPOS // 3:05d}.git/info/refs?service=git-upload-pack",
    }
    out: dict[str, Any] = {"repositories": n}
    with httpx.Client(base_url=target.base_url, timeout=120) as client:
        for name, path in paths.items():
            times = _timed(client, path, target.member_token if name.startswith("org_") else target.token)
            out[name] = {"p50": statistics.median(times), "max": max(times)}
        started = time.monotonic()
        for i in range(CREATES):
            r = client.post("/api/v3/user/repos", json={"name": f"api{created + i + 1}"},
                            headers={"Authorization": f"token {target.token}"})
            if r.status_code != 201:
                raise RuntimeError(f"creating a repository: HTTP {r.status_code}: {r.text[:200]}")
        out["create_per_s"] = CREATES / (time.monotonic() - started)
        out["create_parallel_per_s"] = _parallel_creates(target, first=created + CREATES + 1)
    out["rss_mb"] = sum(psutil.Process(pid).memory_info().rss for pid in target.pids()) / 1e6 / len(target.pids())
    if target.status is not None:
        out["cluster_status_s"] = target.status()
    if target.etcd_bytes is not None:
        out["etcd_db_mb"] = target.etcd_bytes() / 1e6
    if target.cycle is not None:
        out["reconcile_cycle_s"] = target.cycle()
    if target.restart is not None:
        out["node_start_s"] = target.restart()  # last: RSS above is of nodes that served the measures
    return out


def _token_for(base_url: str, admin: str) -> str:
    with httpx.Client(base_url=f"{base_url}/api/v3", timeout=60, headers={"Authorization": f"token {admin}"}) as c:
        r = c.post("/admin/users", json={"login": OWNER, "email": f"{OWNER}@example.com"})
        r.raise_for_status()
        r = c.post(f"/admin/users/{OWNER}/authorizations", json={"scopes": ["repo"]})
        r.raise_for_status()
        token = str(r.json()["token"])
        r = c.post("/user/repos", json={"name": "api0"}, headers={"Authorization": f"token {token}"})
        r.raise_for_status()
        return token


def _curve(target: Target, admin_token: str, sizes: list[int], log: Callable[[str], None]) -> list[dict[str, Any]]:
    seconds = target.add_people(admin_token, log)
    log(f"  {USERS} users in {ORG}, with {ORG_REPOS} private repositories, added in {seconds:.0f}s")
    points: list[dict[str, Any]] = []
    for n in sizes:
        seconds = target.grow(n, log)
        log(f"  grown to {n} repositories in {seconds:.0f}s; measuring")
        point = measure_at(target, n, created=len(points) * (CREATES + PARALLEL_CREATES))
        log(f"  {n}: list page p50 {point['list_first']['p50'] * 1000:.0f} ms, "
            f"GET repository {point['get_repo']['p50'] * 1000:.0f} ms, {point['create_per_s']:.0f} creates/s")
        points.append(point)
    return points


def standalone_curve(work: Path, sizes: list[int], log: Callable[[str], None]) -> list[dict[str, Any]]:
    server = Server(data_dir=work / "standalone").start()
    try:
        token = _token_for(server.url, server.token)
        store = SQLiteStore(server.data_dir / "metadata.db")
        try:
            assert server.proc is not None
            pid = server.proc.pid
            target = Target(server.url, token, store, [GitRunner(server.data_dir / "repositories")], None,
                            lambda: [pid], None, None)
            return _curve(target, server.token, sizes, log)
        finally:
            store.close()
    finally:
        server.stop()


def cluster_curve(work: Path, sizes: list[int], log: Callable[[str], None]) -> list[dict[str, Any]]:
    with DevCluster(work / "cluster", nodes=3, replication_factor=3) as cluster:
        token = _token_for(cluster.lb_url, cluster.admin_token)
        etcd = Etcd(cluster.etcd_endpoints, timeout=10)
        store = EtcdStore(etcd)

        def place(storage_id: str) -> None:
            state.create_placement(etcd, Placement(storage_id, {name: 0 for name in cluster.names}))

        def node_pids() -> list[int]:
            return [n.process.pid for n in cluster.nodes.values() if n.process is not None and n.process.pid]

        def status() -> float:
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "bulwark", "cluster", "status", "--json",
                            "--etcd", ",".join(cluster.etcd_endpoints)], capture_output=True, timeout=300, check=False)
            return time.monotonic() - started

        def restart() -> float:
            """Seconds from starting a stopped node until it serves (its /status answers 200)."""
            node = cluster.node("node3")
            cluster.stop_node("node3")
            if node.process is not None:
                node.process.wait_or_kill()
            started = time.monotonic()
            cluster.start_node("node3")
            return time.monotonic() - started

        def cycle() -> float:
            """How long the reconciler's last cycle took, as it reports (waiting for one after now)."""
            before = reconciler.read_report(etcd) or {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                report = reconciler.read_report(etcd) or {}
                if report.get("at") != before.get("at") and "seconds" in report:
                    return float(report["seconds"])
                time.sleep(0.2)
            return float("nan")

        def etcd_bytes() -> int:
            status_ = etcd.call("/maintenance/status", {})
            return int(status_.get("dbSize", 0))

        try:
            disks = [GitRunner(cluster.base_dir / name / "repositories") for name in cluster.names]
            target = Target(cluster.lb_url, token, store, disks, place, node_pids, status, etcd_bytes)
            target.cycle, target.restart = cycle, restart
            return _curve(target, cluster.admin_token, sizes, log)
        finally:
            store.close()
            etcd.close()


def measure(work: Path, limit: int, log: Callable[[str], None]) -> dict[str, Any]:
    sizes = sizes_up_to(limit)
    work.mkdir(parents=True, exist_ok=True)
    log(f"scale, standalone: {', '.join(map(str, sizes))} repositories")
    standalone = standalone_curve(work, sizes, log)
    log(f"scale, a 3-node cluster: {', '.join(map(str, sizes))} repositories")
    cluster = cluster_curve(work, sizes, log)
    return {"sizes": sizes, "standalone": standalone, "cluster": cluster}


# -- report -------------------------------------------------------------------------------

LABELS = {
    "list_first": "list page, first", "list_middle": "list page, middle", "list_last": "list page, last",
    "owner_list": "owner's list, first page", "get_repo": "GET repository", "info_refs": "info/refs",
    "org_get_repo": "GET repository, through an organization", "org_info_refs": "info/refs, through an organization",
}


def markdown(scale: dict[str, Any]) -> list[str]:
    if "error" in scale:
        return [f"Scale: the run failed: {scale['error']}"]
    lines = []
    for mode in ("standalone", "cluster"):
        points = scale[mode]
        lines += [f"**{mode}** (p50 of {SAMPLES} requests, the slowest in brackets)", "",
                  "| measure | " + " | ".join(f"{p['repositories']:,}" for p in points) + " |",
                  "|---|" + "---|" * len(points)]
        for key in MEASURES:
            cells = [f"{p[key]['p50'] * 1000:.0f} ms ({p[key]['max'] * 1000:.0f})" for p in points]
            lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
        lines.append("| creates through the API, one client | "
                     + " | ".join(f"{p['create_per_s']:.0f}/s" for p in points) + " |")
        lines.append(f"| creates through the API, {CLIENTS} clients at once | "
                     + " | ".join(f"{p.get('create_parallel_per_s', 0):.0f}/s" for p in points) + " |")
        if "cluster_status_s" in points[0]:
            lines.append("| `cluster status` | " + " | ".join(f"{p['cluster_status_s']:.2f} s" for p in points) + " |")
            lines.append("| etcd database | " + " | ".join(f"{p['etcd_db_mb']:.0f} MB" for p in points) + " |")
            lines.append("| reconciler cycle | "
                         + " | ".join(f"{p.get('reconcile_cycle_s', float('nan')):.2f} s" for p in points) + " |")
            lines.append("| node start, until it serves | "
                         + " | ".join(f"{p.get('node_start_s', float('nan')):.1f} s" for p in points) + " |")
        lines.append("| RSS per node | " + " | ".join(f"{p['rss_mb']:.0f} MB" for p in points) + " |")
        lines.append("")
    return lines


def plot(scale: dict[str, Any], path: Path) -> bool:
    if "error" in scale:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ("standalone", "cluster"), strict=True):
        points = scale[mode]
        xs = [p["repositories"] for p in points]
        for key in MEASURES:
            ax.plot(xs, [p[key]["p50"] * 1000 for p in points], marker="o", label=LABELS[key])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(mode)
        ax.set_xlabel("repositories")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("p50 (ms)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
