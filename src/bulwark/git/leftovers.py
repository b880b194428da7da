"""What a git process killed mid-operation leaves in a bare repository, and clearing it.

Git writes a ref by creating ``<ref>.lock`` and renaming it into place, receives objects
into a quarantine directory, and writes packs as ``tmp_pack_*`` before renaming them. A
git that exits normally or on SIGTERM removes all of these; one killed with SIGKILL (or
dying with its machine) does not, and a stale lock file makes every later update of that
ref fail with "File exists" until it is gone.

The decision is pure (:func:`kind_of`, :func:`stale`, :func:`owned`); listing the files,
reading ``/proc`` and removing are the edges. The caller must hold the repository's lock
(or know nothing of its own can be writing there); a repository in which any live process
has its working directory is left alone, because the git runner starts every git process
on a repository inside it (and receive-pack and upload-pack enter it themselves).
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulwark.git.runner import GitRunner

# A file this young may belong to a git process we cannot see: left for a later pass.
GRACE = 5.0
# Why a pass left a repository alone while a process (maybe a git killed with its node that has
# not exited yet, stuck in a disk write) worked in it.
BUSY = "a live process works in it"

_TOP_LOCKS = ("HEAD.lock", "packed-refs.lock", "config.lock", "shallow.lock", "index.lock")
_TEMP_PACK = ("tmp_pack_", "tmp_idx_", "tmp_rev_", "tmp_mtimes_")
_QUARANTINE = ("tmp_objdir-", "incoming-")


class Kind(enum.Enum):
    LOCK = "lock file"
    TEMP_PACK = "temporary pack file"
    TEMP_OBJECT = "temporary object file"
    QUARANTINE = "quarantine directory"
    UNFINISHED = "unfinished repository"  # a create or removal that a crash cut short


_PLURAL = {Kind.LOCK: "lock files", Kind.TEMP_PACK: "temporary pack files",
           Kind.TEMP_OBJECT: "temporary object files", Kind.QUARANTINE: "quarantine directories",
           Kind.UNFINISHED: "unfinished repositories"}


@dataclass(frozen=True)
class Entry:
    """A file or directory in a repository, as listed: path relative to it, with ``/``."""

    path: str
    is_dir: bool
    mtime: float  # for a directory: the newest mtime inside it
    inode: int = 0


@dataclass(frozen=True)
class Cleared:
    """What one pass over one repository did; ``sentence()`` is the log line (None: nothing to say)."""

    label: str
    removed: tuple[tuple[str, Kind], ...] = ()
    skipped: str | None = None  # why the repository was left alone
    config_error: str | None = None
    repo: Path | None = None  # where it is on disk

    def sentence(self) -> str | None:
        parts = []
        if self.removed:
            kinds = [kind for _path, kind in self.removed]
            counted = [(n, kind.value if n == 1 else _PLURAL[kind]) for kind in Kind if (n := kinds.count(kind))]
            named = [f"{n} stale {name}" if i == 0 else f"{n} {name}" for i, (n, name) in enumerate(counted)]
            what = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
            parts.append(f"cleared {what} in {self.label}: {', '.join(p for p, _ in self.removed)}")
        if self.config_error:
            parts.append(f"the config of {self.label} does not parse: {self.config_error}")
        if self.skipped and not parts:
            return None  # a busy repository is normal; its leftovers wait for the next pass
        return "; ".join(parts) or None


# -- the decision (pure) -------------------------------------------------------------------


def kind_of(path: str, is_dir: bool) -> Kind | None:
    """What ``path`` (relative to a bare repository) is if git left it behind; None if it is not."""
    parts = path.split("/")
    name = parts[-1]
    if is_dir:
        if len(parts) == 2 and parts[0] == "objects" and name.startswith(_QUARANTINE):
            return Kind.QUARANTINE
        return None
    if name.endswith(".lock"):
        if len(parts) == 1 or parts[0] == "refs" or parts[:2] in (["objects", "info"], ["objects", "pack"]):
            return Kind.LOCK
        return None
    if parts[0] != "objects":
        return None
    if len(parts) == 3 and parts[1] == "pack" and name.startswith(_TEMP_PACK):
        return Kind.TEMP_PACK
    if len(parts) in (2, 3) and name.startswith("tmp_obj_"):
        return Kind.TEMP_OBJECT
    return None


def stale(entries: Iterable[Entry], *, now: float, grace: float) -> list[tuple[Entry, Kind]]:
    """The leftovers among ``entries`` that are older than ``grace`` seconds, in path order."""
    found = []
    for entry in entries:
        kind = kind_of(entry.path, entry.is_dir)
        if kind is not None and now - entry.mtime >= grace:
            found.append((entry, kind))
    return sorted(found, key=lambda item: item[0].path)


def owned(repo: Path, cwds: Iterable[Path]) -> bool:
    """Whether any of the processes' working directories is ``repo`` or inside it."""
    return any(cwd == repo or repo in cwd.parents for cwd in cwds)


