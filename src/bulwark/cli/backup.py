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

from bulwark.backup import retention, snapshots
from bulwark.backup.client import InstanceClient
from bulwark.backup.create import InstanceSource, Step, Summary, create_backup
from bulwark.backup.restore import restore_to_data_dir, restore_to_url
from bulwark.backup.snapshots import DEFAULT_KEEP, BackupDir
from bulwark.backup.verify import verify_and_record
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
WaitOption = Annotated[
    float,
    typer.Option(
        "--wait", min=0, metavar="SECONDS",
        help="If another backup command is using the directory, wait up to this long for it to finish "
             "(default: give up at once, naming it).",
    ),
]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token", envvar="BULWARK_BACKUP_TOKEN", show_default=False,
        help="A site administrator's token on the instance (or set BULWARK_BACKUP_TOKEN).",
    ),
]


def _help(*paragraphs: str) -> str:
    """A command's help: each paragraph one line, so the terminal wraps it rather than the source."""
    return "\n\n".join(paragraphs)


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


def _waiting(message: str) -> None:
    say(message, err=True)


def _summary_line(s: Summary) -> str:
    return (
        f"Snapshot {s.snapshot_id} of {s.source_url} ({s.source_mode}) complete: {s.repositories} repositories, "
        f"{s.fetched} fetched; {size(s.bytes_written)} written, {size(s.size)} in all; {s.seconds:.1f}s."
    )


def _repaired_line(s: Summary) -> str | None:
    if not s.repaired:
        return None
    noun = "copy" if len(s.repaired) == 1 else "copies"
    listed = ", ".join(f"{name} ({problem})" for name, problem in s.repaired)
    return (
        f"Repaired {len(s.repaired)} damaged {noun} of the previous snapshot, fetched afresh into this one: "
        f"{listed}. The previous snapshot still holds the damage; 'bulwark backup verify' tells more."
    )


@app.command("create", help=_help(
    "Take a snapshot of the instance at --from into the backup directory --to.",
    "The snapshot holds the metadata and every repository's refs of one consistent point. Each repository "
    "starts as a hard-linked copy of the previous snapshot's, so only changes cost time and disk.",
    "A previous copy is linked only while its object files are as its manifest recorded them (names, sizes and "
    "git's checksums at their ends) and no 'verify' found it damaged. Otherwise the repository is fetched afresh "
    "and the output says 'Repaired ...', naming it; the damaged snapshot is left as it is.",
    "Prints a one-line summary. A backup that fails exits 1 and leaves its snapshot incomplete, never used.",
))
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
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the summary line (and any repair).")
    ] = False,
    wait: WaitOption = 0,
    as_json: JsonOption = False,
) -> None:
    with _errors(), _progress("backing up", quiet=quiet or as_json) as show:

        def on_step(step: Step) -> None:
            show(step.done, step.total, step.name, step.bytes_written)

        with InstanceClient(source, token) as client:
            summary = create_backup(
                InstanceSource(client, allow_replica), to, progress=on_step, jobs=jobs, full=full, wait=wait,
                on_wait=_waiting,
            )
    repaired = _repaired_line(summary)
    if as_json:
        print_json(summary.to_json())
        if repaired:
            say(repaired, err=True)
    else:
        say(_summary_line(summary))
        if repaired:
            say(repaired)


@app.command("list", help=_help(
    "List the snapshots of a backup directory, oldest first.",
    "'state' is current (the latest complete snapshot), complete or incomplete; 'written' is what each snapshot "
    "added on disk; 'verified' is the outcome and time of its last 'verify' (OK or FAILED); 'repaired' counts the "
    "repositories it fetched afresh because the previous snapshot's copies were damaged.",
))
def list_snapshots(backup_dir: BackupDirArg, as_json: JsonOption = False) -> None:
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
            _verified(i.verification),
            str(i.repaired) if i.repaired else "-",
        ]
        for i in infos
    ]
    print_table(["snapshot", "state", "taken at (UTC)", "repos", "written", "size", "verified", "repaired"], rows)
    for i in infos:
        if i.problem:
            say(f"{i.id}: {i.problem}")
    sources = sorted({i.source for i in infos if i.source})
    if sources:
        say(f"Taken from {', '.join(sources)}; 'written' is what each snapshot added on disk.")


