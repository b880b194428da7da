"""Cluster mode under the nemesis: the test suite's dev cluster (3 etcd members, the nodes, HAProxy).

As root, node3 and its etcd member run in a network namespace of their own (partitions cut its
link) and node2's data dir is a small loop-mounted file system (the disk the nemesis fills).
The nodes run the test suite's fast repair cycles.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

from bulwark.cluster.dev import DevCluster, ProcessState
from bulwark.cluster.state import ClusterSnapshot
from chaos.checker import FinalState, RepoFinal
from chaos.disk import LoopDisk
from chaos.faults import FaultKind, Mode, Planned
from chaos.history import Clock
from chaos.system import Injected, System, attempt, signal_group, wait_until
from tests.support.cluster_helpers import FAST, Seeded, fully_replicated, seed, storage_ids

ISOLATED = "node3"  # the node partitions cut off
DISK_NODE = "node2"  # the node whose disk fills up


class ClusterSystem(System):
    mode = Mode.CLUSTER

    def __init__(self, workdir: Path, clock: Clock, repos: int, nodes: int = 3, disk_mib: int = 128) -> None:
        super().__init__(workdir, clock, repos)
        self.root = os.geteuid() == 0
        self.names = [f"node{i}" for i in range(1, nodes + 1)]
        self.cluster = DevCluster(workdir / "cluster", nodes=nodes, isolate=ISOLATED if self.root else None,
                                  node_env=FAST)
        self.disk = LoopDisk(workdir / "disk.img", self.cluster.base_dir / DISK_NODE, disk_mib) if self.root else None
        self.seeded: Seeded | None = None
        self.sids: dict[str, str] = {}

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.launch()
        self.seeded = seed(self.cluster, len(self.repo_names))
        self.sids = storage_ids(self.seeded)
        if self.disk is not None:
            node = self.cluster.node(DISK_NODE)
            self.cluster.stop_node(DISK_NODE)
            self.disk.move_in(node.data_dir)
            self.cluster.start_node(DISK_NODE)
        if not wait_until(self.converged, 90):
            raise RuntimeError("the new cluster did not get every repository on its replicas")

    def stop(self) -> None:
        try:
            for node in self.cluster.nodes.values():  # a paused node would never see its SIGTERM
                if node.process is not None and node.state is ProcessState.RUNNING:
                    os.killpg(node.process.pid or 0, signal.SIGCONT)
            self.cluster.stop()
        finally:
            if self.disk is not None:
                self.disk.close()

    def url(self, repo: str) -> str:
        assert self.seeded is not None
        return self.seeded.url(repo)

    def targets(self) -> dict[FaultKind, list[str]]:
        out = {FaultKind.KILL: self.names, FaultKind.PAUSE: self.names, FaultKind.RESTART: self.names,
               FaultKind.ETCD_RESTART: [m.name for m in self.cluster.etcd.members] if self.cluster.etcd else []}
        if self.root:
            out[FaultKind.PARTITION] = [ISOLATED]
            out[FaultKind.DISK_FULL] = [DISK_NODE]
        return out

    def logs(self) -> list[Path]:
        return sorted(self.cluster.base_dir.glob("*.log"))

    # -- faults -----------------------------------------------------------------------------

    def _pid(self, name: str) -> int | None:
        process = self.cluster.node(name).process
        return process.pid if process is not None else None

    def _inject(self, planned: Planned, got: Injected) -> None:
        kind, name = planned.kind, planned.target
        if kind is FaultKind.KILL:
            with self.disrupting(got):
                signal_group(self._pid(name), signal.SIGKILL)  # the node and the git processes it started
                self.cluster.kill_node(name, with_etcd=planned.with_etcd)  # reaps it; its etcd member too
            self.hold(planned)
            self.cluster.start_node(name)
            self.measure_heal(got, lambda: self.node_current(name), name)
        elif kind is FaultKind.PAUSE:
            with self.disrupting(got):
                signal_group(self._pid(name), signal.SIGSTOP)
            try:
                self.hold(planned)
            finally:
                signal_group(self._pid(name), signal.SIGCONT)
            self.measure_heal(got, lambda: self.node_current(name), name)
        elif kind is FaultKind.PARTITION:
            with self.disrupting(got):
                self.cluster.cut(name)
            try:
                self.hold(planned)
            finally:
                self.cluster.heal(name)
            self.measure_heal(got, lambda: self.node_current(name), name)
        elif kind is FaultKind.RESTART:
            with self.disrupting(got):
                self.cluster.stop_node(name)
            self.hold(planned)
            self.cluster.start_node(name)
            self.measure_heal(got, lambda: self.node_current(name), name)
        elif kind is FaultKind.ETCD_RESTART:
            assert self.cluster.etcd is not None
            index = [m.name for m in self.cluster.etcd.members].index(name)
            with self.disrupting(got):
                self.cluster.etcd.kill(index)
            self.hold(planned)
            self.cluster.etcd.start(index)
            self.measure_heal(got, self.all_current, name)
        elif kind is FaultKind.DISK_FULL:
            assert self.disk is not None
            got.detail["filled_bytes"] = self.disk.fill()
            try:
                self.hold(planned)
            finally:
                self.disk.free()
            self.measure_heal(got, lambda: self.node_current(name), name)
        else:
            raise ValueError(f"{kind} is not a cluster fault")

    def restore(self) -> None:
        etcd = self.cluster.etcd
        for name, node in self.cluster.nodes.items():
            pid = self._pid(name)
            if pid is not None and node.state is ProcessState.RUNNING:
                attempt(functools.partial(os.killpg, pid, signal.SIGCONT))
        if self.cluster.link is not None:
            attempt(functools.partial(self.cluster.heal, ISOLATED))
        if self.disk is not None:
            self.disk.free()
        for i, member in enumerate(etcd.members if etcd is not None else []):
            if etcd is not None and member.state is not ProcessState.RUNNING:
                attempt(functools.partial(etcd.start, i))
        for name, node in self.cluster.nodes.items():
            if node.state is not ProcessState.RUNNING:
                attempt(functools.partial(self.cluster.start_node, name))

    # -- state ------------------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        assert self.seeded is not None
        return self.seeded.snapshot()

    def node_current(self, name: str) -> bool:
        """The node is alive and every replica it holds is up to date in etcd."""
        snap = self.snapshot()
        if name not in snap.alive:
            return False
        return all(name in p.up_to_date() for p in snap.placements.values() if name in p.replicas)

    def all_current(self) -> bool:
        snap = self.snapshot()
        if set(self.names) - set(snap.alive):
            return False
        return all(not p.outdated() for p in snap.placements.values())

    def converged(self) -> bool:
        assert self.seeded is not None
        return self.all_current() and fully_replicated(self.seeded, rf=self.cluster.replication_factor)

    def final_state(self, tips: dict[str, dict[str, str]], converged_after: float | None,
                    bound: float) -> FinalState:
        assert self.seeded is not None
        snap: ClusterSnapshot | None = None
        for _ in range(50):  # etcd answers at once when healthy; a few tries cover an election
            try:
                snap = self.snapshot()
                break
            except Exception:
                time.sleep(0.2)
        repos = {}
        rf = self.cluster.replication_factor
        for repo in self.repo_names:
            sid = self.sids[repo]
            placement = snap.placements.get(sid) if snap is not None else None
            replicas: dict[str, dict[str, str]] = {}
            for node in sorted(placement.replicas) if placement is not None else []:
                disk = self.seeded.disk(node)
                on_disk = disk.refs(sid, "refs/heads/") if disk.exists(sid) else []
                replicas[node] = {r.name.removeprefix("refs/heads/"): r.oid for r in on_disk}
            alive = set(snap.alive) if snap is not None else set()
            good = [n for n in placement.up_to_date() if n in alive] if placement is not None else []
            outdated = tuple(sorted({*placement.outdated(), *(set(placement.replicas) - alive)})) \
                if placement is not None else ("no placement",)
            repos[repo] = RepoFinal(tips=tips.get(repo, {}), replicas=replicas, outdated=outdated,
                                    under_replicated=len(good) < rf)
        return FinalState(repos=repos, converged_after=converged_after, bound=bound)
