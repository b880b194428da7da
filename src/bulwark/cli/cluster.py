"""``bulwark cluster``: set up a cluster in etcd, watch it, move replicas, drain and remove nodes.

Every command talks to etcd, the cluster's one source of truth: through ``--etcd URL[,URL]``
or the endpoints in the node's settings (``--data-dir``/``--config``, or BULWARK_ETCD).
Commands write intent (a flag, a placement); the elected reconciler does the moving.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bulwark.cli import cluster_dev
from bulwark.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    err_console,
    errors_as_messages,
    fail,
    settings_for,
)
from bulwark.cli.output import print_json, print_table, say
from bulwark.cluster import operations, state
from bulwark.cluster.config import parse_cluster_file
from bulwark.cluster.placement import eligible_nodes, plan_rebalance, replica_counts
from bulwark.cluster.report import ClusterReport, gather, render
from bulwark.cluster.state import BUILDING, ClusterSnapshot, Placement
from bulwark.errors import Unavailable
from bulwark.etcd import Etcd, EtcdUnavailable
from bulwark.levels import Level

app = typer.Typer(
    help="Cluster mode: store the cluster file in etcd, watch health, drain, evacuate and remove nodes, "
    "rebalance replicas. Commands record intent in etcd; the elected reconciler moves the data.",
    no_args_is_help=True,
)
app.command("dev")(cluster_dev.dev)

EtcdOption = Annotated[
    str | None,
    typer.Option(
        "--etcd",
        help="etcd endpoints, comma-separated (default: the etcd setting of the node at --data-dir).",
        show_default=False,
    ),
]
ClusterFileOption = Annotated[
    Path, typer.Option("--config", "-c", help="The cluster file (TOML: a [cluster] table and [[node]] entries).")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the node to empty.")]
PollOption = Annotated[float, typer.Option("--poll", help="Seconds between progress checks.")]


class Switch(enum.StrEnum):
    ON = "on"
    OFF = "off"


def _split(urls: str) -> list[str]:
    return [e.strip() for e in urls.split(",") if e.strip()]


def _endpoints(given: str | None, data_dir: Path | None, node_config: Path | None,
               fallback: Sequence[str] = (), *, missing_code: int = 1) -> list[str]:
    if given:
        return _split(given)
    settings = settings_for(data_dir, node_config)
    if settings.etcd:
        return list(settings.etcd)
    if fallback:
        return list(fallback)
    raise fail("no etcd endpoints: pass --etcd URL[,URL], or --data-dir of a node whose settings name them",
               missing_code)


@contextlib.contextmanager
def _etcd(endpoints: Sequence[str]) -> Iterator[Etcd]:
    with errors_as_messages():
        etcd = Etcd(endpoints)
        try:
            yield etcd
        finally:
            etcd.close()


# -- setting up ----------------------------------------------------------------------------


@app.command("init")
def init(
    config: ClusterFileOption,
    etcd_urls: EtcdOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a configuration already in etcd.")] = False,
) -> None:
    """Validate the cluster file and store it in etcd, with a new shared secret for node-to-node calls.

    Uses the etcd endpoints listed in the file unless --etcd is given. Refuses when etcd already
    holds a configuration (change one with 'cluster config-apply'), unless --force.
    """
    with errors_as_messages():
        cluster = parse_cluster_file(config)
    with _etcd(_split(etcd_urls) if etcd_urls else list(cluster.etcd)) as etcd, errors_as_messages():
        fresh_secret = operations.init(etcd, cluster, force=force)
    storage = len(cluster.storage_nodes)
    say(
        f"Cluster {cluster.name!r} stored in etcd: {len(cluster.nodes)} nodes ({storage} storing repositories), "
        f"replication factor {cluster.effective_rf()}."
    )
    say("Generated a new shared secret for node-to-node calls." if fresh_secret
        else "Kept the shared secret already in etcd.")
    say(f"Start each node with cluster_node = \"NAME\" and etcd = [{', '.join(repr(e) for e in cluster.etcd)}].")


@app.command("config-apply")
def config_apply(
    config: ClusterFileOption,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the changes only.")] = False,
    etcd_urls: EtcdOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Validate the cluster file and replace the stored configuration with it, showing what changes.

    A node that still holds replicas cannot be removed (or lose its storage role): run
    'bulwark cluster evacuate NODE' first, or 'bulwark cluster remove-node NODE --no-evacuate'
    for a node that is gone for good. The reconciler re-replicates as needed afterwards.
    """
    with errors_as_messages():
        new = parse_cluster_file(config)
    with _etcd(_endpoints(etcd_urls, data_dir, None, new.etcd)) as etcd, errors_as_messages():
        old, revision = operations.stored_config(etcd)
        changes = operations.config_changes(old, new)
        if not changes:
            say(f"The stored configuration already matches {config}; nothing to do.")
            return
        for line in changes:
            say(line)
        operations.check_leaving(old, new, replica_counts(state.snapshot(etcd)))
        if dry_run:
            say("Dry run: nothing stored.")
            return
        operations.apply_config(etcd, old, new, revision)
    say("Stored. Nodes pick the new configuration up within seconds; the reconciler re-replicates as needed.")
    if set(n.name for n in new.storage_nodes) - set(n.name for n in old.storage_nodes):
        say("New storage nodes get replicas of new repositories; run 'bulwark cluster rebalance' to move some now.")


