"""What every command shares: finding the node's data dir, errors as messages."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bulwark.assembly import open_node
from bulwark.config import Settings, load_settings
from bulwark.errors import BulwarkError
from bulwark.node import Node

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-d",
        envvar="BULWARK_DATA_DIR",
        help="The node's data directory (default ./bulwark-data).",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A TOML config file (default <data-dir>/bulwark.toml).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def settings_for(data_dir: Path | None, config: Path | None = None, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file=config, overrides={"data_dir": data_dir, **overrides})
    except BulwarkError as exc:
        raise fail(exc.message) from None


@contextlib.contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn Bulwark's errors into a one-line message and exit code 1, never a traceback."""
    try:
        yield
    except BulwarkError as exc:
        raise fail(exc.message) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


@contextlib.contextmanager
def opened_node(data_dir: Path | None, config: Path | None = None, *, must_exist: bool = True) -> Iterator[Node]:
    """Open the node at ``data_dir`` for a command, closing it afterwards."""
    settings = settings_for(data_dir, config)
    if must_exist and not settings.metadata_path.exists():
        raise fail(
            f"no Bulwark data in {settings.data_dir}: start one with "
            f"'bulwark serve --data-dir {settings.data_dir}' or pass --data-dir"
        )
    with errors_as_messages():
        node = open_node(settings)
    try:
        with errors_as_messages():
            yield node
    finally:
        node.close()


def is_tty() -> bool:
    return sys.stdout.isatty()
