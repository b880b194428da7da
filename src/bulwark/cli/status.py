"""``bulwark status``: this node's own checks, with Nagios exit codes (0 OK, 1 WARNING, 2 CRITICAL).

It asks the running server first, at the address the server recorded in its data dir once bound:
its ``/status`` and its own overview (``/status/node``). A server that does not answer is CRITICAL,
and the sentence says whether it was stopped cleanly, is gone (killed or crashed), or runs without
answering; the other checks are then read from the data dir. A cluster member's cluster state comes
from etcd (where its running process holds its lease).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from bulwark.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    fail,
    opened_node,
    settings_for,
)
from bulwark.cluster.report import gather
from bulwark.config import Settings
from bulwark.errors import BulwarkError
from bulwark.etcd import Etcd
from bulwark.levels import Level
from bulwark.monitoring import system
from bulwark.monitoring.checks import Check, Thresholds, check_server, evaluate, nagios_line, worst
from bulwark.monitoring.facts import (
    ClusterFacts,
    NodeFacts,
    ServerFacts,
    ServerState,
    facts_from_json,
    not_serving,
)
from bulwark.monitoring.gather import node_facts
from bulwark.monitoring.probe import ask_server
from bulwark.roles import NodeRole

_STYLE = {Level.OK: "green", Level.WARNING: "yellow", Level.CRITICAL: "red", Level.UNKNOWN: "magenta"}



def _percent(what: str) -> typer.models.OptionInfo:
    return typer.Option(min=0, max=100, show_default=False, help=f"Percent that makes {what} (default: settings).")


def _per_core(what: str) -> typer.models.OptionInfo:
    return typer.Option(min=0, show_default=False, help=f"15-minute load per core that makes {what}.")


def status(
    as_json: JsonOption = False,
    nagios: Annotated[bool, typer.Option("--nagios", "-n", help="Print one line for Nagios-style monitors.")] = False,
    disk_warning: Annotated[float | None, _percent("disk use a WARNING")] = None,
    disk_critical: Annotated[float | None, _percent("disk use CRITICAL")] = None,
    memory_warning: Annotated[float | None, _percent("memory use a WARNING")] = None,
    memory_critical: Annotated[float | None, _percent("memory use CRITICAL")] = None,
    load_warning: Annotated[float | None, _per_core("a WARNING")] = None,
    load_critical: Annotated[float | None, _per_core("CRITICAL")] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """This node's health: whether its server answers (asked at the address it recorded in the data
    dir), disk use of the data dir's filesystem, memory, 15-minute load, role, and HA replication
    (its primary too) or cluster state. Exit code 0 OK, 1 WARNING, 2 CRITICAL (a server that does
    not answer: stopped, killed or hung), 3 for a usage error.

    Thresholds default to the settings alert_disk_warning/critical (70/85 percent),
    alert_memory_warning/critical (50/70 percent) and alert_load_warning/critical (1 and 2 times the
    cores); the flags override them for one run.
    """
    settings = settings_for(data_dir, config)
    try:
        limits = Thresholds.from_settings(settings).overridden(
            disk_warning=disk_warning, disk_critical=disk_critical, memory_warning=memory_warning,
            memory_critical=memory_critical, load_warning=load_warning, load_critical=load_critical,
        )
    except BulwarkError as exc:
        raise fail(exc.message, int(Level.UNKNOWN)) from None  # a monitor must not read a usage error as WARNING
    if not settings.cluster_node and not settings.metadata_path.exists():
        raise fail(f"no Bulwark data in {settings.data_dir}: pass the node's --data-dir", int(Level.UNKNOWN))
    server = ask_server(settings.data_dir)
    if settings.cluster_node:
        facts = _cluster_facts(settings, server)
    else:
        facts, server = _local_facts(data_dir, config, server)
    checks = (check_server(server), *evaluate(facts, limits))
    level = worst(c.level for c in checks)
    if nagios:
        print(nagios_line(facts.name, checks, limits))
    elif as_json:
        print(json.dumps({
            "node": facts.name,
            "url": facts.url,
            "role": facts.role.value,
            "level": level.name,
            "exit_code": int(level),
            "server": server.to_json(),
            "checks": [c.to_json() for c in checks],
            "thresholds": limits.to_json(),
        }, indent=2))
    else:
        _print(facts, checks, level)
    raise typer.Exit(int(level))


def _local_facts(data_dir: Path | None, config: Path | None,
                 server: ServerFacts) -> tuple[NodeFacts, ServerFacts]:
    """The running server's own facts; the data dir's when it cannot give them (and the server,
    noting facts it gave that could not be read)."""
    sample = system.sample(Path(server.data_dir))
    if server.node is not None:
        try:
            return facts_from_json(server.node.get("facts") or {}, sample), server
        except ValueError as exc:
            server = replace(server, node=None, node_error=f"its facts cannot be read: {exc}")
    with opened_node(data_dir, config) as node:
        facts = node_facts(node)
    if server.state is ServerState.NOT_ANSWERING:
        facts = not_serving(facts, "its server does not answer")
    elif server.state is not ServerState.ANSWERING:
        facts = not_serving(facts, "its server is not running")
    return facts, server


def _cluster_facts(settings: Settings, server: ServerFacts) -> NodeFacts:
    """A cluster member's facts from etcd and its own /status: this process holds no session itself."""
    name = settings.cluster_node or ""
    sample = system.sample(settings.data_dir)
    if not settings.etcd:
        cluster = ClusterFacts(name, False, False, None, "no etcd endpoints in the settings")
        return NodeFacts(name, settings.base_url, NodeRole.CLUSTER_MEMBER, False, "no etcd", None, None, sample,
                         cluster=cluster)
    etcd = Etcd(settings.etcd, timeout=1.5)
    try:
        report = gather(etcd, probe_nodes=False)
    except BulwarkError as exc:
        cluster = ClusterFacts(name, False, False, None, exc.message)
        return NodeFacts(name, settings.base_url, NodeRole.CLUSTER_MEMBER, False, f"etcd: {exc.message}", None, None,
                         sample, cluster=cluster)
    finally:
        etcd.close()
    me = next((n for n in report.nodes if n.name == name), None)
    url = me.url if me is not None else settings.base_url
    alive = me is not None and me.alive
    serving = server.http_status == 200
    said = (server.status or {}).get("reason")
    reason = str(said) if said else "serving" if serving else f"does not answer at {server.url or url}"
    maintenance = me.maintenance if me is not None else None
    cluster = ClusterFacts(name, alive, True, report)
    return NodeFacts(name, url, NodeRole.CLUSTER_MEMBER, serving, reason, maintenance, None, sample, cluster=cluster)


def _print(facts: NodeFacts, checks: tuple[Check, ...], level: Level) -> None:
    console.print(Text(f"{level.name}: node {facts.name} ({facts.role.value}, {facts.url})",
                       style=f"bold {_STYLE[level]}"))
    table = Table("check", "level", "detail", highlight=False)
    for check in checks:
        table.add_row(Text(check.name.value), Text(check.level.name, style=_STYLE[check.level]), Text(check.detail))
    console.print(table)
