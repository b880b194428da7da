"""Git over SSH on a real cluster: four nodes, three replicas of each repository, real etcd.

Every node serves the same host keys (made once, kept in etcd), so a client that trusts them reaches
any node with strict host key checking; a session on a node without a replica is relayed to one
that has it, and pushes are voted exactly as over HTTP.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.cluster.dev import DevCluster
from tests.support.cluster_helpers import FAST, Seeded, seed, storage_ids, wait_for
from tests.support.helpers import git, git_env
from tests.support.ssh_helpers import Client

pytestmark = [pytest.mark.timeout(300), pytest.mark.system]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("cluster-ssh"), nodes=4, replication_factor=3, node_env=FAST,
                    ssh=True) as c:
        yield c


@pytest.fixture(scope="module")
def seeded(cluster: DevCluster) -> Seeded:
    return seed(cluster, 2)


@pytest.fixture(scope="module")
def client(cluster: DevCluster, seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Client:
    client = Client.make(tmp_path_factory.mktemp("client"), seeded.owner)
    admin = {"Authorization": f"token {cluster.admin_token}"}
    r = httpx.post(f"{cluster.lb_url}/api/v3/admin/users/{seeded.owner}/keys", headers=admin, timeout=30,
                   json={"key": client.public_key, "title": "laptop"})
    assert r.status_code == 201, r.text
    # Trusted once, from what the site publishes, for every node's address.
    keys = httpx.get(f"{cluster.lb_url}/api/v3/meta", timeout=30).json()["ssh_keys"]
    ports = [cluster.lb_ssh_port, *(node.ssh_port for node in cluster.nodes.values())]
    lines = [f"[127.0.0.1]:{port} {key}\n" for port in ports for key in keys]
    (client.home / "known_hosts").write_text("".join(lines))
    return client


def ssh_url(cluster: DevCluster, node: str, seeded: Seeded, repo: str) -> str:
    return f"ssh://git@127.0.0.1:{cluster.node(node).ssh_port}/{seeded.owner}/{repo}.git"


def holders(seeded: Seeded, repo: str) -> set[str]:
    storage_id = storage_ids(seeded)[repo]
    placement = seeded.snapshot().placements[storage_id]
    return set(placement.replicas)


def scanned(node_port: int) -> list[str]:
    out = subprocess.run(["ssh-keyscan", "-p", str(node_port), "127.0.0.1"], capture_output=True, text=True,
                         timeout=30).stdout
    return sorted(" ".join(line.split()[1:3]) for line in out.splitlines() if line.strip())


def test_every_node_serves_the_same_host_keys(cluster: DevCluster, client: Client) -> None:
    published = sorted(httpx.get(f"{cluster.lb_url}/api/v3/meta", timeout=30).json()["ssh_keys"])
    assert len(published) == 3
    for node in cluster.nodes.values():
        wait_for(lambda n=node: scanned(n.ssh_port) == published, timeout=30, what=f"{node.name}'s host keys")


def test_sessions_on_any_node_clone_push_and_fetch_with_votes(cluster: DevCluster, seeded: Seeded, client: Client,
                                                             tmp_path: Path) -> None:
    repo = seeded.repos[0]
    holding = holders(seeded, repo)
    outside = next(n for n in cluster.nodes if n not in holding)  # relayed to a node with a replica
    inside = sorted(holding)[0]
    env = client.env()
    work = tmp_path / "w"
    git("clone", "-q", ssh_url(cluster, outside, seeded, repo), str(work), env=env)
    git("checkout", "-qb", "main", cwd=work, env=env)
    (work / "a.txt").write_text("a\n")
    git("add", "a.txt", cwd=work, env=env)
    git("commit", "-qm", "a", cwd=work, env=env)
    head = git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip()
    git("push", "-q", ssh_url(cluster, outside, seeded, repo), "main", cwd=work, env=env)
    # Acknowledged means on a majority: every node, over SSH, now answers with the new head.
    for name in cluster.nodes:
        refs = git("ls-remote", ssh_url(cluster, name, seeded, repo), env=env).stdout
        assert f"{head}\trefs/heads/main" in refs, (name, refs)
    for name in sorted(holding):
        wait_for(lambda n=name: seeded.disk(n).resolve(storage_ids(seeded)[repo], "main") == head,
                 timeout=30, what=f"the push on {name}'s replica")

    # Protocol v0 keeps state between rounds: served where a replica is, refused (saying why) elsewhere.
    v0 = tmp_path / "v0"
    git("-c", "protocol.version=0", "clone", "-q", ssh_url(cluster, inside, seeded, repo), str(v0), env=env)
    assert git("rev-parse", "HEAD", cwd=v0, env=env).stdout.strip() == head
    refused = git("-c", "protocol.version=0", "ls-remote", ssh_url(cluster, outside, seeded, repo), env=env,
                  check=False)
    assert refused.returncode != 0 and "protocol v2" in refused.stderr, refused.stderr

    # A refusal from the voting node reaches the developer in git's words.
    out = git("push", ssh_url(cluster, outside, seeded, repo), ":main", cwd=work, env=env, check=False)
    assert "[remote rejected] main (deletion of the current branch prohibited)" in out.stderr, out.stderr


def test_every_node_renders_the_repository_pages(cluster: DevCluster, seeded: Seeded, tmp_path: Path) -> None:
    """A page that reads git data runs on a node with an up-to-date replica, as the API does:
    every node, the one without a replica too, renders the tree, a file and the commit."""
    repo = "pages"
    r = httpx.post(f"{cluster.lb_url}/api/v3/user/repos", json={"name": repo}, timeout=30,
                   headers={"Authorization": f"token {seeded.user_token}"})
    assert r.status_code == 201, r.text
    env = git_env(tmp_path / "home")
    work = tmp_path / "w"
    git("init", "-q", "-b", "main", str(work), env=env)
    (work / "a.txt").write_text("a\n")
    git("add", "a.txt", cwd=work, env=env)
    git("commit", "-qm", "pages", cwd=work, env=env)
    head = git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip()
    git("push", "-q", seeded.url(repo), "main", cwd=work, env=env)
    base = f"/{seeded.owner}/{repo}"
    page = {"Accept": "text/html"}
    for node in cluster.nodes.values():
        url = f"{node.url}{base}"
        tree = httpx.get(url, headers=page, timeout=30)
        assert tree.status_code == 200 and "a.txt" in tree.text, (node.name, tree.status_code)
        blob = httpx.get(f"{url}/blob/main/a.txt", headers=page, timeout=30)
        assert blob.status_code == 200 and 'id="L1"' in blob.text, node.name
        commit = httpx.get(f"{url}/commit/{head}", headers=page, timeout=30)
        assert commit.status_code == 200 and "a.txt" in commit.text, node.name
        missing = httpx.get(f"{url}/blob/main/nothing", headers=page, timeout=30)
        assert missing.status_code == 404 and 'id="error"' in missing.text, node.name


def test_a_node_failure_changes_no_host_key_and_pushes_go_on(cluster: DevCluster, seeded: Seeded, client: Client,
                                                            tmp_path: Path) -> None:
    repo = seeded.repos[1]
    victim = sorted(holders(seeded, repo))[-1]
    others = [n for n in cluster.nodes if n != victim]
    env = client.env()
    work = tmp_path / "w"
    git("clone", "-q", ssh_url(cluster, others[0], seeded, repo), str(work), env=env)
    git("checkout", "-qb", "main", cwd=work, env=env)
    cluster.kill_node(victim, with_etcd=False)
    try:
        for i, name in enumerate(others):
            (work / f"{i}.txt").write_text(f"{i}\n")
            git("add", ".", cwd=work, env=env)
            git("commit", "-qm", f"after the kill, through {name}", cwd=work, env=env)
            wait_for(lambda n=name: git("push", "-q", ssh_url(cluster, n, seeded, repo), "main", cwd=work, env=env,
                                        check=False, timeout=30).returncode == 0,
                     timeout=60, what=f"a push through {name} with {victim} dead")
        # Through HAProxy's SSH frontend, which takes the dead node out by its /status check.
        through_lb = f"ssh://git@127.0.0.1:{cluster.lb_ssh_port}/{seeded.owner}/{repo}.git"
        (work / "lb.txt").write_text("lb\n")
        git("add", ".", cwd=work, env=env)
        git("commit", "-qm", "through the balancer", cwd=work, env=env)
        for _ in range(4):  # leastconn: more than one node in turn
            wait_for(lambda: git("push", "-q", through_lb, "main", cwd=work, env=env, check=False,
                                 timeout=30).returncode == 0, timeout=60, what="a push through HAProxy")
            assert git("ls-remote", through_lb, env=env).returncode == 0
        head = git("rev-parse", "HEAD", cwd=work, env=env).stdout.strip()
        for name in others:
            assert head in git("ls-remote", ssh_url(cluster, name, seeded, repo), env=env).stdout
    finally:
        cluster.start_node(victim)
