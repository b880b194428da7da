"""A whole cluster on one machine: etcd members, Bulwark nodes and HAProxy, as child processes.

``bulwark cluster dev`` runs one for people trying Bulwark, and the cluster tests run one per test.
Every process is ours: we start it, remember its pid and end it by that pid, never by name.

With ``isolate="node3"`` (root only), node3 and its etcd member run in a network namespace of
their own, joined to the host by a veth pair; :meth:`DevCluster.cut` and :meth:`DevCluster.heal`
take that link down and up, which partitions the node from everything else.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import ipaddress
import itertools
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from bulwark.cluster.config import ClusterConfig, NodeSpec, render_cluster_file
from bulwark.etcd import Etcd

START_TIMEOUT = 30.0  # seconds one component may take to come up
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL


class DevClusterError(Exception):
    """A component of the dev cluster could not be started, reached or set up."""


class Tool(enum.Enum):
    """A program the dev cluster runs, and the Debian package that has it."""

    ETCD = ("etcd", "etcd-server")
    HAPROXY = ("haproxy", "haproxy")
    IP = ("ip", "iproute2")

    @property
    def command(self) -> str:
        return self.value[0]

    @property
    def package(self) -> str:
        return self.value[1]


def find_tool(tool: Tool, search_path: str | None = None) -> str:
    """The path of ``tool``; ``DevClusterError`` naming its Debian package when it is missing."""
    found = shutil.which(tool.command, path=search_path)
    if found is None and search_path is None:
        # /usr/sbin is often missing from an ordinary user's PATH, and haproxy and ip live there.
        found = next((str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / tool.command).is_file()),
                     None)
    if found is None:
        raise DevClusterError(
            f"{tool.command} is not installed: install the Debian package {tool.package} "
            f"(apt-get install {tool.package})"
        )
    return found


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def component_error(component: str, problem: str, log: Path | None) -> DevClusterError:
    message = f"{component}: {problem}"
    if log is not None:
        message += f"\n--- last lines of {log} ---\n{log_tail(log)}"
    return DevClusterError(message)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class PortPicker:
    """Free TCP ports, none handed out twice in one launch (the kernel may offer a closed one again)."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def pick(self, host: str) -> int:
        for _ in range(100):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise DevClusterError(f"no free port on {host}")


# -- child processes --------------------------------------------------------------------


class ProcessState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    EXITED = "exited"  # stopped, killed or crashed


