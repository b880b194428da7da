"""``bulwark fsck``: check every repository's objects with ``git fsck``, and look for what a
killed git process left behind (stale lock files block the refs they lock)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bulwark.cli.common import ConfigOption, DataDirOption, JsonOption, console, err_console, opened_node
from bulwark.cli.output import print_json
from bulwark.cli.repos import all_repos, find
from bulwark.git import leftovers
from bulwark.git.model import FsckResult
from bulwark.node import Node
from bulwark.services.repositories import RepoAccess

# Enough of git's report to see what is wrong without burying the other repositories.
SHOWN_LINES = 10


def _check_all(
    node: Node, targets: list[RepoAccess], *, progress: bool, clear: bool
) -> list[tuple[RepoAccess, FsckResult]]:
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not progress) as bar:
        task = bar.add_task("fsck", total=len(targets))
        for found in targets:
            bar.update(task, description=escape(found.full_name))
            results.append((found, _check(node, found, clear=clear)))
            bar.advance(task)
    return results


def _check(node: Node, found: RepoAccess, *, clear: bool) -> FsckResult:
    result = node.git.fsck(found.repo.storage_id)
    path = node.git.path(found.repo.storage_id)
    if not path.is_dir():
        return result
    notes = []
    if clear:
        sentence = leftovers.clear(path, label=found.full_name, git=node.git).sentence()
        if sentence:
            notes.append(sentence)
    config_error = leftovers.check_config(path, node.git)
    if config_error:
        notes.append(f"the config does not parse: {config_error}")
    left = leftovers.stale(leftovers.listing(path), now=time.time(), grace=leftovers.GRACE)
    if left and leftovers.owned(path.resolve(), leftovers.live_cwds()):
        left = []  # a git at work in it owns them (a push waiting its turn); not a dead one's
    # A push that ended between the listing and the look at the processes took its files along.
    left = [(entry, kind) for entry, kind in left if leftovers.present(path, entry)]
    if left:
        notes.append(
            f"left by a git process that died: {', '.join(e.path for e, _ in left)} "
            "(restarting the node clears them, or run 'bulwark fsck --clear')"
        )
    if not notes:
        return result
    output = "\n".join(filter(None, [result.output, *notes]))
    return FsckResult(result.storage_id, result.ok and not config_error and not left, output)


def fsck(
    repositories: Annotated[
        list[str] | None,
        typer.Argument(metavar="OWNER/NAME", help="Check only these repositories (default: all).", show_default=False),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove lock and temporary files killed git processes left.")
    ] = False,
    json: JsonOption = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Run git fsck over every repository (or the named ones); exit 1 if any fails.

    Repositories whose data directory is missing count as failed, and so do those with lock or
    temporary files a killed git left (older than a few seconds, no live process inside).
    """
    with opened_node(data_dir, config) as node:
        targets = [find(node, name) for name in repositories] if repositories else all_repos(node)
        results = _check_all(node, targets, progress=not json and err_console.is_terminal, clear=clear)
        missing = {found.repo.id for found, _ in results if not node.git.path(found.repo.storage_id).is_dir()}
    failed = [(found, result) for found, result in results if not result.ok]
    if json:
        print_json(
            {
                "checked": len(results),
                "failed": len(failed),
                "repositories": [
                    {
                        "full_name": found.full_name,
                        "storage_id": found.repo.storage_id,
                        "ok": result.ok,
                        "missing": found.repo.id in missing,
                        "output": result.output,
                    }
                    for found, result in results
                ],
            }
        )
    else:
        for found, result in failed:
            what = "MISSING DATA" if found.repo.id in missing else "FAILED"
            console.print(f"[red]{what}[/red] {escape(found.full_name)} (storage id {found.repo.storage_id})")
            lines = result.output.splitlines() or ["(git printed nothing)"]
            for line in lines[:SHOWN_LINES]:
                console.print(f"    {line}", markup=False, highlight=False)
            if len(lines) > SHOWN_LINES:
                console.print(f"    ... {len(lines) - SHOWN_LINES} more lines", highlight=False)
        noun = "repository" if len(results) == 1 else "repositories"
        console.print(f"{len(results)} {noun} checked, {len(failed)} failed", highlight=False)
    if failed:
        raise typer.Exit(1)
