"""The whole cluster: etcd, the Bulwark nodes and HAProxy, launched and stopped together."""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from bulwark.cluster.config import ClusterConfig, NodeSpec, render_cluster_file
from bulwark.cluster.dev.etcd import EtcdCluster, Placement
from bulwark.cluster.dev.haproxy import render_haproxy_config
from bulwark.cluster.dev.netns import NetnsLink
from bulwark.cluster.dev.processes import Managed, ProcessState
from bulwark.cluster.dev.tools import (
    START_TIMEOUT,
    STOP_GRACE,
    DevClusterError,
    PortPicker,
    Tool,
    component_error,
    find_tool,
    hostport,
    tcp_answers,
)

LOCK_FILE = "dev-cluster.lock"
# What a launch writes in its directory; a later launch in the same directory removes these and nothing else.
_OWN_ENTRY = re.compile(r"(etcd\d+|node\d+)(\.log)?|cluster\.toml|cluster-init\.log|haproxy\.(cfg|log)")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BULWARK_")}


def leftover_processes(base_dir: Path) -> list[int]:
    """Pids of the etcd members, nodes and HAProxy of an earlier launch in ``base_dir`` that still run.

    They are recognised by their command lines (a data dir under ``base_dir``, or its HAProxy
    config), so someone's ``tail -f`` of a log there does not count.
    """
    base = Path(base_dir).resolve()
    prefix = str(base) + os.sep
    haproxy_cfg = str(base / "haproxy.cfg")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        after = dict(itertools.pairwise(args))
        ours = after.get("--data-dir", "").startswith(prefix) or (
            after.get("-f") == haproxy_cfg and Path(args[0]).name == "haproxy"
        )
        if ours:
            found.append(int(entry.name))
    return sorted(found)


class DevNode:
    """One Bulwark node of the dev cluster."""

    def __init__(self, name: str, placement: Placement, port: int, base_dir: Path) -> None:
        self.name = name
        self.placement = placement
        self.port = port
        self.ssh_port = 0  # 0: no SSH
        self.data_dir = base_dir / name
        self.log_path = base_dir / f"{name}.log"
        self.process: Managed | None = None

    @property
    def url(self) -> str:
        return f"http://{hostport(self.placement.host, self.port)}"

    @property
    def state(self) -> ProcessState:
        return self.process.state if self.process is not None else ProcessState.NOT_STARTED

    def answers(self) -> bool:
        try:
            httpx.get(f"{self.url}/status", timeout=1.0, trust_env=False)  # never through an HTTP proxy
            return True
        except httpx.HTTPError:
            return False