# -- the edges -------------------------------------------------------------------------------


def live_cwds(proc: Path = Path("/proc")) -> list[Path]:
    """The working directory of every process we may look at (Linux); others' are unreadable."""
    found = []
    with contextlib.suppress(OSError):
        for pid in os.listdir(proc):
            if pid.isdigit():
                with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
                    found.append(Path(os.readlink(proc / pid / "cwd")))
    return found


def listing(repo: Path, *, locks_only: bool = False) -> list[Entry]:
    """The candidates in ``repo``: its top level, ``refs/``, and (unless ``locks_only``) ``objects/``.

    ``locks_only`` is the cheap pass before a push: only lock files stop a later write.
    """
    entries: list[Entry] = []
    entries += _files(repo, "")
    entries += _tree(repo, "refs")
    if locks_only:
        return entries
    for sub in ("objects/info", "objects/pack"):
        entries += _files(repo, sub)
    with contextlib.suppress(OSError), os.scandir(repo / "objects") as it:
        for item in it:
            if item.is_dir(follow_symlinks=False):
                if item.name.startswith(_QUARANTINE):
                    entries.append(Entry(f"objects/{item.name}", True, _newest(Path(item.path)), item.inode()))
                elif len(item.name) == 2:
                    entries += (e for e in _files(repo, f"objects/{item.name}") if "tmp_obj_" in e.path)
            elif item.name.startswith("tmp_obj_"):
                entries.append(_entry(f"objects/{item.name}", item))
    return entries


# A conservative part of git's config syntax: a file of only these lines parses in git. Anything
# else (quoting, escapes, continued lines, a cut-off header) is left for git itself to judge.
_SECTION = re.compile(rb'[ \t]*\[[A-Za-z0-9.-]+(?: "[^"\\\r\n\x00]*")?\][ \t]*')
_VARIABLE = re.compile(rb"[ \t]*[A-Za-z][A-Za-z0-9-]*[ \t]*(?:=[^\"\\#;\r\n\x00]*)?")
_COMMENT = re.compile(rb"[ \t]*(?:[#;][^\r\n\x00]*)?")


def plainly_parses(text: bytes) -> bool:
    """Whether ``text`` is a config git certainly parses (False: maybe not, ask git)."""
    in_section = False
    for line in text.split(b"\n"):
        if _SECTION.fullmatch(line):
            in_section = True
        elif _VARIABLE.fullmatch(line):
            if not in_section:  # git refuses a variable before any section
                return False
        elif not _COMMENT.fullmatch(line):
            return False
    return True


def check_config(repo: Path, git: GitRunner) -> str | None:
    """Git's complaint if the repository's config does not parse; None when it does.

    Git is asked only when the file is not plainly fine: a process per repository made a node's
    start take minutes at tens of thousands of them."""
    with contextlib.suppress(OSError):
        if plainly_parses((repo / "config").read_bytes()):
            return None
    proc = git.run(["config", "--file", str(repo / "config"), "--list"], check=False, timeout=30)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"git config exited with status {proc.returncode}"


def clear(
    repo: Path,
    *,
    label: str,
    git: GitRunner | None = None,
    just_started: bool = False,
    locks_only: bool = False,
    grace: float = GRACE,
    cwds: Sequence[Path] | None = None,
    now: float | None = None,
) -> Cleared:
    """Remove what dead git processes left in ``repo``; the caller holds the repository's lock.

    ``just_started``: the node serves nothing yet, so no file of ours is young for a reason.
    ``git``: given, the config is checked too (a git process each time, so not before pushes).
    """
    if not (repo / "HEAD").exists():
        return Cleared(label, skipped="not a repository", repo=repo)
    found = stale(listing(repo, locks_only=locks_only), now=time.time() if now is None else now,
                  grace=0.0 if just_started else grace)
    config_error = check_config(repo, git) if git is not None else None
    if not found:
        return Cleared(label, config_error=config_error, repo=repo)
    resolved = repo.resolve()
    if owned(resolved, live_cwds() if cwds is None else cwds):
        return Cleared(label, skipped=BUSY, config_error=config_error, repo=repo)
    removed = tuple((entry.path, kind) for entry, kind in found if _remove(repo, entry))
    return Cleared(label, removed=removed, config_error=config_error, repo=repo)


