"""Webhooks across an HA promotion: the outbox replicates with the metadata, the replica does not
deliver, and the promoted replica delivers what its killed primary had not (duplicates allowed,
loss not) for every push it holds."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.ha_helpers import Pusher, ha_pair, refs_of, repl, wait_for
from tests.support.helpers import free_port
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.timeout(420), pytest.mark.system]

SECRET = "shared between the node and the receiver"


def test_a_promoted_replica_delivers_what_the_killed_primary_had_not(genv: dict[str, str], tmp_path: Path) -> None:
    # A slow receiver: deliveries are still pending on the primary when it dies.
    receiver = Receiver(free_port(), tmp_path / "received.jsonl", SECRET, delay=0.4).start()
    env = {"BULWARK_WEBHOOK_ALLOW_PRIVATE": "1", "BULWARK_HA_RECONCILE_INTERVAL": "1"}
    try:
        with ha_pair(tmp_path, env) as (primary, replica):
            token = primary.create_user("alice")
            primary.create_repo(token, "app")
            r = primary.api("POST", "/repos/alice/app/hooks", token=token,
                            json={"config": {"url": receiver.url, "content_type": "json", "secret": SECRET},
                                  "events": ["push"]})
            assert r.status_code == 201, r.text
            # Read on the replica: the hook replicated (its secret is not shown there either).
            def replicated() -> list[dict[str, object]] | None:
                seen = replica.api("GET", "/repos/alice/app/hooks", token=token)
                return seen.json() if seen.status_code == 200 and seen.json() else None

            [hook] = wait_for(replicated, what="the hook on the replica")
            assert hook["config"] == {"content_type": "json", "insecure_ssl": "0", "url": receiver.url,
                                      "secret": "********"}
            # The replica refuses to change hooks, in GitHub's words.
            refused = replica.api("POST", "/repos/alice/app/hooks", token=token, json={"config": {"url": receiver.url}})
            assert refused.status_code == 503 and "replica" in refused.json()["message"]

            pusher = Pusher.clone(primary.remote("alice", "app", token=token), tmp_path / "w", genv)
            acked: list[tuple[str, str]] = []
            stop = threading.Event()

            def pushing() -> None:
                while not stop.is_set():
                    done = pusher.push_new_branch(timeout=20)
                    if done:
                        acked.append(done)

            thread = threading.Thread(target=pushing)
            thread.start()
            try:
                wait_for(lambda: len(acked) >= 20, timeout=120, what="20 acknowledged pushes")
            finally:
                stop.set()
                thread.join(60)
            assert primary.proc is not None
            os.killpg(primary.proc.pid, signal.SIGKILL)
            primary.proc.wait(10)
            arrived_before = len(receiver.records("push"))

            out = repl(replica, "promote")
            assert out.returncode == 0, out.stdout + out.stderr
            assert pusher.push_new_branch(replica.remote("alice", "app", token=token))

            # Every push the new primary holds reaches the receiver, the ones the old primary had
            # not delivered included.
            held = {ref: oid for ref, oid in refs_of(replica.remote("alice", "app", token=token), genv).items()
                    if ref.startswith("refs/heads/branch-")}

            def delivered() -> set[tuple[str, str]]:
                return {(rec["payload"]["ref"], rec["payload"]["after"]) for rec in receiver.records("push")}

            wait_until = time.monotonic() + 120
            while time.monotonic() < wait_until and not set(held.items()) <= delivered():
                time.sleep(0.2)
            missing = set(held.items()) - delivered()
            got = receiver.records("push")
            duplicates = sum(n - 1 for n in collections.Counter(rec["guid"] for rec in got).values())
            lost_with_primary = [branch for branch, sha in acked if held.get(f"refs/heads/{branch}") != sha]
            print(f"\n{len(acked)} acknowledged on the old primary, {arrived_before} delivered before the kill, "
                  f"{len(held)} held by the new primary, {len(got)} push deliveries, {duplicates} duplicates, "
                  f"{len(missing)} missing; {len(lost_with_primary)} pushes not replicated before the kill")
            assert not missing, f"pushes the new primary holds were never delivered: {sorted(missing)[:5]}"
            assert all(rec["signed"] for rec in got)
    finally:
        receiver.stop()