# -- watching -----------------------------------------------------------------------------


@app.command("status")
def status(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="List every repository with a problem, and why its last repair failed."
    )] = False,
    as_json: JsonOption = False,
    nagios: Annotated[bool, typer.Option("--nagios", "-n", help="Print one line for Nagios-style monitors.")] = False,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Ask each live node's /status too.")] = True,
    etcd_urls: EtcdOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Cluster health: nodes, etcd, replicas. OK, WARNING or CRITICAL, with Nagios exit codes (0, 1, 2).

    CRITICAL: a repository has no live up-to-date replica, etcd has no quorum, or fewer than a
    majority of nodes are alive. WARNING: a node or etcd member is down, a repository is
    under-replicated or has outdated replicas, or no reconciler is elected. The reconciler's last
    failed repair of each replica is shown with -v (and in --json), from whichever node asks.
    """
    endpoints = _endpoints(etcd_urls, data_dir, config, missing_code=int(Level.UNKNOWN))
    report: ClusterReport | None = None
    etcd = Etcd(endpoints)
    try:
        report = gather(etcd, probe_nodes=probe)
    except EtcdUnavailable as exc:
        level, reason = Level.CRITICAL, exc.message
    except Unavailable as exc:  # no configuration stored: not a cluster (yet)
        level, reason = Level.UNKNOWN, exc.message
    finally:
        etcd.close()
    if report is None:
        if nagios:
            print(f"CLUSTER {level.name} - {reason}")
        elif as_json:
            print_json({"level": level.name, "exit_code": int(level), "reasons": [reason]})
        else:
            say(f"{level.name}: {reason}")
        raise typer.Exit(int(level))
    if nagios:
        print(report.nagios())
    elif as_json:
        print_json(report.to_json())
    else:
        render(report, console, verbose=verbose)
    raise typer.Exit(int(report.level))


@app.command("dataloss")
def dataloss(
    as_json: JsonOption = False,
    etcd_urls: EtcdOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Repositories with no live up-to-date replica, with their last known replicas (exit 2 if any).

    Such a repository serves no reads and takes no writes. Bring back a node that holds an
    up-to-date replica (generation equal to the highest) and the reconciler repairs the rest.
    """
    with _etcd(_endpoints(etcd_urls, data_dir, config)) as etcd:
        snap = state.snapshot(etcd)
    lost = [p for sid, p in sorted(snap.placements.items()) if not snap.serving_replicas(sid)]
    if as_json:
        print_json([_lost_json(snap, p) for p in lost])
    elif not lost:
        say(f"Every repository ({len(snap.placements)}) has a live up-to-date replica.")
    else:
        rows = []
        for p in lost:
            replicas = [
                f"{n}:{'building' if g == BUILDING else g}{'' if snap.is_alive(n) else ' (down)'}"
                for n, g in sorted(p.replicas.items())
            ]
            rows.append([p.storage_id, str(p.generation), " ".join(replicas) or "-"])
        print_table(["repository", "generation", "replicas (generation)"], rows)
        say(f"{len(lost)} repositories have no live up-to-date replica.", err=True)
    raise typer.Exit(2 if lost else 0)


def _lost_json(snap: ClusterSnapshot, placement: Placement) -> dict[str, Any]:
    top = set(placement.up_to_date())
    return {
        "storage_id": placement.storage_id,
        "generation": placement.generation,
        "replicas": {
            n: {"generation": g, "alive": snap.is_alive(n), "up_to_date": n in top}
            for n, g in sorted(placement.replicas.items())
        },
    }


# -- moving replicas ----------------------------------------------------------------------------


