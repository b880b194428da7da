"""``bulwark maintenance``: stop serving Git and API traffic for a while.

The state lives in the metadata store, which a running node reads on every
request, so switching it here takes effect at once without a restart.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, opened_node
from bulwark.cli.output import iso, print_json, say, when

app = typer.Typer(
    help="Maintenance mode: answer 503 to Git and API requests while you work on the node.",
    no_args_is_help=True,
)


@app.command("on")
def on(
    message: Annotated[
        str, typer.Option("--message", "-m", help="Shown to clients in the 503 answers.", show_default=False)
    ] = "",
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Turn maintenance mode on, at once, whether or not the node is running.

    Git and API requests get 503 with the message (site administrators keep the
    admin API), and /status answers 503 so load balancers drain the node.
    """
    with opened_node(data_dir, config) as node:
        node.maintenance.turn_on(message)
    say("Maintenance mode is on" + (f": {message}" if message else "."))


@app.command("off")
def off(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Turn maintenance mode off: the node serves traffic again."""
    with opened_node(data_dir, config) as node:
        node.maintenance.turn_off()
    say("Maintenance mode is off.")


@app.command("status")
def status(json: JsonOption = False, data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """Say whether maintenance mode is on (exit code 0 either way)."""
    with opened_node(data_dir, config) as node:
        state = node.maintenance.state()
    if json:
        print_json({"enabled": state.enabled, "message": state.message, "since": iso(state.since)})
    elif state.enabled:
        say(f"Maintenance mode is ON since {when(state.since)}" + (f": {state.message}" if state.message else "."))
    else:
        say("Maintenance mode is off.")
