"""The cluster-on-one-machine launcher: etcd members, HAProxy config, network partitions, the CLI command."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from bulwark.cli.cluster_dev import dev
from bulwark.cluster.dev import (
    LOCK_FILE,
    DevCluster,
    DevClusterError,
    EtcdCluster,
    NetnsLink,
    Placement,
    ProcessState,
    Tool,
    find_tool,
    haproxy_example_config,
    render_haproxy_config,
)
from bulwark.etcd import Etcd, EtcdUnavailable
from tests.support.ha_helpers import wait_for
from tests.support.helpers import bulwark

pytestmark = [pytest.mark.timeout(60), pytest.mark.system]

ROOT = Path(__file__).resolve().parent.parent
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
can_isolate = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                 reason="network namespaces need root and ip")


def gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def put_ok(etcd: Etcd, key: str, value: str) -> bool:
    try:
        etcd.put(key, value)
        return True
    except EtcdUnavailable:
        return False


def value_of(etcd: Etcd, key: str) -> bytes | None:
    try:
        kv = etcd.get(key)
    except EtcdUnavailable:
        return None
    return kv.value if kv is not None else None


@pytest.fixture
def link() -> Iterator[NetnsLink]:
    made = NetnsLink().create()
    try:
        yield made
    finally:
        made.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert made.ns not in names
    assert subprocess.run(["ip", "link", "show", made.host_if], capture_output=True).returncode != 0
    assert str(made.subnet) not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout


# -- etcd -------------------------------------------------------------------------------------


def test_etcd_cluster_survives_a_lost_member_which_restarts_and_rejoins(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path, 3) as cluster:
        pids = [m.pid for m in cluster.members if m.pid is not None]
        client = Etcd(cluster.endpoints, timeout=2)
        client.put("/t/before", "1")

        cluster.kill(0)
        assert cluster.members[0].state is ProcessState.EXITED
        assert not Path(f"/proc/{pids[0]}").exists()
        wait_for(lambda: put_ok(client, "/t/during", "2"), timeout=15, what="a write with one member down")

        cluster.start(0)
        assert Etcd([cluster.endpoints[0]]).get("/t/during") is not None  # caught up, and answers alone
        assert (tmp_path / "etcd1.log").stat().st_size > 0
        pids.append(cluster.members[0].pid or 0)
    assert gone(pids)


# -- HAProxy -------------------------------------------------------------------------------------


def test_generated_haproxy_config_is_valid_with_the_health_checks(tmp_path: Path) -> None:
    servers = [("node1", "127.0.0.1:9001"), ("node2", "127.0.0.1:9002"), ("node3", "127.0.0.1:9003")]
    text = render_haproxy_config("127.0.0.1:9000", servers, stats_bind="127.0.0.1:9009", header=["a test"])
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stdout + check.stderr

    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    for expected in ("option httpchk GET /status", "http-check expect status 200", "balance roundrobin",
                     "default-server inter 500ms fall 2 rise 2", "retry-on conn-failure empty-response", "retries 3",
                     "option redispatch", 'bind "127.0.0.1:9000"'):
        assert expected in lines
    # Every node twice: in the backend checked with /status, and in the fallback used when none passes.
    assert [line for line in lines if line.startswith("server ")] == 2 * [
        f'server {name} "{address}" check' for name, address in servers
    ]
    assert "use_backend bulwark_fallback if { nbsrv(bulwark_nodes) eq 0 }" in lines
    assert "option httpchk GET /status/fallback" in lines
    # Reads are retried on another node after an empty answer; pushes and API writes never are.
    assert lines.count("http-request disable-l7-retry if !METH_GET !{ path_end /git-upload-pack }") == 2


def test_example_haproxy_config_is_the_generated_template() -> None:
    example = ROOT / "deploy" / "haproxy" / "cluster.cfg"
    assert example.read_text() == haproxy_example_config(), (
        "deploy/haproxy/cluster.cfg is out of date: regenerate it with\n  python -c 'from bulwark.cluster.dev "
        "import haproxy_example_config as h; print(h(), end=\"\")' > deploy/haproxy/cluster.cfg"
    )
    env = {**os.environ, "BULWARK_LB_BIND": "127.0.0.1:9000", "BULWARK_NODE1": "127.0.0.1:9001",
           "BULWARK_NODE2": "127.0.0.1:9002", "BULWARK_NODE3": "127.0.0.1:9003",
           "BULWARK_LB_SSH_BIND": "127.0.0.1:9022", "BULWARK_NODE1_SSH": "127.0.0.1:9101",
           "BULWARK_NODE2_SSH": "127.0.0.1:9102", "BULWARK_NODE3_SSH": "127.0.0.1:9103"}
    check = subprocess.run([HAPROXY, "-c", "-f", str(example)], env=env, capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stdout + check.stderr


# -- partitions ----------------------------------------------------------------------------------


@can_isolate
def test_a_cut_member_refuses_writes_while_the_majority_takes_them_and_rejoins_after_heal(
    tmp_path: Path, link: NetnsLink
) -> None:
    placements = [Placement(link.host_addr), Placement(link.host_addr), Placement(link.ns_addr, link)]
    with EtcdCluster(tmp_path, 3, placements=placements) as cluster:
        pids = [m.pid for m in cluster.members if m.pid is not None]
        isolated_url = cluster.endpoints[2]
        majority = Etcd(cluster.endpoints[:2], timeout=2)
        isolated = Etcd([isolated_url], timeout=2)
        majority.put("/t/before", "1")
        assert isolated.get("/t/before") is not None

        link.cut()
        with pytest.raises(EtcdUnavailable):  # unreachable from here ...
            isolated.put("/t/cut", "x")
        # ... and, asked from inside its namespace, it has no quorum to write with.
        script = (
            "from bulwark.etcd import Etcd, EtcdUnavailable\n"
            "try:\n"
            f"    Etcd([{isolated_url!r}], timeout=3).put('/t/cut', 'x')\n"
            "    print('written')\n"
            "except EtcdUnavailable:\n"
            "    print('refused')\n"
        )
        inside = subprocess.run(link.wrap([sys.executable, "-c", script]), capture_output=True, text=True,
                                timeout=20)
        assert inside.stdout.strip() == "refused", inside.stdout + inside.stderr
        wait_for(lambda: put_ok(majority, "/t/during", "2"), timeout=15, what="a majority write during the cut")

        link.heal()
        wait_for(lambda: value_of(isolated, "/t/during") == b"2", timeout=15, what="the healed member to catch up")
        assert cluster.healthy(2)
    assert gone(pids)


# -- the whole cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_init_available() -> None:
    if bulwark("cluster", "init", "--help").returncode != 0:
        pytest.skip("'bulwark cluster init' is not available")


def check_cluster(cluster: DevCluster) -> list[int]:
    """Every node answers directly and through HAProxy; a killed node comes back. The pids seen."""
    for name in cluster.names:
        assert httpx.get(f"{cluster.node_url(name)}/status", timeout=5).status_code in (200, 503)
    assert cluster.lb_url.startswith("http://")
    httpx.get(f"{cluster.lb_url}/status", timeout=5)  # HAProxy answers (503 while no node takes traffic)
    assert "node1" in (cluster.base_dir / "haproxy.cfg").read_text()
    env = cluster.node_env("node2")
    assert env["BULWARK_CLUSTER_NODE"] == "node2"
    assert env["BULWARK_ETCD"] == ",".join(cluster.etcd_endpoints)
    assert env["BULWARK_DATA_DIR"] == str(cluster.base_dir / "node2")
    pids = cluster.pids()

    cluster.kill_node("node2")
    assert cluster.node_state("node2") is ProcessState.EXITED
    assert cluster.etcd is not None and cluster.etcd.members[1].state is ProcessState.EXITED
    cluster.start_node("node2", wipe=True)
    assert cluster.node_state("node2") is ProcessState.RUNNING
    assert cluster.etcd.members[1].state is ProcessState.RUNNING
    return pids + cluster.pids()


@pytest.mark.usefixtures("cluster_init_available")
def test_dev_cluster_starts_everything_and_restarts_a_killed_node(tmp_path: Path) -> None:
    base = tmp_path / "cluster"
    with DevCluster(base, nodes=3) as cluster:
        assert len(cluster.etcd_endpoints) == 3
        assert cluster.admin_token.startswith("bwk_") and len(cluster.admin_token) == 44
        pids = check_cluster(cluster)
        with pytest.raises(DevClusterError, match="holds a running dev cluster"):
            DevCluster(base, nodes=3).launch()
    assert gone(pids)
    cluster.stop()  # a second stop does nothing


@can_isolate
@pytest.mark.usefixtures("cluster_init_available")
def test_dev_cluster_partitions_the_isolated_node(tmp_path: Path) -> None:
    with DevCluster(tmp_path / "cluster", nodes=3, isolate="node3") as cluster:
        assert cluster.link is not None
        ns, host_if = cluster.link.ns, cluster.link.host_if
        assert cluster.node_url("node3").startswith(f"http://{cluster.link.ns_addr}:")
        assert cluster.lb_url.startswith(f"http://{cluster.link.host_addr}:")
        pids = check_cluster(cluster)

        cluster.cut("node3")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{cluster.node_url('node3')}/status", timeout=1)
        assert httpx.get(f"{cluster.node_url('node1')}/status", timeout=5).status_code in (200, 503)
        cluster.heal("node3")
        httpx.get(f"{cluster.node_url('node3')}/status", timeout=5)
    assert gone(pids)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", host_if], capture_output=True).returncode != 0


# -- the command line and its refusals ----------------------------------------------------------


def run_dev(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(dev)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_dev_refuses_fewer_than_three_nodes(tmp_path: Path) -> None:
    code, output = run_dev("--nodes", "2", "--dir", str(tmp_path / "c"))
    assert code == 2
    assert "at least 3 nodes" in output
    assert not (tmp_path / "c").exists()


def test_dev_refuses_a_directory_with_a_running_cluster_or_other_files(tmp_path: Path) -> None:
    base = tmp_path / "c"
    base.mkdir()
    with open(base / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running launcher holds it
        code, output = run_dev("--dir", str(base))
    assert code == 1
    assert "holds a running dev cluster" in output

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, output = run_dev("--dir", str(tmp_path / "other"))
    assert code == 1
    assert "not empty" in output
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_missing_program_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DevClusterError, match="etcd-server"):
        find_tool(Tool.ETCD, search_path=str(tmp_path))
    with pytest.raises(DevClusterError, match="install the Debian package haproxy"):
        find_tool(Tool.HAPROXY, search_path=str(tmp_path))
