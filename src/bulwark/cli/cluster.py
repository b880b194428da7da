"""``bulwark cluster``: set up a cluster in etcd, watch it, move replicas, drain and remove nodes.

Every command talks to etcd, the cluster's one source of truth: through ``--etcd URL[,URL]``
or the endpoints in the node's settings (``--data-dir``/``--config``, or BULWARK_ETCD).
Commands write intent (a flag, a placement); the elected reconciler does the moving.
"""

from __future__ import annotations

import contextlib
import enum
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
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
from bulwark.cluster import keys, state
from bulwark.cluster.config import ClusterConfig, NodeSpec, parse_cluster_file
from bulwark.cluster.placement import Move, eligible_nodes, plan_rebalance, replica_counts
from bulwark.cluster.report import ClusterReport, gather, render
from bulwark.cluster.state import BUILDING, ClusterSnapshot, Placement
from bulwark.errors import Unavailable
from bulwark.etcd import Compare, Etcd, EtcdUnavailable, Op
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


def _stored_config(etcd: Etcd) -> tuple[ClusterConfig, int]:
    kv = etcd.get(keys.CONFIG)
    if kv is None:
        raise fail("etcd holds no cluster configuration; run 'bulwark cluster init --config FILE' first")
    return ClusterConfig.from_json(kv.text), kv.mod_revision


def _store_config(etcd: Etcd, config: ClusterConfig, revision: int) -> None:
    """Compare-and-set on the config key: a concurrent change makes this fail, not vanish."""
    result = etcd.txn([Compare.unchanged(keys.CONFIG, revision)], [Op.put(keys.CONFIG, config.to_json())])
    if not result.succeeded:
        raise fail("the stored configuration changed meanwhile; run the command again")


def _replicas_on(snapshot: ClusterSnapshot, node: str) -> int:
    return sum(1 for p in snapshot.placements.values() if node in p.replicas)


def _known_node(snapshot: ClusterSnapshot, node: str) -> None:
    if snapshot.config.node(node) is None:
        names = ", ".join(n.name for n in snapshot.config.nodes)
        raise fail(f"node {node!r} is not in the cluster configuration (nodes: {names})")


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
    with _etcd(_split(etcd_urls) if etcd_urls else list(cluster.etcd)) as etcd:
        existing = state.read_config(etcd)
        if existing is not None and not force:
            raise fail(
                f"etcd already holds the configuration of cluster {existing.name!r}; change it with "
                "'bulwark cluster config-apply', or pass --force to replace it"
            )
        guard = [] if force else [Compare.absent(keys.CONFIG)]
        if not etcd.txn(guard, [Op.put(keys.CONFIG, cluster.to_json())]).succeeded:
            raise fail("another 'cluster init' stored a configuration meanwhile")
        fresh_secret = etcd.txn([Compare.absent(keys.SECRET)], [Op.put(keys.SECRET, secrets.token_hex(32))])
    storage = len(cluster.storage_nodes)
    say(
        f"Cluster {cluster.name!r} stored in etcd: {len(cluster.nodes)} nodes ({storage} storing repositories), "
        f"replication factor {cluster.effective_rf()}."
    )
    say("Generated a new shared secret for node-to-node calls." if fresh_secret.succeeded
        else "Kept the shared secret already in etcd.")
    say(f"Start each node with cluster_node = \"NAME\" and etcd = [{', '.join(repr(e) for e in cluster.etcd)}].")


def _describe(spec: NodeSpec) -> str:
    return f"{spec.name} ({spec.url}, {','.join(r.value for r in spec.roles)})"


def config_changes(old: ClusterConfig, new: ClusterConfig) -> list[str]:
    """Human lines for what applying ``new`` over ``old`` changes (empty: nothing)."""
    lines: list[str] = []
    if old.name != new.name:
        lines.append(f"~ cluster name: {old.name} -> {new.name}")
    if old.replication_factor != new.replication_factor:
        lines.append(f"~ replication factor: {old.replication_factor} -> {new.replication_factor}")
    if old.etcd != new.etcd:
        lines.append(f"~ etcd: {', '.join(old.etcd)} -> {', '.join(new.etcd)}")
    before = {n.name: n for n in old.nodes}
    after = {n.name: n for n in new.nodes}
    lines += [f"+ node {_describe(after[n])}" for n in sorted(set(after) - set(before))]
    lines += [f"- node {_describe(before[n])}" for n in sorted(set(before) - set(after))]
    for name in sorted(set(before) & set(after)):
        if before[name] != after[name]:
            lines.append(f"~ node {_describe(before[name])} -> {_describe(after[name])}")
    return lines


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
    with _etcd(_endpoints(etcd_urls, data_dir, None, new.etcd)) as etcd:
        old, revision = _stored_config(etcd)
        changes = config_changes(old, new)
        if not changes:
            say(f"The stored configuration already matches {config}; nothing to do.")
            return
        for line in changes:
            say(line)
        counts = replica_counts(state.snapshot(etcd))
        still_storing = {n.name for n in new.storage_nodes}
        leaving = [n.name for n in old.storage_nodes if n.name not in still_storing and counts.get(n.name, 0) > 0]
        if leaving:
            held = ", ".join(f"{n} holds {counts[n]}" for n in leaving)
            raise fail(
                f"nodes leaving storage still hold replicas ({held}): run 'bulwark cluster evacuate NODE' first, "
                "or 'bulwark cluster remove-node NODE --no-evacuate' for a node that is gone for good"
            )
        if dry_run:
            say("Dry run: nothing stored.")
            return
        _store_config(etcd, new, revision)
        for gone in {n.name for n in old.nodes} - {n.name for n in new.nodes}:
            state.set_flag(etcd, keys.evacuating(gone), None)
            state.set_flag(etcd, keys.maintenance(gone), None)
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
    snap = state.snapshot(etcd)
    _known_node(snap, node)
    state.set_flag(etcd, keys.evacuating(node), "1")
    total = _replicas_on(snap, node)
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
            now_left = _replicas_on(state.snapshot(etcd), node)
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
        current, revision = _stored_config(etcd)
        if current.node(node) is None:
            raise fail(f"node {node!r} is not in the cluster configuration")
        raw = current.model_dump(mode="json")
        raw["nodes"] = [n for n in raw["nodes"] if n["name"] != node]
        try:
            smaller = ClusterConfig.model_validate(raw)
        except ValidationError as exc:
            raise fail(f"cannot remove {node}: {exc.errors()[0]['msg']}") from None
        _store_config(etcd, smaller, revision)
        state.set_flag(etcd, keys.evacuating(node), None)
        state.set_flag(etcd, keys.maintenance(node), None)
        snap = state.snapshot(etcd)
    say(f"Node {node} is no longer part of the cluster.")
    held = _replicas_on(snap, node)
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
        queued = 0
        for move in moves:

            def add(p: Placement, move: Move = move) -> Placement:
                if move.to_node in p.replicas or move.from_node not in p.replicas:
                    return p  # changed since the plan
                return p.with_replicas({**p.replicas, move.to_node: BUILDING})

            after = state.update_placement(etcd, move.storage_id, add)
            queued += bool(after and after.replicas.get(move.to_node) == BUILDING)
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
    with _etcd(_endpoints(etcd_urls, data_dir, config)) as etcd:
        _known_node(state.snapshot(etcd), node)
        state.set_flag(etcd, keys.maintenance(node), message if switch is Switch.ON else None)
    if switch is Switch.ON:
        say(f"Node {node} is in maintenance: {message}. The load balancer drains it within a health check.")
    else:
        say(f"Node {node} is out of maintenance and takes traffic again.")
