"""``bulwark``: every command, each with its own ``--help``."""

from __future__ import annotations

import typer

from bulwark import __version__
from bulwark.cli.serve import serve

app = typer.Typer(
    help="Bulwark: a self-hosted Git server built for availability.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve)


@app.command("version")
def version() -> None:
    """Print Bulwark's version."""
    print(__version__)


def main() -> None:
    app()
