"""A node cut off from the rest (network namespace, link down) refuses writes, and after the
cut heals no repository has replicas that disagree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulwark.cluster.dev import DevCluster
from tests.support.cluster_helpers import FAST, Seeded, git, replica_checksums, seed, storage_ids, wait_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.system,
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("partition"), nodes=3, isolate="node3", node_env=FAST) as c:
        yield c


def in_namespace(cluster: DevCluster, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert cluster.link is not None
    return subprocess.run(["ip", "netns", "exec", cluster.link.ns, *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})


def status_code(cluster: DevCluster, url: str) -> str:
    probe = ("import urllib.request, urllib.error, sys\n"
             "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
             "except urllib.error.HTTPError as e:\n    print(e.code)\n"
             "except Exception as e:\n    print('unreachable')\n")
    return in_namespace(cluster, sys.executable, "-c", probe, url).stdout.strip()


def test_cut_off_node_refuses_writes_and_replicas_agree_after_healing(cluster: DevCluster, tmp_path: Path) -> None:
    seeded: Seeded = seed(cluster, 2)
    sids = storage_ids(seeded)
    work = tmp_path / "w"
    git("clone", "-q", seeded.url("r0"), str(work))
    git("commit", "-q", "--allow-empty", "-m", "before the cut", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    before = seeded.disk("node3").ref_checksum(sids["r0"])

    cluster.cut("node3")
    cut_at = time.monotonic()
    wait_for(lambda: "node3" not in seeded.snapshot().alive, timeout=20, what="node3's lease to expire")
    node3 = cluster.node_url("node3")
    wait_for(lambda: status_code(cluster, f"{node3}/status") == "503", timeout=20, what="node3 to fence itself")
    print(f"\nnode3 fenced itself {time.monotonic() - cut_at:.1f}s after the cut")

    # A client on node3's side of the cut cannot write through it...
    git("commit", "-q", "--allow-empty", "-m", "written on the wrong side", cwd=work)
    refused = in_namespace(cluster, "git", "-C", str(work), "push", seeded.url("r0", node3), "HEAD:refs/heads/side")
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert seeded.disk("node3").ref_checksum(sids["r0"]) == before
    # ...while the majority side goes on taking writes.
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    majority_head = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    for node in ("node1", "node2"):
        assert seeded.disk(node).resolve(sids["r0"], "main") == majority_head

    cluster.heal("node3")
    wait_for(lambda: "node3" in seeded.snapshot().alive, timeout=30, what="node3 back in etcd")

    def agree() -> bool:
        snap = seeded.snapshot()
        for sid in sids.values():
            placement = snap.placements[sid]
            sums = replica_checksums(seeded, sid, list(placement.replicas))
            if placement.outdated() or None in sums.values() or len(set(sums.values())) != 1:
                return False
        return True

    wait_for(agree, timeout=60, what="every replica identical after healing")
    assert seeded.disk("node3").resolve(sids["r0"], "main") == majority_head
    assert seeded.disk("node3").resolve(sids["r0"], "side") is None
