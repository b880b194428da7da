"""etcd: the members of the dev cluster's etcd, started, killed and restarted one by one."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bulwark.cluster.dev.netns import NetnsLink
from bulwark.cluster.dev.processes import Managed, ProcessState
from bulwark.cluster.dev.tools import (
    START_TIMEOUT,
    DevClusterError,
    PortPicker,
    Tool,
    find_tool,
    hostport,
    tcp_answers,
)
from bulwark.etcd import Etcd


@dataclass(frozen=True)
class Placement:
    """Where a process runs: the address it binds, and the network namespace it runs in (None: the host's)."""

    host: str
    netns: NetnsLink | None = None

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return self.netns.wrap(argv) if self.netns is not None else list(argv)


class InitialState(enum.StrEnum):
    NEW = "new"  # first start of a fresh cluster
    EXISTING = "existing"  # restart of a member whose data dir already knows the cluster


class EtcdMember:
    """One etcd member: its name, ports, data dir and log, and its process once started."""

    def __init__(self, name: str, placement: Placement, client_port: int, peer_port: int, base_dir: Path,
                 binary: str) -> None:
        self.name = name
        self.placement = placement
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = base_dir / name
        self.log_path = base_dir / f"{name}.log"
        self.binary = binary
        self.process: Managed | None = None

    @property
    def client_url(self) -> str:
        return f"http://{hostport(self.placement.host, self.client_port)}"

    @property
    def peer_url(self) -> str:
        return f"http://{hostport(self.placement.host, self.peer_port)}"

    @property
    def state(self) -> ProcessState:
        return self.process.state if self.process is not None else ProcessState.NOT_STARTED

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def command(self, initial_cluster: str, token: str, initial_state: InitialState) -> list[str]:
        return self.placement.wrap([
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-token", token,
            "--initial-cluster-state", initial_state.value,
            # Bulwark's transactions touch many keys at once (a repository with its replicas and locks).
            "--max-txn-ops", "4096",
            # Fast elections, so tests and people trying failover wait a second rather than ten.
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            # A member that was cut off asks before it calls an election, so its return does not depose
            # a working leader (the default from etcd 3.5 on).
            "--pre-vote",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ])


class EtcdCluster:
    """``size`` etcd 3.4 members on this machine, each with its own data dir and log under ``base_dir``.

    Members are numbered from 0 in the methods (``kill(0)`` is the member named ``etcd1``).
    ``placements`` (one per member) puts members on other addresses or in network namespaces.
    """

    def __init__(self, base_dir: Path, size: int = 3, host: str = "127.0.0.1", *,
                 placements: Sequence[Placement] | None = None, ports: PortPicker | None = None,
                 timeout: float = START_TIMEOUT) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        placements = list(placements) if placements is not None else [Placement(host)] * size
        if len(placements) != size:
            raise ValueError(f"{size} members need {size} placements, not {len(placements)}")
        self.base_dir = Path(base_dir).resolve()
        self.timeout = timeout
        self.token = f"bulwark-dev-{secrets.token_hex(8)}"  # a new cluster identity each launch
        binary = find_tool(Tool.ETCD)
        ports = ports or PortPicker()
        # Ports are picked on the host; a namespace of ours is fresh, so the same numbers are free there.
        self.members = [
            EtcdMember(f"etcd{i + 1}", p, ports.pick(self._probe_host(p)), ports.pick(self._probe_host(p)),
                       self.base_dir, binary)
            for i, p in enumerate(placements)
        ]
        self._client = Etcd(self.endpoints, timeout=2.0)

    @staticmethod
    def _probe_host(placement: Placement) -> str:
        return placement.netns.host_addr if placement.netns is not None else placement.host

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def quorum(self) -> int:
        return len(self.members) // 2 + 1

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def launch(self) -> EtcdCluster:
        """Start every member and wait until each answers a linearizable read (so a quorum stands)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for member in self.members:
                self._spawn(member, InitialState.NEW)
            for member in self.members:
                self._wait_healthy(member)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, member: EtcdMember, initial_state: InitialState) -> None:
        member.process = Managed(
            f"etcd member {member.name} ({member.client_url})",
            member.command(self._initial_cluster(), self.token, initial_state),
            member.log_path,
        )
        member.process.start()

    def _wait_healthy(self, member: EtcdMember) -> None:
        assert member.process is not None
        member.process.wait_ready(lambda: self.healthy(member), "answering with a quorum", self.timeout)

    def healthy(self, member: EtcdMember | int) -> bool:
        m = self.members[member] if isinstance(member, int) else member
        return self._client.endpoint_healthy(m.client_url)

    def running(self) -> list[EtcdMember]:
        return [m for m in self.members if m.state is ProcessState.RUNNING]

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` by its pid."""
        member = self.members[i]
        if member.process is not None:
            member.process.kill()

    def start(self, i: int, *, wait_healthy: bool = True) -> None:
        """Restart member ``i`` on its data dir and ports; wait until it answers with a quorum
        (``wait_healthy``) or only until it listens (when too few members run for a quorum)."""
        member = self.members[i]
        if member.state is ProcessState.RUNNING:
            raise DevClusterError(f"etcd member {member.name} is already running (pid {member.pid})")
        self._spawn(member, InitialState.EXISTING)
        assert member.process is not None
        if wait_healthy:
            self._wait_healthy(member)
        else:
            member.process.wait_ready(lambda: tcp_answers(member.placement.host, member.client_port), "listening",
                                      self.timeout)

    def stop(self) -> None:
        """Terminate every member, then kill it if it is still there after a grace. Safe to call twice.

        One after the other: a leader stopping hands its leadership to a follower first, which
        stalls until the grace runs out if that follower is stopping at the same moment.
        """
        for member in self.members:
            if member.process is not None:
                member.process.terminate(grace=5.0)
        self._client.close()

    def __enter__(self) -> EtcdCluster:
        return self.launch()

    def __exit__(self, *exc: object) -> None:
        self.stop()
