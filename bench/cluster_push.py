"""Push latency on a 3-node cluster relative to a standalone node, measured side by side.

Each round pushes one small commit to a standalone node, to a cluster node that holds a
replica (it leads the push), and through the cluster's load balancer; the three are
alternated so that the machine's load affects them alike. Prints medians, spreads and the
ratios cluster / standalone.

Run: .venv/bin/python bench/cluster_push.py [ROUNDS]   (starts its own processes on loopback)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bulwark.cluster.dev import DevCluster
from cluster_helpers import git, seed
from helpers import Server


def timed_push(work: Path, url: str) -> float:
    git("commit", "-q", "--allow-empty", "-m", f"{time.time()}", cwd=work)
    start = time.monotonic()
    git("push", "-q", url, "HEAD:main", cwd=work)
    return time.monotonic() - start


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    q1, q3 = values[len(values) // 4], values[(3 * len(values)) // 4]
    return f"{name:<28} median {statistics.median(values) * 1000:6.1f} ms  (IQR {q1 * 1000:.1f}-{q3 * 1000:.1f})"


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
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
            for name, url in (("standalone", s_url), ("cluster node", c_url), ("cluster via HAProxy", lb_url)):
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
            for name, values in times.items():
                print(summary(name, values))
            base = statistics.median(times["standalone"])
            for name in ("cluster node", "cluster via HAProxy"):
                print(f"ratio {name} / standalone: {statistics.median(times[name]) / base:.2f}")
        finally:
            cluster.stop()
            standalone.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
