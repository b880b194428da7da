"""``bulwark repl``: set up, watch, promote and tear down HA replication."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bulwark.assembly.ha import promote_node, replicator_for
from bulwark.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    err_console,
    errors_as_messages,
    fail,
    opened_node,
)
from bulwark.ha import setup as ha_setup
from bulwark.ha import state as ha_state
from bulwark.ha.client import BASE
from bulwark.ha.health import Thresholds
from bulwark.ha.report import replication_report
from bulwark.monitoring import running
from bulwark.roles import NodeRole

app = typer.Typer(
    help="High availability: make this node a replica of a primary, watch it, promote it.",
    no_args_is_help=True,
)


@app.command("setup")
def setup(
    primary: Annotated[str, typer.Option("--primary", help="The primary's URL, e.g. http://10.0.0.1:8080.")],
    token: Annotated[
        str, typer.Option("--token", envvar="BULWARK_PRIMARY_TOKEN", help="A site admin's token on the primary.")
    ],
    advertise_url: Annotated[
        str | None,
        typer.Option("--advertise-url", help="This node's URL as the primary reaches it (default: its public URL)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Replace this node's own data without asking.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Make this node a replica of PRIMARY: register, copy its metadata, fetch every repository.

    Repositories already here are fetched into, so only what differs is copied (this is how a
    former primary becomes a replica of the new one). Replication starts when the copy is done.
    """
    with opened_node(data_dir, config) as node:
        repos = node.store.list_repos()
        ha = ha_state.load(node.store)
        if repos and ha.role == NodeRole.STANDALONE and not yes:
            raise fail(
                f"this node holds {len(repos)} repositories of its own; setup replaces all its data with the "
                "primary's. Run again with --yes to go ahead."
            )
        url = advertise_url or running.node_url(node.settings, running.read(node.settings.data_dir))
        replicator = replicator_for(node)
        started = time.monotonic()
        with Progress(
            TextColumn("copying repositories"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=True, disable=not err_console.is_terminal,
        ) as bar:
            task = bar.add_task("copy", total=None)

            def on_progress(done: int, total: int, _storage_id: str) -> None:
                bar.update(task, completed=done, total=total)

            report = ha_setup.setup_replica(
                node.store, node.replication_log(), node.git, replicator,
                primary_url=primary, token=token, advertise_url=url, on_progress=on_progress,
            )
        took = time.monotonic() - started
        console.print(
            f"This node is now a replica of {primary} (node {report.primary_id}, epoch {report.epoch}).\n"
            f"Copied metadata up to change {report.position} and {report.repositories} repositories "
            f"in {took:.1f}s; removed {report.removed} repositories the primary does not have."
        )
        if report.failed:
            console.print(f"[yellow]{len(report.failed)} repositories failed to copy; replication retries them.")
        console.print("Replication is running; watch it with 'bulwark repl status'.")


@app.command("start")
def start(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Resume replication on this replica."""
    with opened_node(data_dir, config) as node:
        ha_setup.set_replicating(node.store, True)
        console.print("Replication started.")


@app.command("stop")
def stop(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Pause replication on this replica (it keeps its data and its place in the stream)."""
    with opened_node(data_dir, config) as node:
        ha_setup.set_replicating(node.store, False)
        console.print("Replication stopped; resume with 'bulwark repl start'.")


@app.command("status")
def status(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every detail.")] = False,
    as_json: JsonOption = False,
    warning_lag: Annotated[float, typer.Option(help="Seconds of lag that make a WARNING.")] = 30.0,
    critical_lag: Annotated[float, typer.Option(help="Seconds of lag that make CRITICAL.")] = 300.0,
    warning_pending: Annotated[int, typer.Option(help="Pending repositories that make a WARNING.")] = 10,
    critical_pending: Annotated[int, typer.Option(help="Pending repositories that make CRITICAL.")] = 100,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Replication health per stream: OK, WARNING or CRITICAL, with Nagios exit codes (0, 1, 2)."""
    with opened_node(data_dir, config) as node:
        limits = Thresholds(warning_lag, critical_lag, warning_pending, critical_pending,
                            primary_timeout=node.settings.ha_primary_timeout)
        report = replication_report(node.store, node.replication_log(), now=node.clock.now(), limits=limits)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, verbose)
    raise typer.Exit(report["exit_code"])


def _print_report(report: dict[str, Any], verbose: bool) -> None:
    role = report["role"]
    console.print(f"{report['level']}: node {report['node_id']} is {role} at epoch {report['epoch']}")
    if report.get("fenced"):
        console.print(f"  fenced: {report['fenced']}")
    if report.get("promoting"):
        console.print(f"  a promotion is under way (process {report['promoting']}); if that process is gone, "
                      "the running node finishes it")
    if report.get("detail"):
        console.print(f"  {report['detail']}")
    if role == NodeRole.HA_REPLICA:
        table = Table("stream", "status", "detail")
        for stream in report["streams"]:
            table.add_row(stream["name"], stream["level"], stream["detail"])
        console.print(table)
        if verbose:
            console.print(
                f"  primary {report['primary_url']} (node {report['primary_id']}); position {report['position']} "
                f"of {report['primary_seq']}; last contact {report['last_contact']}; "
                f"last error {report['last_error']}; faulty {report['repositories']['faulty_ids']}"
            )
    elif role == NodeRole.HA_PRIMARY and report["replicas"]:
        table = Table("replica", "url", "status", "reachable", "last seen (s ago)", "position", "behind (changes)")
        for r in report["replicas"]:
            table.add_row(
                r["node_id"], r["url"], r["level"], _reachable(r.get("reachable")), str(r["seconds_since_seen"]),
                str(r["position"]), str(r["lag_changes"]),
            )
        console.print(table)
        for r in report["replicas"]:
            if r.get("reachable") is not True:
                console.print(f"  replica {r['node_id']}: {r.get('reach')}", markup=False)


def _reachable(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "NO"


@app.command("promote")
def promote(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Make this replica the primary: fence the old primary if reachable, raise the epoch, take writes."""
    started = time.monotonic()
    with opened_node(data_dir, config) as node:
        report = promote_node(
            node, waiting=lambda: err_console.print("Waiting for the node's replication to stop (a fetch under way)...")
        )
    for step in report.steps:
        console.print(f"- {step}")
    if report.caught_up:
        console.print("Nothing is missing: this node had everything the old primary had.")
    else:
        console.print(
            f"[yellow]May be missing: up to {report.missing_changes} metadata changes and recent pushes to "
            f"{report.pending_repositories} repositories that had not reached this node."
        )
    console.print(f"Promoted in {time.monotonic() - started:.1f}s. Point DNS or the load balancer here.")


@app.command("teardown")
def teardown(
    node_id: Annotated[
        str | None, typer.Option("--node", help="On the primary: forget this replica (even if it is gone).")
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove a replica relationship: on a replica, make it standalone; on the primary, drop --node ID."""
    with opened_node(data_dir, config) as node:
        if node_id is not None:
            with errors_as_messages():
                ha_setup.forget_replica(node.store, node_id)
            console.print(f"Replica {node_id} removed; its credential no longer works.")
            return
        ha = ha_state.load(node.store)
        if ha.role != NodeRole.HA_REPLICA:
            raise fail("this node is not a replica; on the primary, name the replica with --node ID")
        me = ha_state.node_id(node.store)
        told = False
        if ha.primary_url and ha.credential:
            try:
                r = httpx.delete(
                    f"{ha.primary_url}{BASE}/replicas/{me}",
                    headers={"Authorization": f"Bearer {ha.credential}"},
                    timeout=5,
                )
                told = r.status_code in (204, 404)
            except httpx.HTTPError:
                told = False
        ha_setup.teardown_replica(node.store)
        console.print("This node is standalone now and keeps its data.")
        if not told:
            console.print(
                f"[yellow]The primary could not be told; run 'bulwark repl teardown --node {me}' on it."
            )