def _evacuate(etcd: Etcd, node: str, *, wait: bool, timeout: float, poll: float) -> int:
    """Flag ``node`` as evacuating; with ``wait``, watch its replicas go. The number left."""
    with errors_as_messages():
        snap = operations.start_evacuation(etcd, node)
    total = operations.replicas_on(snap, node)
    say(f"Node {node} is evacuating: {total} replicas to move.")
    if total and snap.reconciler is None:
        say("warning: no reconciler is elected; replicas move only while a node runs one.", err=True)
    others = [n for n in eligible_nodes(snap) if n != node]
    needed = max((snap.config.effective_rf(p.wanted_rf) for p in snap.placements.values() if node in p.replicas),
                 default=0)
    if len(others) < needed:
        say(f"warning: only {len(others)} other live storage nodes for a replication factor of {needed}; "
            "some replicas cannot move until more nodes are up.", err=True)
    if not wait or total == 0:
        return total
    deadline = time.monotonic() + timeout
    left = total
    with Progress(
        TextColumn(f"moving replicas off {node}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    ) as bar:
        task = bar.add_task("evacuate", total=total)
        while left and time.monotonic() < deadline:
            time.sleep(poll)
            now_left = operations.replicas_on(state.snapshot(etcd), node)
            if now_left != left and not err_console.is_terminal:
                say(f"{now_left} replicas left on {node}")
            left = now_left
            bar.update(task, completed=max(0, total - left))
    return left


@app.command("evacuate")
def evacuate(
    node: Annotated[str, typer.Argument(help="The node to empty.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the node holds no replica.")] = True,
    timeout: TimeoutOption = 3600.0,
    poll: PollOption = 1.0,
    etcd_urls: EtcdOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Move every replica off NODE: the reconciler copies each to another node, then drops NODE's.

    The node keeps serving while it empties. With --wait (the default) this shows the replicas
    left and exits non-zero if some remain after --timeout (the evacuation itself goes on).
    """
    with _etcd(_endpoints(etcd_urls, data_dir, config)) as etcd:
        left = _evacuate(etcd, node, wait=wait, timeout=timeout, poll=poll)
    if not wait:
        say(f"Watch it with 'bulwark cluster status'; {node} is empty when it holds 0 replicas.")
    elif left:
        raise fail(f"timed out: {left} replicas still on {node}; the evacuation goes on in the background")
    else:
        say(f"Node {node} holds no replica; remove it with 'bulwark cluster remove-node {node}'.")


@app.command("remove-node")
def remove_node(
    node: Annotated[str, typer.Argument(help="The node to take out of the cluster.")],
    no_evacuate: Annotated[
        bool, typer.Option("--no-evacuate", help="Remove at once, for a node that is gone for good.")
    ] = False,
    timeout: TimeoutOption = 3600.0,
    poll: PollOption = 1.0,
    etcd_urls: EtcdOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Take NODE out of the cluster: evacuate it, then remove it from the stored configuration.

    With --no-evacuate the node is removed at once and the reconciler re-creates its replicas
    on other nodes from the remaining good copies (use it for a node that will not come back).
    """
    with _etcd(_endpoints(etcd_urls, data_dir, config)) as etcd:
        if not no_evacuate:
            left = _evacuate(etcd, node, wait=True, timeout=timeout, poll=poll)
            if left:
                raise fail(f"timed out: {left} replicas still on {node}; it stays in the cluster until it is empty")
        with errors_as_messages():
            snap = operations.remove_node(etcd, node)
    say(f"Node {node} is no longer part of the cluster.")
    held = operations.replicas_on(snap, node)
    if held:
        say(f"{held} replicas were on {node}; the reconciler re-creates them on other nodes.")
    if snap.is_alive(node):
        say(f"warning: {node} is still running; stop its service.", err=True)


@app.command("rebalance")
def rebalance(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    max_moves: Annotated[int, typer.Option("--max-moves", min=1, help="Moves to plan at most.")] = 10,
    etcd_urls: EtcdOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Even out how many replicas each live storage node holds.

    Each move adds a replica on the emptier node; the reconciler builds it from a good copy,
    then drops the extra replica on the fuller node. Only healthy repositories move.
    """
    with _etcd(_endpoints(etcd_urls, data_dir, config)) as etcd:
        snap = state.snapshot(etcd)
        moves = plan_rebalance(snap, max_moves=max_moves)
        counts = replica_counts(snap)
        say("Replicas per node: " + ", ".join(f"{n} {counts.get(n, 0)}" for n in eligible_nodes(snap)))
        if not moves:
            say("Balanced: no move would help.")
            return
        print_table(["repository", "from", "to"], [[m.storage_id, m.from_node, m.to_node] for m in moves])
        if dry_run:
            say(f"Dry run: {len(moves)} moves planned, nothing changed.")
            return
        queued = operations.queue_moves(etcd, moves)
    say(f"Queued {queued} moves: the reconciler copies each repository to its new node, then drops the extra "
        "replica.")


@app.command("maintenance")
def maintenance(
    node: Annotated[str, typer.Argument(help="The node.")],
    switch: Annotated[Switch, typer.Argument(help="on or off.")],
    message: Annotated[str, typer.Option("--message", "-m", help="Why (shown in status).")] = "maintenance",
    etcd_urls: EtcdOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Drain NODE for maintenance, or bring it back.

    While on, the node's /status answers 503 so the load balancer stops sending it new requests;
    requests already under way finish. It keeps its replicas and still takes part in writes;
    new replicas go elsewhere when they can. Turn it off when the work is done.
    """
    with _etcd(_endpoints(etcd_urls, data_dir, config)) as etcd, errors_as_messages():
        operations.set_maintenance(etcd, node, message if switch is Switch.ON else None)
    if switch is Switch.ON:
        say(f"Node {node} is in maintenance: {message}. The load balancer drains it within a health check.")
    else:
        say(f"Node {node} is out of maintenance and takes traffic again.")
