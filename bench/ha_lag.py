"""HA replication lag under a steady push load: push to the primary, time until the replica has it.

Run: .venv/bin/python bench/ha_lag.py [PUSHES]   (starts its own primary and replica on loopback)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ha_helpers import Pusher, refs_of, setup_replica
from helpers import Server, git_env


def main(pushes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        primary = Server(data_dir=root / "primary").start()
        replica = Server(data_dir=root / "replica").start()
        try:
            setup_replica(replica, primary)
            env = git_env(root)
            token = primary.create_user("alice")
            primary.create_repo(token, "app")
            pusher = Pusher.clone(primary.remote("alice", "app", token=token), root / "w", env)
            replica_remote = replica.remote("alice", "app", token=token)
            lags = []
            for _ in range(pushes):
                done = pusher.push_new_branch()
                assert done
                acked = time.monotonic()
                branch, sha = done
                while refs_of(replica_remote, env).get(f"refs/heads/{branch}") != sha:
                    time.sleep(0.01)
                lags.append(time.monotonic() - acked)
            lags.sort()
            p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            print(f"{pushes} pushes: lag median {statistics.median(lags) * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms, worst {lags[-1] * 1000:.0f} ms "
                  "(includes one ls-remote poll of the replica)")
        finally:
            replica.stop()
            primary.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
