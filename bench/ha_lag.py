"""HA replication lag under a steady push load: push to the primary, time until the replica has it.

Run: .venv/bin/python bench/ha_lag.py [PUSHES]   (starts its own primary and replica on loopback)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile
from tests.support.ha_helpers import Pusher, refs_of, setup_replica, wait_for
from tests.support.helpers import Server, git_env


def measure(pushes: int, root: Path) -> list[float]:
    """Seconds from each acknowledged push to the primary until the replica lists the new ref.

    Each lag includes one ``ls-remote`` poll of the replica (polled every 10 ms).
    """
    primary = Server(data_dir=root / "primary").start()
    replica = Server(data_dir=root / "replica").start()
    try:
        setup_replica(replica, primary)
        env = git_env(root)
        token = primary.create_user("alice")
        primary.create_repo(token, "app")
        pusher = Pusher.clone(primary.remote("alice", "app", token=token), root / "w", env)
        replica_remote = replica.remote("alice", "app", token=token)
        # The token reaches the replica through the change stream: wait until it can read there.
        wait_for(lambda: refs_of(replica_remote, env) is not None, timeout=30, what="the token on the replica")
        lags = []
        for _ in range(pushes):
            done = pusher.push_new_branch()
            if not done:
                raise RuntimeError("a push to the primary failed")
            acked = time.monotonic()
            branch, sha = done
            deadline = acked + 60
            while refs_of(replica_remote, env).get(f"refs/heads/{branch}") != sha:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica did not get {branch} within 60 s")
                time.sleep(0.01)
            lags.append(time.monotonic() - acked)
        return lags
    finally:
        replica.stop()
        primary.stop()


def main(pushes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lags = sorted(measure(pushes, Path(tmp)))
    print(f"{pushes} pushes: lag median {statistics.median(lags) * 1000:.0f} ms, "
          f"p99 {percentile(lags, 0.99) * 1000:.0f} ms, worst {lags[-1] * 1000:.0f} ms "
          "(includes one ls-remote poll of the replica)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
