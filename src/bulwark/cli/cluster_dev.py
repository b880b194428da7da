"""``bulwark cluster dev``: a whole cluster on this machine, until Ctrl-C."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from bulwark.cli.common import fail
from bulwark.cli.output import say
from bulwark.cluster.dev import DevCluster, DevClusterError, Managed, ProcessState

MIN_NODES = 3


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the launcher the way Ctrl-C does, so both stop every process first.
    raise KeyboardInterrupt


def dev(
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", help="How many Bulwark nodes: 3 or more (5 or more get 5 etcd members).")
    ] = 3,
    dir: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="Where the data dirs, logs and generated configs go. Created if missing; a dev cluster "
            "stopped earlier there is replaced by a fresh one.",
        ),
    ] = Path("./bulwark-cluster"),
    host: Annotated[str, typer.Option("--host", help="The address every process listens on.")] = "127.0.0.1",
    admin_token: Annotated[
        str | None,
        typer.Option("--admin-token", help="The site admin's token on every node (default: a new one, printed).",
                     show_default=False),
    ] = None,
    lease_ttl: Annotated[
        int, typer.Option("--lease-ttl", min=2, max=60, help="Seconds a node stays alive in etcd without renewing.")
    ] = 3,
    replication_factor: Annotated[
        int | None,
        typer.Option("--replication-factor", min=1, max=7, help="Replicas per repository (default 3).",
                     show_default=False),
    ] = None,
) -> None:
    """Start etcd members, N nodes and HAProxy on this machine, for trying a cluster and for tests.

    Each node gets its own data dir and log under --dir, and HAProxy in front sends each request
    to a node whose /status answers 200. Kill a node (its pid is in the summary) to watch the
    others take over. Installs nothing: it needs etcd (Debian package etcd-server) and haproxy.
    Runs until Ctrl-C or SIGTERM, then stops every process it started.
    """
    if nodes < MIN_NODES:
        raise fail(f"a cluster needs at least {MIN_NODES} nodes (got --nodes {nodes})", 2)
    cluster = DevCluster(dir, nodes=nodes, host=host, admin_token=admin_token, lease_ttl=lease_ttl,
                         replication_factor=replication_factor, ssh=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # Started in the background by a script, SIGINT comes ignored; Ctrl-C must still stop everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        say(f"Starting {cluster.etcd_size} etcd members, {nodes} nodes and HAProxy in {cluster.base_dir} ...", err=True)
        cluster.launch()
        _summary(cluster)
        _watch(cluster)
    except DevClusterError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        say("Stopping every process of the dev cluster ...", err=True)
    finally:
        # A second Ctrl-C must not leave half the processes running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    say("Stopped.", err=True)


def _summary(cluster: DevCluster) -> None:
    lb = cluster.lb_url
    token = cluster.admin_token
    creds = f"admin:{token}@"
    lines = [
        f"Bulwark dev cluster in {cluster.base_dir}",
        "",
        f"  load balancer   {lb}    (HAProxy statistics: {cluster.stats_url})",
        f"  git over SSH    ssh://git@{cluster.host}:{cluster.lb_ssh_port}    (or a node's own SSH port, below)",
    ]
    for name in cluster.names:
        node = cluster.node(name)
        pid = node.process.pid if node.process is not None else "-"
        lines.append(f"  {name:<15} {node.url}    SSH port {node.ssh_port}, pid {pid}, log {node.log_path.name}")
    lines += [
        f"  etcd            {', '.join(cluster.etcd_endpoints)}",
        f"  admin token     {token}",
        "",
        "Create a repository and clone it through the load balancer:",
        f"  curl -H 'Authorization: token {token}' -H 'Content-Type: application/json' \\\n"
        f"       -d '{{\"name\": \"demo\"}}' {lb}/api/v3/user/repos",
        f"  git clone {lb.replace('://', '://' + creds, 1)}/admin/demo.git",
        "",
        "Watch the cluster:",
        f"  BULWARK_ETCD={','.join(cluster.etcd_endpoints)} bulwark cluster status",
        "",
        f"Cluster file {cluster.cluster_file}, HAProxy config {cluster.haproxy_config}.",
        "Press Ctrl-C to stop everything.",
    ]
    say("\n".join(lines))


def _watch(cluster: DevCluster) -> None:
    """Wait for Ctrl-C, telling when a process exits on its own (nothing here stops one)."""
    reported: set[int] = set()
    while True:
        time.sleep(1.0)
        for proc in cluster.processes():
            if proc.state is ProcessState.EXITED and id(proc) not in reported:
                reported.add(id(proc))
                say(_exit_note(proc), err=True)


def _exit_note(proc: Managed) -> str:
    code = proc.proc.returncode if proc.proc is not None else None
    return f"warning: {proc.component} exited (status {code}); its log is {proc.log_path}"