def _unfinished(name: str) -> bool:
    """A repository's directory under a temporary name: one being created (``<id>.git.creating-…``)
    or removed (``<id>.git.deleting``). Only this node's process writes them, so at its start
    they are a crash's."""
    stem, dot_git, rest = name.partition(".git.")
    return bool(dot_git) and stem.isalnum() and (rest.startswith("creating-") or rest == "deleting")


def clear_all(
    git: GitRunner, labels: Mapping[str, str], *, just_started: bool, check: bool = True
) -> Iterator[Cleared]:
    """:func:`clear` over every repository under the runner's root; ``labels`` names them by storage id."""
    cwds = live_cwds()
    with contextlib.suppress(OSError):
        for shard in sorted(os.listdir(git.root)):
            with contextlib.suppress(OSError):
                for name in sorted(os.listdir(git.root / shard)):
                    if just_started and _unfinished(name):
                        shutil.rmtree(git.root / shard / name, ignore_errors=True)
                        yield Cleared(f"{shard}/", removed=((name, Kind.UNFINISHED),))
                        continue
                    if not name.endswith(".git"):
                        continue
                    storage_id = name.removesuffix(".git")
                    yield clear(git.root / shard / name, label=labels.get(storage_id, storage_id),
                                git=git if check else None, just_started=just_started, cwds=cwds)


def clear_later(
    busy: Mapping[Path, str],
    *,
    lock: AbstractContextManager[object] | None = None,
    every: float = 2.0,
    patience: float = 3600.0,
    cwds: Callable[[], Sequence[Path]] = live_cwds,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Cleared]:
    """Try the repositories a start-up pass left busy (path -> label) again every ``every`` seconds,
    until none is busy or ``patience`` runs out; yields a :class:`Cleared` for each one done.

    A git killed with its node can outlive the start by seconds (SIGKILL waits for a disk write to
    end); once it has gone, its files would otherwise wait for the next start. The node serves by
    then, so only files older than the grace go, and a repository with any process in it waits."""
    waiting = dict(busy)
    deadline = clock() + patience
    while waiting and clock() < deadline:
        sleep(every)
        now = cwds()
        for repo, label in list(waiting.items()):
            with lock if lock is not None else contextlib.nullcontext():
                cleared = clear(repo, label=label, cwds=now)
            if cleared.skipped != BUSY:
                del waiting[repo]
                yield cleared


def present(repo: Path, entry: Entry) -> bool:
    """Whether ``entry`` is still there as listed: a git that ended meanwhile took its files with
    it, and a new file of that name is someone else's."""
    try:
        st = (repo / entry.path).lstat()
    except FileNotFoundError:
        return False
    return not entry.inode or st.st_ino == entry.inode


def _remove(repo: Path, entry: Entry) -> bool:
    """Remove ``entry`` if it is still the one listed (a new file of that name is someone's)."""
    path = repo / entry.path
    if not present(repo, entry):
        return False
    try:
        if entry.is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    return True


def _entry(rel: str, item: os.DirEntry[str]) -> Entry:
    st = item.stat(follow_symlinks=False)
    return Entry(rel, False, st.st_mtime, st.st_ino)


def _files(repo: Path, sub: str) -> list[Entry]:
    prefix = f"{sub}/" if sub else ""
    found = []
    with contextlib.suppress(OSError), os.scandir(repo / sub if sub else repo) as it:
        for item in it:
            with contextlib.suppress(OSError):
                if item.is_file(follow_symlinks=False) and kind_of(prefix + item.name, False) is not None:
                    found.append(_entry(prefix + item.name, item))
    return found


def _tree(repo: Path, sub: str) -> list[Entry]:
    """Lock files anywhere under ``sub``; every other file is a ref and only costs a name check."""
    found = []
    for dirpath, _dirs, files in os.walk(repo / sub):
        rel = os.path.relpath(dirpath, repo).replace(os.sep, "/")
        for name in files:
            if name.endswith(".lock"):
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    found.append(Entry(f"{rel}/{name}", False, st.st_mtime, st.st_ino))
    return found


def _newest(path: Path) -> float:
    newest = 0.0
    for dirpath, _dirs, files in os.walk(path):
        for name in (".", *files):
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest
