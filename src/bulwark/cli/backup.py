"""``bulwark backup``: snapshots of an instance on a backup host, and restores from them."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bulwark.backup import snapshots
from bulwark.backup.client import InstanceClient
from bulwark.backup.create import InstanceSource, Step, Summary, create_backup
from bulwark.backup.restore import restore_to_data_dir, restore_to_url
from bulwark.backup.snapshots import DEFAULT_KEEP, BackupDir
from bulwark.backup.verify import verify as verify_snapshot
from bulwark.cli.common import err_console, errors_as_messages, fail
from bulwark.cli.output import confirm, print_json, print_table, say, size

app = typer.Typer(
    help="Backups: consistent, incremental snapshots of an instance in a backup directory, and restores.",
    no_args_is_help=True,
)

BackupDirArg = Annotated[
    Path, typer.Argument(metavar="DIR", help="The backup directory.", show_default=False)
]
SnapshotArg = Annotated[
    str, typer.Argument(metavar="SNAPSHOT", help="A snapshot id from 'backup list', or 'current'.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for scripts.")]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token", envvar="BULWARK_BACKUP_TOKEN", show_default=False,
        help="A site administrator's token on the instance (or set BULWARK_BACKUP_TOKEN).",
    ),
]


# (done, total, repository, bytes written so far or None)
Show = Callable[[int, int, str, int | None], None]


@contextlib.contextmanager
def _progress(what: str, *, quiet: bool) -> Iterator[Show]:
    """A progress reporter ``(done, total, name, bytes)``: a bar on a terminal, plain lines otherwise."""
    if quiet:
        yield lambda _done, _total, _name, _bytes: None
    elif err_console.is_terminal:
        columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[written]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(what, total=None, written="")

            def update(done: int, total: int, _name: str, written: int | None) -> None:
                bar.update(task, completed=done, total=total,
                           written="" if written is None else f"{size(written)} written")

            yield update
    else:
        def line(done: int, total: int, name: str, written: int | None) -> None:
            if done:
                extra = "" if written is None else f" ({size(written)} written so far)"
                say(f"{what} [{done}/{total}]{' ' + name if name else ''}{extra}", err=True)

        yield line


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Bulwark's errors, and the disk's (full, no permission) and git's (timed out), as one line."""
    with errors_as_messages():
        try:
            yield
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}") from None
        except subprocess.SubprocessError as exc:
            raise fail(str(exc)) from None


def _summary_line(s: Summary) -> str:
    return (
        f"Snapshot {s.snapshot_id} of {s.source_url} ({s.source_mode}) complete: {s.repositories} repositories, "
        f"{s.fetched} fetched; {size(s.bytes_written)} written, {size(s.size)} in all; {s.seconds:.1f}s."
    )