class DevCluster:
    """etcd, ``nodes`` Bulwark nodes and HAProxy on this machine, all under ``base_dir``.

    ``launch()`` (or ``with DevCluster(...) as cluster``) starts everything and returns once every
    node answers ``/status`` (whatever its answer) and HAProxy listens; ``stop()`` ends everything.
    Each launch is a fresh cluster: an earlier launch's data in ``base_dir`` is removed first.
    There are 3 etcd members (5 from 5 nodes on), each beside one of the first nodes. ``timeout``
    bounds each wait for a component to come up.
    """

    def __init__(self, base_dir: Path, nodes: int = 3, host: str = "127.0.0.1", admin_token: str | None = None,
                 lease_ttl: int = 3, replication_factor: int | None = None, isolate: str | None = None,
                 timeout: float = START_TIMEOUT, node_env: Mapping[str, str] | None = None,
                 ssh: bool = False) -> None:
        if nodes < 3:
            raise ValueError("a dev cluster has at least 3 nodes (one beside each of the 3 etcd members)")
        self.base_dir = Path(base_dir).resolve()
        self.names = [f"node{i}" for i in range(1, nodes + 1)]
        if isolate is not None and isolate not in self.names:
            raise ValueError(f"cannot isolate {isolate!r}: the nodes are {', '.join(self.names)}")
        self.host = host
        self.admin_token = admin_token or "bwk_" + secrets.token_hex(20)
        self.lease_ttl = lease_ttl
        self.replication_factor = replication_factor or min(3, nodes)
        self.isolate = isolate
        self.timeout = timeout
        # Extra BULWARK_* settings for every node (tests shorten the reconciler's cycles with them).
        self.extra_node_env = dict(node_env or {})
        # Git over SSH on each node, on a port of its own (off otherwise: one host, one default port).
        self.ssh = ssh
        self.etcd_size = 3 if nodes < 5 else 5
        self.cluster_file = self.base_dir / "cluster.toml"
        self.haproxy_config = self.base_dir / "haproxy.cfg"
        self.etcd: EtcdCluster | None = None
        self.link: NetnsLink | None = None
        self.nodes: dict[str, DevNode] = {}
        self.haproxy: Managed | None = None
        self.lb_port = 0
        self.lb_ssh_port = 0  # git over SSH through the balancer, when ``ssh``
        self.stats_port = 0
        self._lb_host = host
        self._lock: IO[str] | None = None
        self._stopped = False

    # -- launching ---------------------------------------------------------------------

    def launch(self) -> DevCluster:
        if self.etcd is not None or self._stopped:
            raise DevClusterError("a DevCluster launches once; make a new one to start again")
        haproxy = find_tool(Tool.HAPROXY)
        find_tool(Tool.ETCD)
        self._take_dir()
        try:
            host_side = self.host
            if self.isolate is not None:
                self.link = NetnsLink().create()
                # Everything on the host binds the host end of the veth, so the namespace can reach it.
                host_side = self.link.host_addr
            self._lb_host = host_side
            ports = PortPicker()
            placements = {
                name: Placement(self.link.ns_addr, self.link)
                if self.link is not None and name == self.isolate else Placement(host_side)
                for name in self.names
            }
            self.etcd = EtcdCluster(self.base_dir, self.etcd_size,
                                    placements=[placements[n] for n in self.names[: self.etcd_size]],
                                    ports=ports, timeout=self.timeout)
            self.etcd.launch()
            self.nodes = {
                name: DevNode(name, placements[name], ports.pick(host_side), self.base_dir) for name in self.names
            }
            if self.ssh:
                for node in self.nodes.values():
                    node.ssh_port = ports.pick(host_side)
            self._write_cluster_file()
            self._init_cluster()
            for node in self.nodes.values():
                self._spawn_node(node)
            for node in self.nodes.values():
                self._wait_node(node)
            self.lb_port, self.stats_port = ports.pick(host_side), ports.pick(host_side)
            self.lb_ssh_port = ports.pick(host_side) if self.ssh else 0
            self._start_haproxy(haproxy)
        except BaseException:
            self.stop()
            raise
        return self

    def _take_dir(self) -> None:
        """Refuse a directory in use or not ours; lock it; remove an earlier launch's files."""
        base = self.base_dir
        if base.exists() and not base.is_dir():
            raise DevClusterError(f"{base} is not a directory")
        base.mkdir(parents=True, exist_ok=True)
        entries = [e.name for e in base.iterdir()]
        if entries and LOCK_FILE not in entries:
            raise DevClusterError(f"{base} is not empty and holds no dev cluster: choose a new or empty directory")
        lock = open(base / LOCK_FILE, "a+")  # noqa: SIM115 - held for the cluster's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise DevClusterError(f"{base} holds a running dev cluster (launched by pid {holder}); "
                                  "stop it first or choose another directory") from None
        leftovers = leftover_processes(base)
        if leftovers:
            lock.close()
            raise DevClusterError(f"{base} holds a running dev cluster: processes of an earlier launch are still "
                                  f"running (pids {', '.join(map(str, leftovers))}); stop them first")
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock
        for entry in base.iterdir():
            if _OWN_ENTRY.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def _write_cluster_file(self) -> None:
        config = ClusterConfig(
            name="dev",
            replication_factor=self.replication_factor,
            etcd=tuple(self.etcd_endpoints),
            nodes=tuple(NodeSpec(name=n.name, url=n.url) for n in self.nodes.values()),
        )
        self.cluster_file.write_text(render_cluster_file(config))

    def _init_cluster(self) -> None:
        log = self.base_dir / "cluster-init.log"
        argv = [sys.executable, "-m", "bulwark", "cluster", "init", "--config", str(self.cluster_file)]
        env = {**_clean_env(), "BULWARK_ETCD": ",".join(self.etcd_endpoints)}
        with open(log, "wb") as out:
            try:
                proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                      timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise component_error("bulwark cluster init", f"did not finish within {self.timeout:g}s",
                                      log) from None
        if proc.returncode != 0:
            raise component_error("bulwark cluster init", f"exited with status {proc.returncode}", log)

    def _node_process_env(self, node: DevNode) -> dict[str, str]:
        return {
            **_clean_env(),
            "BULWARK_CLUSTER_NODE": node.name,
            "BULWARK_ETCD": ",".join(self.etcd_endpoints),
            "BULWARK_ADMIN_TOKEN": self.admin_token,
            "BULWARK_LEASE_TTL": str(self.lease_ttl),
            "BULWARK_LOG_FORMAT": "json",
            "BULWARK_TRUSTED_PROXIES": "127.0.0.1",  # the HAProxy in front
            "BULWARK_SSH_LISTEN": hostport(node.placement.host, node.ssh_port) if node.ssh_port else "",
            **self.extra_node_env,
        }

    def _spawn_node(self, node: DevNode) -> None:
        argv = [sys.executable, "-m", "bulwark", "serve", "--data-dir", str(node.data_dir),
                "--listen", hostport(node.placement.host, node.port)]
        node.process = Managed(f"bulwark node {node.name} ({node.url})", node.placement.wrap(argv), node.log_path,
                               self._node_process_env(node))
        node.process.start()

    def _wait_node(self, node: DevNode) -> None:
        assert node.process is not None
        node.process.wait_ready(node.answers, "answering GET /status", self.timeout)

    def _start_haproxy(self, binary: str) -> None:
        header = [f"Written by `bulwark cluster dev` for {self.base_dir}, from the same template as",
                  "deploy/haproxy/cluster.cfg in Bulwark's sources."]
        text = render_haproxy_config(
            hostport(self._lb_host, self.lb_port),
            [(n.name, hostport(n.placement.host, n.port)) for n in self.nodes.values()],
            stats_bind=hostport(self._lb_host, self.stats_port),
            header=header,
            ssh_bind=hostport(self._lb_host, self.lb_ssh_port) if self.ssh else None,
            ssh_servers=[(n.name, hostport(n.placement.host, n.ssh_port)) for n in self.nodes.values()],
        )
        self.haproxy_config.write_text(text)
        self.haproxy = Managed(f"haproxy ({self.lb_url})", [binary, "-f", str(self.haproxy_config), "-db"],
                               self.base_dir / "haproxy.log", _clean_env())
        self.haproxy.start()
        self.haproxy.wait_ready(lambda: tcp_answers(self._lb_host, self.lb_port), "listening", self.timeout)

    # -- what tests and people use ---------------------------------------------------------

    @property
    def lb_url(self) -> str:
        return f"http://{hostport(self._lb_host, self.lb_port)}"

    @property
    def stats_url(self) -> str:
        return f"http://{hostport(self._lb_host, self.stats_port)}/"

    @property
    def etcd_endpoints(self) -> list[str]:
        return self.etcd.endpoints if self.etcd is not None else []

    def node(self, name: str) -> DevNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise ValueError(f"no node {name!r}: the nodes are {', '.join(self.names)}") from None

    def node_url(self, name: str) -> str:
        return self.node(name).url

    def node_state(self, name: str) -> ProcessState:
        return self.node(name).state

    def etcd_index(self, name: str) -> int | None:
        """The index in ``etcd.members`` of the member that runs beside node ``name``, if it has one."""
        index = self.names.index(self.node(name).name)
        return index if index < self.etcd_size else None

    def node_env(self, name: str) -> dict[str, str]:
        """This process's environment, less any BULWARK_* variable, plus what a CLI command needs to act
        as node ``name``: BULWARK_CLUSTER_NODE, BULWARK_ETCD and BULWARK_DATA_DIR."""
        node = self.node(name)
        return {
            **_clean_env(),
            "BULWARK_CLUSTER_NODE": node.name,
            "BULWARK_ETCD": ",".join(self.etcd_endpoints),
            "BULWARK_DATA_DIR": str(node.data_dir),
        }

    def kill_node(self, name: str, with_etcd: bool = True) -> None:
        """SIGKILL node ``name``, and (``with_etcd``) its etcd member if it has one."""
        node = self.node(name)
        if node.process is not None:
            node.process.kill()
        index = self.etcd_index(name)
        if with_etcd and index is not None and self.etcd is not None:
            self.etcd.kill(index)

    def stop_node(self, name: str) -> None:
        """SIGTERM node ``name`` and wait for it to exit (SIGKILL after a grace)."""
        node = self.node(name)
        if node.process is not None:
            node.process.terminate()

    def start_node(self, name: str, wipe: bool = False) -> None:
        """Restart node ``name`` after a kill or stop, and its etcd member first if that is down.

        ``wipe`` empties the node's data dir first, as if it were a replacement machine.
        """
        node = self.node(name)
        if node.state is ProcessState.RUNNING:
            raise DevClusterError(f"bulwark node {name} is already running")
        index = self.etcd_index(name)
        if index is not None and self.etcd is not None and self.etcd.members[index].state is not ProcessState.RUNNING:
            # It can answer with a quorum only if enough other members run; else it is enough that it listens.
            with_quorum = len(self.etcd.running()) + 1 >= self.etcd.quorum
            self.etcd.start(index, wait_healthy=with_quorum)
        if wipe and node.data_dir.exists():
            shutil.rmtree(node.data_dir)
        self._spawn_node(node)
        self._wait_node(node)

    def cut(self, name: str) -> None:
        """Partition the isolated node (and its etcd member) from everything else."""
        self._isolated_link(name).cut()

    def heal(self, name: str) -> None:
        """End the partition; returns once the link carries traffic again."""
        self._isolated_link(name).heal()

    def _isolated_link(self, name: str) -> NetnsLink:
        if self.link is None or name != self.isolate:
            raise ValueError(f"{name} is not the isolated node (isolate={self.isolate!r})")
        return self.link

    def processes(self) -> Iterator[Managed]:
        """Every process this cluster started, HAProxy first, then the nodes, then etcd."""
        if self.haproxy is not None:
            yield self.haproxy
        yield from (n.process for n in self.nodes.values() if n.process is not None)
        if self.etcd is not None:
            yield from (m.process for m in self.etcd.members if m.process is not None)

    def pids(self) -> list[int]:
        """The pids of the processes still running."""
        return [p.pid for p in self.processes() if p.pid is not None and p.state is ProcessState.RUNNING]

    def stop(self) -> None:
        """Stop HAProxy, the nodes, then etcd; remove the namespace. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.haproxy is not None:
                self.haproxy.terminate()
            nodes = [n.process for n in self.nodes.values() if n.process is not None]
            for proc in nodes:  # all at once, then wait: stopping takes one grace, not one per node
                proc.send_term()
            deadline = time.monotonic() + STOP_GRACE
            for proc in nodes:
                proc.wait_or_kill(max(0.1, deadline - time.monotonic()))
            if self.etcd is not None:
                self.etcd.stop()
        finally:
            if self.link is not None:
                self.link.close()
            if self._lock is not None:
                self._lock.close()  # releases the flock
                self._lock = None

    def __enter__(self) -> DevCluster:
        return self.launch()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
