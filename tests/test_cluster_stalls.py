"""A real 3-node cluster: a hung node (SIGSTOP) does not stall pushes that have a majority, and a
push that cannot get one is refused in git's own words.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.cluster.dev import DevCluster
from tests.support.cluster_helpers import FAST, Seeded, fully_replicated, git, seed, storage_ids, wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.system]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("stalls"), nodes=3, replication_factor=3, node_env=FAST) as c:
        yield c


@pytest.fixture(scope="module")
def seeded(cluster: DevCluster) -> Seeded:
    return seed(cluster, 1)


def pid_of(cluster: DevCluster, name: str) -> int:
    process = cluster.node(name).process
    assert process is not None and process.pid is not None
    return process.pid


class Paused:
    """SIGSTOP some nodes' processes for the duration of a block, as a hung machine would be."""

    def __init__(self, cluster: DevCluster, *names: str) -> None:
        self.pids = [pid_of(cluster, n) for n in names]

    def __enter__(self) -> Paused:
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)


def work(seeded: Seeded, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    if not path.exists():
        git("clone", "-q", seeded.url("r0", seeded.cluster.node_url("node1")), str(path))
    return path


def refused_pushes(seeded: Seeded, node: str) -> float:
    text = httpx.get(f"{seeded.cluster.node_url(node)}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('bulwark_git_refused_total{') and 'reason="replicas"' in line)


def commit(path: Path, text: str) -> str:
    (path / "file").write_text(text)
    git("add", "file", cwd=path)
    git("commit", "-q", "-m", text, cwd=path)
    return git("rev-parse", "HEAD", cwd=path).stdout.strip()


def test_a_hung_follower_is_left_behind_and_repaired(seeded: Seeded, tmp_path: Path) -> None:
    path = work(seeded, tmp_path, "w")
    commit(path, "before")
    git("push", "-q", "origin", "HEAD:main", cwd=path)
    wait_for(lambda: fully_replicated(seeded), timeout=60, what="the first push on every replica")
    sid = storage_ids(seeded)["r0"]
    with Paused(seeded.cluster, "node3"):
        tips = []
        for i in range(3):  # each push leads without waiting on node3 for longer than the deadline
            tips.append(commit(path, f"while node3 hangs {i}"))
            pushed = git("push", "origin", "HEAD:main", cwd=path, check=False, timeout=60)
            assert pushed.returncode == 0, pushed.stderr
        placement = seeded.snapshot().placements[sid]
        assert placement.outdated() == ["node3"]  # not counted as holding the pushes
    # Back from its pause, node3 is repaired by the reconciler, with nobody's help.
    wait_for(lambda: fully_replicated(seeded), timeout=90, what="node3 repaired after its pause")
    disk = seeded.disk("node3")
    assert disk.refs(sid, "refs/heads/main")[0].oid == tips[-1]


def test_without_a_majority_git_says_why(seeded: Seeded, tmp_path: Path) -> None:
    path = work(seeded, tmp_path, "w2")
    git("pull", "-q", "origin", "main", cwd=path)
    commit(path, "no majority")
    with Paused(seeded.cluster, "node2", "node3"):
        # The followers still hold their sessions: the vote waits for them, then they are given up on.
        refused = git("push", "origin", "HEAD:main", cwd=path, check=False, timeout=60)
        assert refused.returncode != 0
        assert "! [remote rejected] HEAD -> main (" in refused.stderr, refused.stderr
        assert "majority" in refused.stderr, refused.stderr
        assert "hung up" not in refused.stderr, refused.stderr
        # Once their sessions have ended, the leader refuses before git starts, in the same words.
        wait_for(lambda: not {"node2", "node3"} & set(seeded.snapshot().alive), timeout=30, what="sessions end")
        again = git("push", "origin", "HEAD:main", cwd=path, check=False, timeout=60)
        assert again.returncode != 0
        assert "! [remote rejected] HEAD -> main (only 1 of the 3 replicas" in again.stderr, again.stderr
        assert "remote: only 1 of the 3 replicas" in again.stderr, again.stderr
        # Both refusals are counted as refused, not as successful git operations.
        assert refused_pushes(seeded, "node1") >= 2  # node1 led both: the others are paused
    wait_for(lambda: {"node2", "node3"} <= set(seeded.snapshot().alive) and fully_replicated(seeded), timeout=90,
             what="the cluster whole again")
    done = git("push", "origin", "HEAD:main", cwd=path, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