@app.command("create")
def create(
    source: Annotated[
        str, typer.Option("--from", help="The instance's URL: a node, or a cluster's load balancer.",
                          show_default=False)
    ],
    to: Annotated[
        Path, typer.Option("--to", help="The backup directory (created on first use).", show_default=False)
    ],
    token: TokenOption = "",
    allow_replica: Annotated[
        bool, typer.Option("--allow-replica", help="Back up an HA replica (its data may lag behind the primary).")
    ] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Repositories copied at the same time.")] = 4,
    full: Annotated[
        bool, typer.Option("--full", help="Copy everything afresh, sharing nothing with earlier snapshots "
                                          "(after 'verify' found damage).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary line.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Take a snapshot of the instance at --from into the backup directory --to.

    The snapshot holds the metadata and every repository's refs of one consistent point. Objects
    unchanged since the previous snapshot are hard-linked from it, so only changes cost time and disk.
    """
    with _errors(), _progress("backing up", quiet=quiet or as_json) as show:

        def on_step(step: Step) -> None:
            show(step.done, step.total, step.name, step.bytes_written)

        with InstanceClient(source, token) as client:
            summary = create_backup(
                InstanceSource(client, allow_replica), to, progress=on_step, jobs=jobs, full=full
            )
    if as_json:
        print_json(summary.to_json())
    else:
        say(_summary_line(summary))


@app.command("list")
def list_snapshots(backup_dir: BackupDirArg, as_json: JsonOption = False) -> None:
    """List the snapshots of a backup directory, oldest first; the state of the latest complete one
    is 'current'."""
    with _errors():
        infos = BackupDir.open(backup_dir).info()
    if as_json:
        print_json([i.to_json() for i in infos])
        return
    rows = [
        [
            i.id, "unreadable" if i.problem else "current" if i.current else i.state.value, _short_time(i.taken_at),
            "-" if i.repositories is None else str(i.repositories),
            "-" if i.bytes_written is None else size(i.bytes_written),
            "-" if i.size is None else size(i.size),
        ]
        for i in infos
    ]
    print_table(["snapshot", "state", "taken at (UTC)", "repos", "written", "size"], rows)
    for i in infos:
        if i.problem:
            say(f"{i.id}: {i.problem}")
    sources = sorted({i.source for i in infos if i.source})
    if sources:
        say(f"Taken from {', '.join(sources)}; 'written' is what each snapshot added on disk.")


def _short_time(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return f"{datetime.fromisoformat(value).astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return value


@app.command("verify")
def verify(backup_dir: BackupDirArg, snapshot: SnapshotArg, as_json: JsonOption = False) -> None:
    """Check a snapshot: metadata.json against its checksum, every repository with git fsck and
    against the manifest's refs. Lists every problem; exit 1 if there is any."""
    with _errors():
        found = BackupDir.open(backup_dir).resolve(snapshot)
        with _progress("verifying", quiet=as_json) as show:
            report = verify_snapshot(found, progress=lambda done, total: show(done, total, "", None))
    if as_json:
        print_json(report.to_json())
    else:
        for problem in report.problems:
            say(f"PROBLEM {problem}")
        noun = "repository" if report.repositories == 1 else "repositories"
        verdict = "OK" if report.ok else f"{len(report.problems)} problems"
        say(f"Snapshot {report.snapshot_id}: {report.repositories} {noun} checked, {verdict}.")
    if not report.ok:
        raise typer.Exit(1)


@app.command("prune")
def prune(
    backup_dir: BackupDirArg,
    keep: Annotated[int, typer.Option("--keep", help="How many complete snapshots to keep, newest first.")] = (
        DEFAULT_KEEP
    ),
    as_json: JsonOption = False,
) -> None:
    """Delete old snapshots: keep the newest --keep complete ones (and 'current'), and drop
    incomplete ones older than the newest complete one. Shared objects stay with the kept ones."""
    with _errors():
        backup = BackupDir.open(backup_dir)
        deleted = snapshots.prune(backup, keep)
        remaining = [i.id for i in backup.info()]
    if as_json:
        print_json({"deleted": deleted, "kept": remaining})
    else:
        for snapshot_id in deleted:
            say(f"deleted {snapshot_id}")
        say(f"Deleted {len(deleted)} snapshots; {len(remaining)} remain.")


@app.command("restore")
def restore(
    backup_dir: BackupDirArg,
    snapshot: SnapshotArg,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Restore into this running, empty instance (for a cluster: one node's URL).",
                     show_default=False),
    ] = None,
    token: TokenOption = "",
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Restore into this new data dir instead; start it with 'bulwark serve'.",
                     show_default=False),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Go ahead without asking.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Restore a snapshot into a fresh data dir (--data-dir) or into an empty running instance (--to).

    Into an instance: it goes into maintenance mode, gets the metadata and every repository
    (pushed with git), is checked against the snapshot, and leaves maintenance mode again unless
    it was in it before.
    """
    if (to is None) == (data_dir is None):
        raise fail("give exactly one target: --to URL (a running instance) or --data-dir PATH (a new data dir)")
    with _errors():
        found = BackupDir.open(backup_dir).resolve(snapshot)
        target = str(data_dir) if data_dir is not None else str(to)
        confirm(f"Restore snapshot {found.id} into {target}?", yes=yes)
        with _progress("restoring", quiet=as_json) as show:

            def on_repo(done: int, total: int, name: str) -> None:
                show(done, total, name, None)

            if data_dir is not None:
                summary = restore_to_data_dir(found, data_dir, progress=on_repo)
            else:
                assert to is not None
                with InstanceClient(to, token) as client:
                    summary = restore_to_url(found, client, progress=on_repo)
    if as_json:
        print_json(summary.to_json())
        return
    for note in summary.notes:
        say(f"note: {note}")
    say(f"Restored snapshot {summary.snapshot_id} into {summary.target}: {summary.accounts} accounts, "
        f"{summary.repositories} repositories, refs checked against the snapshot.")
    if data_dir is not None:
        say(f"Start it with: bulwark serve --data-dir {data_dir}")
