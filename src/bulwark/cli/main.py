"""``bulwark``: every command, each with its own ``--help``."""

from __future__ import annotations

import typer

from bulwark import __version__
from bulwark.cli import backup, cluster, hooks, keys, maintenance, orgs, repl, repos, tokens, users
from bulwark.cli.fsck import fsck
from bulwark.cli.serve import serve
from bulwark.cli.status import status

app = typer.Typer(
    help="Bulwark: a self-hosted Git server built for availability. Administration commands act "
    "directly on a node's data dir (--data-dir or BULWARK_DATA_DIR), whether or not the node is running.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve)
app.add_typer(users.app, name="user")
app.add_typer(orgs.app, name="org")
app.add_typer(tokens.app, name="token")
app.add_typer(keys.app, name="key")
app.add_typer(hooks.app, name="hook")
app.add_typer(repos.app, name="repo")
app.add_typer(maintenance.app, name="maintenance")
app.command("fsck")(fsck)
app.command("status")(status)
app.add_typer(repl.app, name="repl")
app.add_typer(cluster.app, name="cluster")
app.add_typer(backup.app, name="backup")


@app.command("version")
def version() -> None:
    """Print Bulwark's version."""
    print(__version__)


def main() -> None:
    app()
