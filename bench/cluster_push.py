"""Push latency on a 3-node cluster relative to a standalone node, measured side by side.

Each round pushes one small commit to a standalone node, to a cluster node that holds a
replica (it leads the push), and through the cluster's load balancer; the three are
alternated so that the machine's load affects them alike. Then one follower's node is hung
(SIGSTOP, as a frozen machine) and as many pushes go to the leading node: with a majority
answering, a push should not wait for the hung replica. Prints medians, spreads, the longest
push while the follower hangs and the ratios cluster / standalone.

Run: .venv/bin/python bench/cluster_push.py [ROUNDS]   (starts its own processes on loopback)
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Summary
from bulwark.cluster.dev import DevCluster
from tests.support.cluster_helpers import git, seed
from tests.support.helpers import Server

STANDALONE = "standalone"
CLUSTER_NODE = "cluster node"
CLUSTER_LB = "cluster via HAProxy"
CLUSTER_HUNG = "cluster node, a follower hung"


def timed_push(work: Path, url: str) -> float:
    git("commit", "-q", "--allow-empty", "-m", f"{time.time()}", cwd=work)
    start = time.monotonic()
    git("push", "-q", url, "HEAD:main", cwd=work)
    return time.monotonic() - start


def measure(rounds: int, root: Path) -> dict[str, list[float]]:
    """Push seconds per round for the standalone node, a cluster node leading the push, and the load balancer."""
    standalone = Server(data_dir=root / "standalone").start()
    cluster = DevCluster(root / "cluster", nodes=3).launch()
    try:
        token = standalone.create_user("alice")
        standalone.create_repo(token, "app")
        s_url = standalone.remote("alice", "app", token=token)
        seeded = seed(cluster, 1)
        c_url = seeded.url("r0", cluster.node_url("node1"))
        lb_url = seeded.url("r0")
        works = {}
        for name, url in ((STANDALONE, s_url), (CLUSTER_NODE, c_url), (CLUSTER_LB, lb_url)):
            work = root / name.replace(" ", "-")
            git("init", "-q", "-b", "main", str(work))
            git("commit", "-q", "--allow-empty", "-m", "base", cwd=work)
            git("push", "-q", "--force", url, "HEAD:main", cwd=work)
            works[name] = (work, url)
        # Cluster pushes land on r0 from two working copies: keep them on one history.
        times: dict[str, list[float]] = {name: [] for name in works}
        for _ in range(rounds):
            for name, (work, url) in works.items():
                if url != s_url:
                    git("pull", "-q", "--rebase", url, "main", cwd=work)
                times[name].append(timed_push(work, url))
        work, url = works[CLUSTER_NODE]
        git("pull", "-q", "--rebase", url, "main", cwd=work)
        process = cluster.node("node3").process
        assert process is not None and process.pid is not None
        os.kill(process.pid, signal.SIGSTOP)
        try:
            times[CLUSTER_HUNG] = [timed_push(work, url) for _ in range(rounds)]
        finally:
            os.kill(process.pid, signal.SIGCONT)
        return times
    finally:
        cluster.stop()
        standalone.stop()


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = measure(rounds, Path(tmp))
    for name, values in times.items():
        s = Summary.of(values)
        print(f"{name:<28} median {s.median * 1000:6.1f} ms  (IQR {s.q1 * 1000:.1f}-{s.q3 * 1000:.1f})")
    print(f"longest push while a follower hangs: {max(times[CLUSTER_HUNG]) * 1000:.0f} ms "
          f"(the first: {times[CLUSTER_HUNG][0] * 1000:.0f} ms)")
    base = statistics.median(times[STANDALONE])
    for name in (CLUSTER_NODE, CLUSTER_LB, CLUSTER_HUNG):
        print(f"ratio {name} / standalone: {statistics.median(times[name]) / base:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
