"""Webhooks on a cluster: hooks and their outbox in etcd, one node delivering at a time (the one
holding the deliverer's key on its session lease), and that node killed with SIGKILL in the middle
of a burst of pushes: another node takes over within seconds, and no acknowledged push is lost."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.cluster import keys
from bulwark.cluster.dev import DevCluster
from bulwark.etcd import Etcd
from bulwark.store.etcd import EtcdStore
from bulwark.webhooks.store_etcd import EtcdHooks
from tests.support.cluster_helpers import FAST, Load, Seeded, seed, wait_for
from tests.support.helpers import free_port
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.timeout(420), pytest.mark.system]

SECRET = "shared with the receiver"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    env = {**FAST, "BULWARK_WEBHOOK_ALLOW_PRIVATE": "1"}
    with DevCluster(tmp_path_factory.mktemp("hooks"), nodes=3, node_env=env) as c:
        yield c


def deliverer(seeded: Seeded) -> str | None:
    etcd = seeded.etcd()
    try:
        kv = etcd.get(keys.WEBHOOK_DELIVERER)
        return kv.text if kv else None
    finally:
        etcd.close()


def test_a_deleted_repository_takes_its_hooks_along(cluster: DevCluster) -> None:
    # etcd has no cascades: the hooks of a deleted repository are removed with it, not left behind.
    admin = httpx.Client(base_url=f"{cluster.lb_url}/api/v3", timeout=30,
                         headers={"Authorization": f"token {cluster.admin_token}"})
    assert admin.post("/admin/users", json={"login": "carol", "email": "carol@example.com"}).status_code == 201
    token = admin.post("/admin/users/carol/authorizations", json={"scopes": ["repo", "delete_repo"]}).json()["token"]
    carol = httpx.Client(base_url=f"{cluster.lb_url}/api/v3", timeout=30, headers={"Authorization": f"token {token}"})
    assert carol.post("/user/repos", json={"name": "brief"}).status_code == 201
    r = carol.post("/repos/carol/brief/hooks", json={"config": {"url": "https://ci.example.com/hook"}})
    assert r.status_code == 201, r.text
    etcd = Etcd(cluster.etcd_endpoints, timeout=2)
    try:
        hooks = EtcdHooks(EtcdStore(etcd))
        assert [h.id for h in hooks.list_hooks()] == [r.json()["id"]]
        assert carol.delete("/repos/carol/brief").status_code == 204
        assert hooks.list_hooks() == []
    finally:
        etcd.close()


def test_the_delivering_node_killed_in_a_burst_another_takes_over_and_nothing_acknowledged_is_lost(
    cluster: DevCluster, tmp_path: Path
) -> None:
    receiver = Receiver(free_port(), tmp_path / "received.jsonl", SECRET, delay=0.05).start()
    try:
        seeded = seed(cluster, 3)
        api = httpx.Client(base_url=f"{cluster.lb_url}/api/v3", timeout=30,
                           headers={"Authorization": f"token {seeded.user_token}"})
        for repo in seeded.repos:
            r = api.post(f"/repos/alice/{repo}/hooks",
                         json={"config": {"url": receiver.url, "content_type": "json", "secret": SECRET},
                               "events": ["push"]})
            assert r.status_code == 201, r.text
            assert r.json()["config"]["secret"] == "********"
        receiver.wait_for(3, "ping")
        # Every node serves the same hooks (they are in etcd), whichever the load balancer picks.
        for name in cluster.names:
            listed = httpx.get(f"{cluster.node_url(name)}/api/v3/repos/alice/r0/hooks", timeout=10,
                               headers={"Authorization": f"token {seeded.user_token}"})
            assert listed.status_code == 200 and len(listed.json()) == 1, listed.text

        first = wait_for(lambda: deliverer(seeded), timeout=20, what="a node to take the deliverer's key")
        load = Load(seeded, tmp_path / "load", clients=3).start()
        try:
            wait_for(lambda: len(load.successes) >= 15, timeout=120, what="15 acknowledged pushes")
            delivered_before = len(receiver.records("push"))
            assert deliverer(seeded) == first, "the delivering node changed without a failure"
            cluster.kill_node(first, with_etcd=False)
            killed_at = time.monotonic()
            second = wait_for(lambda: (d := deliverer(seeded)) not in (None, first) and d, timeout=30,
                              what="another node to take the deliverer's key")
            took_over = time.monotonic() - killed_at
            wait_for(lambda: len(receiver.records("push")) > delivered_before + 3, timeout=60,
                     what="deliveries from the node that took over")
            wait_for(lambda: len(load.successes) >= 30, timeout=120, what="15 more acknowledged pushes")
        finally:
            load.stop()

        acked = {sha for commits in load.acked.values() for sha in commits}

        def delivered() -> set[str]:
            return {rec["payload"]["after"] for rec in receiver.records("push")}

        wait_for(lambda: acked <= delivered(), timeout=120, what="every acknowledged push's delivery")
        got = receiver.records("push")
        duplicates = sum(n - 1 for n in collections.Counter(rec["guid"] for rec in got).values())
        print(f"\n{len(acked)} acknowledged pushes, {len(got)} push deliveries, {duplicates} duplicates, "
              f"0 lost; {second} took over from {first} {took_over:.1f}s after it was killed")
        assert all(rec["signed"] for rec in got)
        # One repository's pushes reached its hook in the order they were acknowledged.
        for repo, commits in load.acked.items():
            order = [rec["payload"]["after"] for rec in got if rec["payload"]["repository"]["name"] == repo]
            firsts = [order.index(sha) for sha in commits]
            assert firsts == sorted(firsts), f"{repo}'s pushes arrived out of order"
    finally:
        receiver.stop()