def _verified(v: snapshots.Verification | None) -> str:
    if v is None:
        return "-"
    return f"{'OK' if v.ok else 'FAILED'} {_short_time(v.at)}"


def _short_time(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return f"{datetime.fromisoformat(value).astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return value


@app.command("verify", help=_help(
    "Check a snapshot; list every problem, and exit 1 if there is any.",
    "Checks metadata.json against its checksum, and every repository's refs, HEAD and object files against the "
    "manifest and with git fsck.",
    "The outcome is recorded in the snapshot: 'list' shows it, 'prune' keeps the newest snapshot that passed, and "
    "the next 'create' fetches afresh the repositories that failed. Holds the directory's lock meanwhile.",
))
def verify(backup_dir: BackupDirArg, snapshot: SnapshotArg, wait: WaitOption = 0, as_json: JsonOption = False) -> None:
    with _errors():
        backup = BackupDir.open(backup_dir)
        with _progress("verifying", quiet=as_json) as show:
            report = verify_and_record(
                backup, snapshot, wait=wait, on_wait=_waiting, progress=lambda done, total: show(done, total, "", None)
            )
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


@app.command("prune", help=_help(
    "Delete old snapshots, keeping the newest --keep complete ones.",
    "Also keeps 'current', and the newest snapshot that passed 'verify', however old, so that one known to be "
    "good always stays. Deletes incomplete snapshots older than the newest complete one. Objects shared with a "
    "kept snapshot stay.",
))
def prune(
    backup_dir: BackupDirArg,
    keep: Annotated[int, typer.Option("--keep", help="How many complete snapshots to keep, newest first.")] = (
        DEFAULT_KEEP
    ),
    wait: WaitOption = 0,
    as_json: JsonOption = False,
) -> None:
    with _errors():
        backup = BackupDir.open(backup_dir)
        pruned = retention.prune(backup, keep, wait=wait, on_wait=_waiting)
        remaining = [i.id for i in backup.info()]
    verified = pruned.retention.newest_verified
    if as_json:
        print_json({
            "deleted": pruned.deleted, "kept": remaining, "newest_verified": verified,
            "kept_beyond_keep": [verified] if pruned.retention.beyond_keep else [],
        })
        return
    for snapshot_id in pruned.deleted:
        say(f"deleted {snapshot_id}")
    if verified is None:
        say("No snapshot here has passed 'bulwark backup verify' yet: verify one, so that prune keeps it.")
    elif pruned.retention.beyond_keep:
        say(f"Kept {verified} beyond --keep {keep}: it is the newest snapshot that passed 'bulwark backup "
            "verify'; verify a newer one to let it go.")
    else:
        say(f"The newest snapshot that passed 'bulwark backup verify' is {verified}.")
    say(f"Deleted {len(pruned.deleted)} {'snapshot' if len(pruned.deleted) == 1 else 'snapshots'}; "
        f"{len(remaining)} remain.")


@app.command("restore", help=_help(
    "Restore a snapshot into a fresh data dir (--data-dir) or into an empty running instance (--to).",
    "Into an instance: it goes into maintenance mode, gets the metadata and every repository (pushed with git), "
    "is checked against the snapshot, and leaves maintenance mode again unless it was in it before.",
    "Holds the directory's lock while it reads the snapshot, so no 'prune' deletes it meanwhile.",
))
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
    wait: WaitOption = 0,
    as_json: JsonOption = False,
) -> None:
    if (to is None) == (data_dir is None):
        raise fail("give exactly one target: --to URL (a running instance) or --data-dir PATH (a new data dir)")
    with _errors():
        backup = BackupDir.open(backup_dir)
        found = backup.resolve(snapshot)
        target = str(data_dir) if data_dir is not None else str(to)
        confirm(f"Restore snapshot {found.id} into {target}?", yes=yes)
        # Held for the whole restore, so no prune deletes the snapshot under it.
        with backup.locked("restore", wait=wait, on_wait=_waiting), _progress("restoring", quiet=as_json) as show:
            found = backup.resolve(found.id)

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
