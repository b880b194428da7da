"""``bulwark cluster`` commands against a real etcd, and the status report's judgement."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bulwark.cli.cluster import app
from bulwark.cluster import keys, state
from bulwark.cluster.config import ClusterConfig, NodeSpec, render_cluster_file
from bulwark.cluster.report import Probe, RepoState, cluster_report
from bulwark.cluster.state import BUILDING, NodeBeat
from bulwark.etcd import Etcd
from bulwark.ha.health import Level
from tests.support.cluster_fakes import make_snapshot, seed, url_of
from tests.support.etcd_helpers import clean_etcd, serve_etcd
from tests.support.helpers import bulwark, free_port

pytestmark = [pytest.mark.timeout(60), pytest.mark.system]

runner = CliRunner()


etcd_url = pytest.fixture(serve_etcd, scope="module", name="etcd_url")
etcd = pytest.fixture(clean_etcd, name="etcd")


def cluster(etcd: Etcd, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--etcd", etcd.endpoints[0]])
    return result.exit_code, result.output


def cluster_file(tmp_path: Path, etcd_url: str, nodes: list[str], rf: int = 3) -> Path:
    config = ClusterConfig(
        name="test", replication_factor=rf, etcd=(etcd_url,),
        nodes=tuple(NodeSpec(name=n, url=url_of(n)) for n in nodes),
    )
    path = tmp_path / "cluster.toml"
    path.write_text(render_cluster_file(config))
    return path


# -- init and config-apply -----------------------------------------------------------------------


def test_init_stores_config_and_secret_once(etcd: Etcd, tmp_path: Path) -> None:
    path = cluster_file(tmp_path, etcd.endpoints[0], ["n1", "n2", "n3"])
    # No --etcd: the endpoints come from the file.
    result = runner.invoke(app, ["init", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "Cluster 'test' stored" in result.output
    stored = state.read_config(etcd)
    assert stored is not None and [n.name for n in stored.nodes] == ["n1", "n2", "n3"]
    secret = state.read_secret(etcd)
    assert secret is not None and len(secret) == 64

    code, out = cluster(etcd, "init", "--config", str(path))
    assert code == 1 and "already holds" in out
    code, out = cluster(etcd, "init", "--config", str(path), "--force")
    assert code == 0 and "Kept the shared secret" in out
    assert state.read_secret(etcd) == secret


def test_init_rejects_an_invalid_file(etcd: Etcd, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[cluster]\netcd = ["http://127.0.0.1:1"]\n[[node]]\nname = "Bad Name"\nurl = "http://x:1"\n')
    code, out = cluster(etcd, "init", "--config", str(bad))
    assert code == 1 and "not valid" in out
    assert state.read_config(etcd) is None


def test_config_apply_shows_changes_and_guards_nodes_with_replicas(etcd: Etcd, tmp_path: Path) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 1, "n2": 1}})
    url = etcd.endpoints[0]
    code, out = cluster(etcd, "config-apply", "--config", str(cluster_file(tmp_path, url, ["n1", "n2", "n3", "n4"])))
    assert code == 0, out
    assert "+ node n4" in out and "etcd:" in out and "rebalance" in out
    config = state.read_config(etcd)
    assert config is not None and len(config.nodes) == 4

    code, out = cluster(etcd, "config-apply", "--config", str(cluster_file(tmp_path, url, ["n1", "n2", "n3", "n4"])))
    assert code == 0 and "nothing to do" in out

    code, out = cluster(etcd, "config-apply", "--config", str(cluster_file(tmp_path, url, ["n2", "n3", "n4"])))
    assert code == 1 and "- node n1" in out and "n1 holds 1" in out and "evacuate" in out
    config = state.read_config(etcd)
    assert config is not None and config.node("n1") is not None

    code, out = cluster(etcd, "config-apply", "--config", str(cluster_file(tmp_path, url, ["n1", "n2", "n4"])))
    assert code == 0 and "- node n3" in out


def test_config_apply_needs_an_initialised_cluster(etcd: Etcd, tmp_path: Path) -> None:
    code, out = cluster(etcd, "config-apply", "--config", str(cluster_file(tmp_path, etcd.endpoints[0], ["n1"])))
    assert code == 1 and "cluster init" in out


# -- status and dataloss -----------------------------------------------------------------------------


def healthy(etcd: Etcd, **kwargs: object) -> None:
    seed(etcd, ["n1", "n2", "n3"], etcd_url=etcd.endpoints[0], **kwargs)  # type: ignore[arg-type]
    etcd.put(keys.RECONCILER, "n1")


def status(etcd: Etcd, *args: str) -> tuple[int, str]:
    return cluster(etcd, "status", "--no-probe", *args)


def test_status_ok(etcd: Etcd) -> None:
    healthy(etcd, placements={"a": {"n1": 1, "n2": 1, "n3": 1}})
    code, out = status(etcd, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["level"] == "OK" and report["exit_code"] == 0 and report["reasons"] == []
    assert report["repositories"] == {
        "total": 1, "fully_replicated": 1, "under_replicated": 0, "outdated_replicas": 0, "unavailable": 0
    }
    assert report["etcd"] == {etcd.endpoints[0]: True}
    assert [n["replicas"] for n in report["nodes"]] == [1, 1, 1]
    code, out = status(etcd, "--nagios")
    assert code == 0 and out.startswith("CLUSTER OK - 3 of 3 nodes alive")
    code, out = status(etcd, "-v")
    assert code == 0 and "OK: cluster test" in out and "reconciler: n1" in out


def test_status_warning_for_a_dead_node(etcd: Etcd) -> None:
    healthy(etcd, alive=["n1", "n2"], placements={"a": {"n1": 1, "n2": 1, "n3": 1}})
    code, out = status(etcd, "--nagios")
    assert code == 1, out
    assert out.startswith("CLUSTER WARNING - nodes down: n3; 1 repositories are under-replicated")
    code, out = status(etcd, "--json")
    assert code == 1 and json.loads(out)["problems"][0]["state"] == "under-replicated"
    code, out = status(etcd, "-v")
    assert code == 1 and "under-replicated" in out


def test_status_critical_for_data_loss_and_for_etcd_down(etcd: Etcd) -> None:
    healthy(etcd, alive=["n1", "n2"], placements={"a": {"n3": 4, "n1": 3}})
    code, out = status(etcd, "--nagios")
    assert code == 2 and out.startswith("CLUSTER CRITICAL - 1 repositories have no live up-to-date replica")
    result = runner.invoke(app, ["status", "--nagios", "--etcd", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2 and result.output.startswith("CLUSTER CRITICAL - etcd is unreachable")
    result = runner.invoke(app, ["status", "--json", "--etcd", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2 and json.loads(result.output)["level"] == "CRITICAL"


def test_status_unknown_without_a_configuration(etcd: Etcd) -> None:
    code, out = status(etcd, "--nagios")
    assert code == 3 and out.startswith("CLUSTER UNKNOWN")


def test_dataloss_lists_repositories_without_a_live_up_to_date_replica(etcd: Etcd) -> None:
    healthy(etcd, alive=["n1", "n2"], placements={"a": {"n3": 4, "n1": 3}, "b": {"n1": 1, "n2": 1}})
    code, out = cluster(etcd, "dataloss", "--json")
    assert code == 2
    assert json.loads(out) == [
        {
            "storage_id": "a",
            "generation": 4,
            "replicas": {
                "n1": {"generation": 3, "alive": True, "up_to_date": False},
                "n3": {"generation": 4, "alive": False, "up_to_date": True},
            },
        }
    ]
    code, out = cluster(etcd, "dataloss")
    assert code == 2 and "n3:4 (down)" in out
    etcd.put(keys.alive("n3"), "{\"name\": \"n3\", \"url\": \"http://n3.test:8080\"}")
    code, out = cluster(etcd, "dataloss")
    assert code == 0 and "Every repository (2)" in out


# -- maintenance, evacuation, removal, rebalance -----------------------------------------------------


def test_maintenance_on_and_off(etcd: Etcd) -> None:
    healthy(etcd)
    code, out = cluster(etcd, "maintenance", "n2", "on", "--message", "disk swap")
    assert code == 0, out
    assert state.snapshot(etcd).maintenance == {"n2": "disk swap"}
    code, out = status(etcd, "--json")
    assert [n["maintenance"] for n in json.loads(out)["nodes"]] == [None, "disk swap", None]
    code, out = cluster(etcd, "maintenance", "n2", "off")
    assert code == 0 and state.snapshot(etcd).maintenance == {}
    code, out = cluster(etcd, "maintenance", "nope", "on")
    assert code == 1 and "not in the cluster configuration" in out


def test_evacuate_without_waiting_and_timing_out(etcd: Etcd) -> None:
    healthy(etcd, placements={"a": {"n1": 1, "n2": 1, "n3": 1}})
    code, out = cluster(etcd, "evacuate", "n3", "--no-wait")
    assert code == 0 and "1 replicas to move" in out
    assert "some replicas cannot move" in out  # 3 nodes, RF 3: nowhere to go
    assert state.snapshot(etcd).evacuating == {"n3"}
    code, out = cluster(etcd, "evacuate", "n3", "--timeout", "0.3", "--poll", "0.05")
    assert code == 1 and "timed out: 1 replicas still on n3" in out


def test_evacuate_waits_until_the_node_is_empty(etcd: Etcd) -> None:
    healthy(etcd, placements={"a": {"n1": 1, "n2": 1}, "b": {"n1": 1, "n3": 1}}, rf=2)

    def reconcile() -> None:  # what the reconciler would do, slowly
        for sid in ("a", "b"):
            time.sleep(0.2)
            state.update_placement(etcd, sid, lambda p: p.with_replicas({n: g for n, g in p.replicas.items()
                                                                         if n != "n1"}))

    mover = threading.Thread(target=reconcile)
    mover.start()
    try:
        code, out = cluster(etcd, "evacuate", "n1", "--timeout", "10", "--poll", "0.05")
    finally:
        mover.join()
    assert code == 0, out
    assert "1 replicas left on n1" in out and "holds no replica" in out


def test_remove_node_without_evacuating(etcd: Etcd) -> None:
    healthy(etcd, alive=["n1", "n2"], placements={"a": {"n1": 1, "n2": 1, "n3": 1}})
    etcd.put(keys.evacuating("n3"), "1")
    etcd.put(keys.maintenance("n3"), "broken")
    code, out = cluster(etcd, "remove-node", "n3", "--no-evacuate")
    assert code == 0, out
    assert "1 replicas were on n3" in out
    snap = state.snapshot(etcd)
    assert [n.name for n in snap.config.nodes] == ["n1", "n2"]
    assert snap.evacuating == frozenset() and snap.maintenance == {}
    code, out = cluster(etcd, "remove-node", "n3", "--no-evacuate")
    assert code == 1 and "not in the cluster configuration" in out


def test_remove_node_evacuates_first(etcd: Etcd) -> None:
    healthy(etcd, placements={"a": {"n1": 1, "n2": 1}}, rf=2)
    code, out = cluster(etcd, "remove-node", "n3")  # holds nothing: no wait
    assert code == 0, out
    config = state.read_config(etcd)
    assert config is not None and config.node("n3") is None


def test_rebalance_plans_and_queues_moves(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3", "n4"], placements={f"r{i}": {"n1": 1, "n2": 1, "n3": 1} for i in range(4)})
    code, out = cluster(etcd, "rebalance", "--dry-run")
    assert code == 0 and "Dry run: 3 moves planned" in out
    assert all(len(p.replicas) == 3 for p in state.snapshot(etcd).placements.values())
    code, out = cluster(etcd, "rebalance")
    assert code == 0 and "Queued 3 moves" in out
    added = [p for p in state.snapshot(etcd).placements.values() if p.replicas.get("n4") == BUILDING]
    assert len(added) == 3
    code, out = cluster(etcd, "rebalance", "--dry-run")  # the repositories being moved are left alone
    assert code == 0 and "Balanced" in out


def test_commands_need_etcd_endpoints(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path / "nothing")], env={"BULWARK_ETCD": ""})
    assert result.exit_code == 3 and "no etcd endpoints" in result.output  # UNKNOWN, for a monitor
    result = runner.invoke(app, ["dataloss", "--data-dir", str(tmp_path / "nothing")], env={"BULWARK_ETCD": ""})
    assert result.exit_code == 1 and "no etcd endpoints" in result.output


def test_registered_in_the_command_line(etcd: Etcd, tmp_path: Path) -> None:
    path = cluster_file(tmp_path, etcd.endpoints[0], ["n1", "n2", "n3"])
    assert bulwark("cluster", "init", "--config", str(path)).returncode == 0
    for node in ("n1", "n2"):
        etcd.put(keys.alive(node), NodeBeat(node, url_of(node), 0.0).to_json())
    proc = bulwark("cluster", "status", "--nagios", "--no-probe", "--etcd", etcd.endpoints[0])
    assert proc.returncode == 1 and proc.stdout.startswith("CLUSTER WARNING - nodes down: n3"), proc.stderr


# -- the report's judgement, pure ----------------------------------------------------------------------


def test_report_levels() -> None:
    placements = {"a": {"n1": 2, "n2": 2, "n3": 2}, "b": {"n1": 2, "n2": 2, "n3": 1}}
    ok = cluster_report(make_snapshot(placements={"a": placements["a"]}), etcd_health={"http://127.0.0.1:2379": True})
    assert ok.level is Level.OK and ok.fully_replicated == 1

    outdated = cluster_report(make_snapshot(placements=placements, wanted_rf={"b": 2}))
    assert outdated.level is Level.WARNING and outdated.outdated_replicas == 1
    assert [p.state for p in outdated.problems] == [RepoState.OUTDATED]
    under = cluster_report(make_snapshot(placements=placements))
    assert [p.state for p in under.problems] == [RepoState.UNDER_REPLICATED]
    assert under.reasons == ("1 repositories are under-replicated", "1 replicas are outdated or being built")

    minority = cluster_report(make_snapshot(placements=placements, dead=["n2", "n3"]))
    assert minority.level is Level.CRITICAL and any("only 1 of 3 nodes" in r for r in minority.reasons)

    etcd_down = {"http://10.0.0.1:2379": True, "http://10.0.0.2:2379": False, "http://10.0.0.3:2379": False}
    no_quorum = cluster_report(make_snapshot(), etcd_health=etcd_down)
    assert no_quorum.level is Level.CRITICAL and "etcd has no quorum: 1 of 3 members answer" in no_quorum.reasons

    silent = cluster_report(make_snapshot(), probes={"n1": Probe(None), "n2": Probe(503, "fenced"), "n3": Probe(200)})
    assert silent.level is Level.WARNING
    assert silent.reasons == (
        "node n1 holds its etcd lease but its /status does not answer",
        "node n2 answers 503 on /status: fenced",
    )
    drained = cluster_report(make_snapshot(maintenance=["n2"]), probes={"n2": Probe(503, "maintenance")})
    assert drained.level is Level.OK

    orphan = cluster_report(make_snapshot(placements={"a": placements["a"]}, reconciler=None))
    assert orphan.reasons == ("no reconciler is elected: nothing repairs the cluster",)