class Managed:
    """One child process: its command, its log file, and its pid once started."""

    def __init__(self, component: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.component = component
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> ProcessState:
        if self.proc is None:
            return ProcessState.NOT_STARTED
        return ProcessState.RUNNING if self.proc.poll() is None else ProcessState.EXITED

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self.state is ProcessState.RUNNING:
            raise DevClusterError(f"{self.component} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                # A session of its own, so a Ctrl-C meant for the launcher does not reach it: we stop it in order.
                self.proc = subprocess.Popen(
                    self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            except OSError as exc:
                raise component_error(self.component, f"cannot start {self.argv[0]}: {exc}", None) from None

    def kill(self) -> None:
        """SIGKILL, by pid, and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_GRACE)

    def send_term(self) -> None:
        """SIGTERM, once: a second one makes some servers skip their graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait_or_kill(self, grace: float = STOP_GRACE) -> None:
        """Wait up to ``grace`` seconds for the process to exit, then SIGKILL it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def terminate(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
        self.send_term()
        self.wait_or_kill(grace)

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``ready`` until it holds; an exit or the timeout raises with the log's tail."""
        outcome: list[str] = []

        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                outcome.append(f"exited with status {self.proc.returncode} before {what}")
                return True
            return ready()

        if not wait_until(check, timeout):
            raise self.error(f"not {what} within {timeout:g}s")
        if outcome:
            raise self.error(outcome[0])

    def error(self, problem: str) -> DevClusterError:
        return component_error(self.component, problem, self.log_path)


def run_checked(argv: Sequence[str], what: str, timeout: float = 10.0) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DevClusterError(f"{what}: '{' '.join(argv)}' did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        raise DevClusterError(f"{what}: '{' '.join(argv)}' failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


# -- network isolation ------------------------------------------------------------------


class NetnsLink:
    """A network namespace of our own, joined to the host by a veth pair on a /30 of 10.231.0.0/16.

    The host side gets the subnet's first address, the namespace side the second. Besides the
    link's own route we add an ``unreachable`` route for the /30 with a low priority: while the
    link is down it stops traffic for the namespace address from leaving by the default route,
    and adding it fails if another launch holds the same /30, which makes it our claim on it.
    """

    SUPERNET = ipaddress.IPv4Network("10.231.0.0/16")
    FALLBACK_METRIC = "4000"
    _serial = itertools.count(1)

    def __init__(self) -> None:
        self.ns = f"bwk-{os.getpid()}-{next(self._serial)}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.host_if = ""
        self.ns_if = ""
        self._ip = ""
        self._claimed = self._ns_made = self._link_made = False

    @property
    def host_addr(self) -> str:
        assert self.subnet is not None, "create() first"
        return str(self.subnet.network_address + 1)

    @property
    def ns_addr(self) -> str:
        assert self.subnet is not None, "create() first"
        return str(self.subnet.network_address + 2)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it, so the pid stays the program's)."""
        return [self._ip, "netns", "exec", self.ns, *argv]

    def create(self) -> NetnsLink:
        if os.geteuid() != 0:
            raise DevClusterError("isolating a node needs root (it creates a network namespace and a veth pair)")
        self._ip = find_tool(Tool.IP)
        try:
            self._claim_subnet()
            run_checked([self._ip, "netns", "add", self.ns], "network namespace")
            self._ns_made = True
            run_checked([self._ip, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                         "netns", self.ns], "veth pair")
            self._link_made = True
            assert self.subnet is not None
            prefix = f"/{self.subnet.prefixlen}"
            run_checked([self._ip, "addr", "add", self.host_addr + prefix, "dev", self.host_if], "veth address")
            run_checked([self._ip, "-n", self.ns, "addr", "add", self.ns_addr + prefix, "dev", self.ns_if],
                        "veth address")
            run_checked([self._ip, "-n", self.ns, "link", "set", "lo", "up"], "namespace loopback")
            run_checked([self._ip, "-n", self.ns, "link", "set", self.ns_if, "up"], "veth link")
            self.heal()
        except BaseException:
            self.close()
            raise
        return self

    def _claim_subnet(self) -> None:
        used = self._used_networks()
        count = self.SUPERNET.num_addresses // 4
        for _ in range(50):
            index = random.randrange(1, count)
            subnet = ipaddress.IPv4Network((int(self.SUPERNET.network_address) + 4 * index, 30))
            if any(subnet.overlaps(net) for net in used):
                continue
            proc = subprocess.run(
                [self._ip, "route", "add", "unreachable", str(subnet), "metric", self.FALLBACK_METRIC],
                capture_output=True, text=True, timeout=10,
            )
            if proc.returncode == 0:
                self.subnet, self._claimed = subnet, True
                # Interface names follow the subnet, which is ours alone (at most 15 characters).
                self.host_if, self.ns_if = f"bwk{index:04x}h", f"bwk{index:04x}n"
                return
        raise DevClusterError(f"no free /30 in {self.SUPERNET} for the isolated node's link")

    def _used_networks(self) -> list[ipaddress.IPv4Network]:
        out = run_checked([self._ip, "-4", "-o", "addr", "show"], "address list")
        out += run_checked([self._ip, "-4", "route", "show", "table", "all"], "route list")
        used = []
        for match in re.finditer(r"(?<![\d.])(10\.231\.\d+\.\d+(?:/\d+)?)", out):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(match.group(1), strict=False))
        return used

    def cut(self) -> None:
        """Take the host side of the link down: no traffic either way until :meth:`heal`."""
        run_checked([self._ip, "link", "set", self.host_if, "down"], "cutting the link")

    def heal(self, timeout: float = 10.0) -> None:
        """Bring the link up and wait until it carries traffic."""
        run_checked([self._ip, "link", "set", self.host_if, "up"], "healing the link")
        if not wait_until(self.carries_traffic, timeout, interval=0.05):
            raise DevClusterError(f"the link to namespace {self.ns} carries no traffic {timeout:g}s after coming up")

    def carries_traffic(self) -> bool:
        # A refused connection proves the packets got there and back as well as an accepted one.
        try:
            with socket.create_connection((self.ns_addr, 9), timeout=0.3):
                return True
        except ConnectionRefusedError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Delete what :meth:`create` made (only that), in reverse order. Safe to call twice."""
        if self._link_made:
            subprocess.run([self._ip, "link", "del", self.host_if], capture_output=True, timeout=10)
            self._link_made = False
        if self._ns_made:
            subprocess.run([self._ip, "netns", "del", self.ns], capture_output=True, timeout=10)
            self._ns_made = False
        if self._claimed and self.subnet is not None:
            subprocess.run([self._ip, "route", "del", "unreachable", str(self.subnet), "metric",
                            self.FALLBACK_METRIC], capture_output=True, timeout=10)
            self._claimed = False


# -- etcd -----------------------------------------------------------------------------------


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


# -- HAProxy ----------------------------------------------------------------------------------


def render_haproxy_config(bind: str, servers: Sequence[tuple[str, str]], *, stats_bind: str | None,
                          header: Sequence[str], ssh_bind: str | None = None,
                          ssh_servers: Sequence[tuple[str, str]] = ()) -> str:
    """HAProxy in front of every node of a cluster; the one template for the generated and the example config.

    ``bind`` and the server addresses are written inside double quotes, so they may be literal
    (``127.0.0.1:8080``) or HAProxy environment references (``${BULWARK_NODE1}``).
    """
    lines = ([f"# {h}".rstrip() for h in header] + [""]) if header else []
    lines += [
        "global",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    # Inactivity limits, not totals: a large push may leave the server silent while it indexes.",
        "    timeout client 10m",
        "    timeout server 10m",
        "    timeout http-request 30s",
        "    timeout queue 30s",
        "    # A connection refused by a node that just died goes to another node, the client sees nothing;",
        "    # so does a read (a clone or fetch) whose node died before it answered (see the backends).",
        "    retry-on conn-failure empty-response",
        "    retries 3",
        "    option redispatch",
        "",
        "frontend bulwark",
        f'    bind "{bind}"',
        "    # Names the client to the nodes (their trusted_proxies setting lists this balancer).",
        "    option forwardfor",
        "    # While etcd elects a leader every node's lease renewal is late at once and every /status",
        "    # fails; then the nodes that have not lost their session serve rather than none.",
        "    use_backend bulwark_fallback if { nbsrv(bulwark_nodes) eq 0 }",
        "    default_backend bulwark_nodes",
        "",
        "backend bulwark_nodes",
        "    # Every node serves every request (it routes to the repository's replicas itself).",
        "    balance roundrobin",
        "    # Only a read is sent again: a push or an API write the dead node may have applied is not.",
        "    http-request disable-l7-retry if !METH_GET !{ path_end /git-upload-pack }",
        "    # /status answers 200 while the node takes traffic; anything else, or no answer, takes it out.",
        "    option httpchk GET /status",
        "    http-check expect status 200",
        "    # Check twice a second; two failures take a node out, two successes bring it back.",
        "    timeout check 1s",
        "    default-server inter 500ms fall 2 rise 2",
    ]
    lines += [f'    server {name} "{address}" check' for name, address in servers]
    lines += [
        "",
        "backend bulwark_fallback",
        "    # The same nodes, used only when none passes /status: /status/fallback overlooks a late",
        "    # renewal, not a lost session, maintenance or a drain.",
        "    balance roundrobin",
        "    http-request disable-l7-retry if !METH_GET !{ path_end /git-upload-pack }",
        "    option httpchk GET /status/fallback",
        "    http-check expect status 200",
        "    timeout check 1s",
        "    default-server inter 500ms fall 2 rise 1",
    ]
    lines += [f'    server {name} "{address}" check' for name, address in servers]
    if ssh_bind is not None:
        lines += [
            "",
            "frontend bulwark_ssh",
            "    mode tcp",
            f'    bind "{ssh_bind}"',
            "    default_backend bulwark_ssh_nodes",
            "",
            "backend bulwark_ssh_nodes",
            "    # Git over SSH: every node serves every session (it relays it to a replica itself).",
            "    mode tcp",
            "    balance leastconn",
            "    # Up exactly while the node's /status is 200, as the HTTP backend checks it.",
        ]
        lines += [f'    server {name} "{address}" track bulwark_nodes/{name}' for name, address in ssh_servers]
    if stats_bind is not None:
        lines += [
            "",
            "# Which nodes HAProxy sends traffic to, as a web page.",
            "listen stats",
            f'    bind "{stats_bind}"',
            "    stats enable",
            "    stats uri /",
            "    stats refresh 2s",
        ]
    return "\n".join(lines) + "\n"


def haproxy_example_config(nodes: int = 3) -> str:
    """The text of ``deploy/haproxy/cluster.cfg``: the generated config, with addresses from the environment."""
    env_list = " ".join(f"BULWARK_NODE{i}=10.0.0.{i}:8080" for i in range(1, nodes + 1))
    header = [
        f"HAProxy in front of a {nodes}-node Bulwark cluster.",
        "",
        "Every node takes traffic while its /status answers 200; a node that stops answering 200 is",
        "out within a second or two, and a connection that found a node dead is retried on another.",
        "`bulwark cluster dev` writes this same configuration with the addresses filled in.",
        "",
        "Addresses come from the environment so the same file serves every deployment:",
        f"  BULWARK_LB_BIND=0.0.0.0:80 {env_list} \\",
        "    haproxy -f deploy/haproxy/cluster.cfg",
        "Git over SSH: BULWARK_LB_SSH_BIND=0.0.0.0:22 and each node's SSH address,",
        f"  {' '.join(f'BULWARK_NODE{i}_SSH=10.0.0.{i}:2222' for i in range(1, nodes + 1))}",
        "(every node serves the same host keys, so clients see no changed key whichever they reach).",
        "The statistics page listens on BULWARK_LB_STATS_BIND (default 127.0.0.1:8404).",
        "Add a `server nodeN` line per further node, in each backend.",
    ]
    servers = [(f"node{i}", f"${{BULWARK_NODE{i}}}") for i in range(1, nodes + 1)]
    ssh_servers = [(f"node{i}", f"${{BULWARK_NODE{i}_SSH}}") for i in range(1, nodes + 1)]
    return render_haproxy_config("${BULWARK_LB_BIND}", servers, stats_bind="${BULWARK_LB_STATS_BIND-127.0.0.1:8404}",
                                 header=header, ssh_bind="${BULWARK_LB_SSH_BIND}", ssh_servers=ssh_servers)


# -- the whole cluster ---------------------------------------------------------------------

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
