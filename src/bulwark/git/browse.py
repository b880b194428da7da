"""Reads for the repository browser: blob heads, diffs, blame, readmes, archives and ref lists.

Everything here runs git through :class:`GitRunner` and is bounded: output that can be huge
(blobs, patches, blame) is streamed and git is stopped once a limit is reached, so one large
file or commit never makes the server hold all of it. Revisions from users are resolved with
:meth:`GitRunner.resolve` first, so only object ids reach the commands that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO

from bulwark.errors import GitError, InvalidInput, NotFound
from bulwark.git.model import _LOG_FORMAT, Commit, TreeEntry, _parse_commit, _parse_ls_tree
from bulwark.git.runner import GitRunner

# git's own test for binary content: a NUL byte among the first 8000 bytes.
BINARY_PROBE = 8000
ARCHIVE_CHUNK = 64 * 1024
ARCHIVE_FORMATS = ("tar.gz", "zip")
# Longer paths or blame lines than this are not something a page shows whole.
_MAX_TOKEN = 1024 * 1024
_MAX_LINE = 64 * 1024
_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_STATUS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type-changed"}
_MARKDOWN = (".md", ".markdown", ".mdown", ".mkdn", ".mkd", ".mdwn")
_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class BlobHead:
    """The start of a blob, never the whole of a huge one."""

    sha: str
    size: int
    data: bytes
    truncated: bool
    binary: bool


@dataclass(frozen=True)
class DiffLine:
    kind: str  # context, add, del or hunk (the ``@@`` line itself)
    old: int | None
    new: int | None
    text: str


@dataclass(frozen=True)
class FileDiff:
    path: str
    old_path: str | None  # for renames and copies
    status: str  # added, modified, deleted, renamed, copied or type-changed
    additions: int
    deletions: int
    binary: bool
    lines: tuple[DiffLine, ...]
    truncated: bool


@dataclass(frozen=True)
class Diff:
    files: tuple[FileDiff, ...]
    truncated: bool  # files or lines were left out


@dataclass(frozen=True)
class BlameLine:
    number: int
    sha: str
    author: str
    when: datetime
    summary: str
    text: str
    first_of_group: bool


@dataclass(frozen=True)
class _Git:
    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    errors: IO[bytes]

    def finish(self, command: str) -> None:
        """Wait for git once its output is read to the end; a failure is a :class:`GitError`."""
        if self.proc.wait() != 0:
            self.errors.seek(0)
            raise GitError(f"git {command} failed: {self.errors.read(4096).decode(errors='replace').strip()}")


@contextlib.contextmanager
def _stream(runner: GitRunner, storage_id: str, args: Sequence[str], input: bytes | None = None) -> Iterator[_Git]:
    """git with its stdout read as it comes. stderr goes to a file, so it can never fill a pipe
    and stall git while stdout is read. Leaving the block early kills git: only reads run here,
    so it holds no locks."""
    path = runner.path(storage_id)
    if not path.is_dir():
        raise NotFound("repository data is missing on this node")
    with tempfile.TemporaryFile() as errors, subprocess.Popen(
        runner.command(["--git-dir", str(path), *args]), cwd=path, env=runner.env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
    ) as proc:
        assert proc.stdout is not None
        try:
            if input is not None:
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(input)
                proc.stdin.close()
            yield _Git(proc, proc.stdout, errors)
        finally:
            if proc.poll() is None:
                proc.kill()


def _line(out: IO[bytes], cap: int) -> bytes:
    """The next line, at most ``cap`` bytes of it (the rest is skipped); b"" at the end."""
    line = out.readline(cap)
    if len(line) == cap and not line.endswith(b"\n"):
        while (more := out.readline(cap)) and not more.endswith(b"\n"):
            pass
        line += b"\n"
    return line


def _tokens(out: IO[bytes]) -> Iterator[bytes]:
    """NUL-terminated records (``-z`` output), read in chunks."""
    buffer = b""
    while chunk := out.read1(ARCHIVE_CHUNK):  # type: ignore[attr-defined]
        buffer += chunk
        *done, buffer = buffer.split(b"\0")
        yield from done
        if len(buffer) > _MAX_TOKEN:
            raise GitError("git printed a path longer than any this server reads")


def _resolve(runner: GitRunner, storage_id: str, rev: str) -> str:
    oid = None if rev.startswith("-") else runner.resolve(storage_id, rev)  # never an option to git
    if oid is None:
        raise NotFound(f"no commit {rev!r}")
    return oid


def read_blob_head(runner: GitRunner, storage_id: str, sha: str, limit: int = 512 * 1024) -> BlobHead:
    """The first ``limit`` bytes of blob ``sha`` and its full size; git is stopped after that."""
    if not _OID.fullmatch(sha):
        raise NotFound(f"no blob {sha!r}")
    # One process: --batch prints "<sha> <type> <size>" and then the content.
    with _stream(runner, storage_id, ["cat-file", "--batch"], input=f"{sha}\n".encode()) as stream:
        header = stream.out.readline(256).split()
        if len(header) != 3 or header[1] != b"blob":
            raise NotFound(f"no blob {sha}")
        size = int(header[2])
        data = stream.out.read(min(size, limit))
    return BlobHead(sha=sha, size=size, data=data, truncated=len(data) < size, binary=b"\0" in data[:BINARY_PROBE])


@dataclass
class _File:
    path: str
    old_path: str | None
    status: str
    additions: int = 0
    deletions: int = 0
    binary: bool = False
    lines: list[DiffLine] = field(default_factory=list)
    changed: int = 0  # add and del lines read
    cut: bool = False

    def freeze(self) -> FileDiff:
        return FileDiff(self.path, self.old_path, self.status, self.additions, self.deletions, self.binary,
                        tuple(self.lines), self.cut)


def commit_diff(runner: GitRunner, storage_id: str, sha: str, *, max_files: int = 300, max_lines: int = 10_000,
                max_bytes: int = 2 * 1024 * 1024, parents: Sequence[str] | None = None) -> Diff:
    """What commit ``sha`` changed against its first parent (a root commit: against nothing).
    ``parents``: the commit's, when the caller has read them already (``sha`` is then its full id)."""
    if parents is None or not _OID.fullmatch(sha):
        oid = _resolve(runner, storage_id, sha)
        parents = [p.decode() for p in
                   runner._in(storage_id, ["rev-list", "--parents", "--max-count=1", oid]).stdout.split()[1:]]
    else:
        oid = sha
    return _diff(runner, storage_id, parents[0] if parents else None, oid, max_files, max_lines, max_bytes)


def compare_diff(runner: GitRunner, storage_id: str, base: str, head: str, *, max_files: int = 300,
                 max_lines: int = 10_000, max_bytes: int = 2 * 1024 * 1024) -> Diff:
    """``base...head``: what ``head`` changed since it left ``base`` (their merge base)."""
    tip = _resolve(runner, storage_id, head)
    start = _merge_base(runner, storage_id, _resolve(runner, storage_id, base), tip)
    return _diff(runner, storage_id, start, tip, max_files, max_lines, max_bytes)


def _merge_base(runner: GitRunner, storage_id: str, base: str, head: str) -> str:
    proc = runner._in(storage_id, ["merge-base", "--end-of-options", base, head], check=False)
    if proc.returncode == 1:
        raise NotFound("the two revisions have no history in common")
    if proc.returncode != 0:
        raise GitError(f"git merge-base failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def compare_commits(runner: GitRunner, storage_id: str, base: str, head: str,
                    limit: int = 250) -> tuple[list[Commit], int]:
    """The commits on ``head`` that ``base`` lacks, newest first (at most ``limit``), and how many there are."""
    span = f"{_resolve(runner, storage_id, base)}..{_resolve(runner, storage_id, head)}"
    count = int(runner._in(storage_id, ["rev-list", "--count", "--end-of-options", span]).stdout)
    proc = runner._in(storage_id, ["log", f"--format={_LOG_FORMAT}", f"--max-count={limit}", "--end-of-options", span])
    records = proc.stdout.decode(errors="replace").split("\x1e")
    return [_parse_commit(record) for record in records if record.strip()], count


def _diff(runner: GitRunner, storage_id: str, old: str | None, new: str, max_files: int, max_lines: int,
          max_bytes: int) -> Diff:
    """``old`` to ``new`` (object ids; ``old`` None: from nothing), read twice: the list of files with
    their counts, then as much of the patch as the limits allow."""
    common = ["diff-tree", "-r", "-M", "--no-color", "--no-ext-diff", "--no-textconv"]
    trees = ["--end-of-options", old, new] if old else ["--root", "--no-commit-id", "--end-of-options", new]
    with _stream(runner, storage_id, [*common, "-z", "--raw", "--numstat", *trees]) as stream:
        files, more = _read_listing(_tokens(stream.out), max_files)
        if not more:
            stream.finish("diff-tree")
    cut = False
    if any(f.additions or f.deletions or f.status == "type-changed" for f in files):
        with _stream(runner, storage_id, [*common, "-p", *trees]) as stream:
            if not _read_patch(stream.out, files, max_lines, max_bytes):
                stream.finish("diff-tree")
    for f in files:
        # Lines were left out where fewer changed lines were read than numstat counted.
        f.cut = not f.binary and (f.changed < f.additions + f.deletions or (f.cut and f.status == "type-changed"))
        cut = cut or f.cut
    return Diff(tuple(f.freeze() for f in files), more or cut)


def _read_listing(tokens: Iterator[bytes], max_files: int) -> tuple[list[_File], bool]:
    """The files of ``--raw --numstat -z`` output (all raw records come first), and whether there were more."""
    files: list[_File] = []
    seen = 0
    token = next(tokens, None)
    while token is not None and token.startswith(b":"):
        letter = token.split()[-1][:1].decode()
        paths = [next(tokens).decode(errors="replace") for _ in range(2 if letter in ("R", "C") else 1)]
        if seen < max_files:
            files.append(_File(paths[-1], paths[0] if len(paths) == 2 else None, _STATUS.get(letter, "modified")))
        seen += 1
        token = next(tokens, None)
    for f in files:
        if token is None:
            raise GitError("git diff-tree printed fewer counts than files")
        added, deleted, name = token.split(b"\t", 2)
        if not name:  # a rename: the two paths follow
            next(tokens), next(tokens)
        f.binary = added == b"-"
        f.additions, f.deletions = (0, 0) if f.binary else (int(added), int(deleted))
        token = next(tokens, None)
    return files, seen > max_files


def _read_patch(out: IO[bytes], files: list[_File], max_lines: int, max_bytes: int) -> bool:
    """Read the ``-p`` output of the same diff into ``files``; True when it stopped at a limit.

    Sections come in the order of the listing; a type change (e.g. symlink to file) has two.
    """
    owners = [f for f in files for _ in range(2 if f.status == "type-changed" else 1)]
    current: _File | None = None
    old = new = old_left = new_left = 0
    budget, lines_left = max_bytes, max_lines
    while raw := out.readline(budget + 1):
        budget -= len(raw)
        if budget < 0:
            break
        tag = raw[:1]
        if current is not None and (old_left > 0 or new_left > 0) and tag in b" +-":
            if lines_left == 0:
                break
            lines_left -= 1
            text = raw[1:].rstrip(b"\n").decode(errors="replace")
            if tag == b" ":
                current.lines.append(DiffLine("context", old, new, text))
                old, new, old_left, new_left = old + 1, new + 1, old_left - 1, new_left - 1
            elif tag == b"-":
                current.lines.append(DiffLine("del", old, None, text))
                old, old_left, current.changed = old + 1, old_left - 1, current.changed + 1
            else:
                current.lines.append(DiffLine("add", None, new, text))
                new, new_left, current.changed = new + 1, new_left - 1, current.changed + 1
        elif raw.startswith(b"diff --git "):
            if not owners:
                return True  # past the last file listed: the rest were left out
            current, old_left, new_left = owners.pop(0), 0, 0
        elif current is not None and (hunk := _HUNK.match(raw)):
            if lines_left == 0:
                break
            lines_left -= 1
            old, old_left, new, new_left = (int(g) if g is not None else 1 for g in hunk.groups())
            current.lines.append(DiffLine("hunk", None, None, raw.rstrip(b"\n").decode(errors="replace")))
        elif current is not None and raw.startswith(b"Binary files "):
            current.binary = True
    else:
        return False
    if current is not None:
        current.cut = True
    return True


def blame(runner: GitRunner, storage_id: str, rev: str, path: str, max_lines: int = 5000) -> list[BlameLine]:
    """Who last changed each of the first ``max_lines`` lines of ``path`` at ``rev``."""
    oid = _resolve(runner, storage_id, rev)
    entry = runner.tree_entry(storage_id, oid, path)
    if entry is None or entry.type != "blob":
        raise NotFound(f"no file {path!r} at {rev!r}")
    if entry.size == 0 or max_lines < 1:
        return []  # -L 1,N fails on a file with no lines
    # git blame takes no --end-of-options; oid is an object id, and -- ends the options before the path.
    args = ["blame", "--porcelain", "-L", f"1,{max_lines}", oid, "--", path]
    commits: dict[bytes, dict[bytes, bytes]] = {}
    lines: list[BlameLine] = []
    with _stream(runner, storage_id, args) as stream:
        while header := _line(stream.out, _MAX_LINE):
            sha, _orig, final, *group = header.split()
            info = commits.setdefault(sha, {})
            while (raw := _line(stream.out, _MAX_LINE)) and not raw.startswith(b"\t"):
                key, _, value = raw.rstrip(b"\n").partition(b" ")
                info[key] = value
            lines.append(BlameLine(
                number=int(final), sha=sha.decode(), author=info.get(b"author", b"").decode(errors="replace"),
                when=_when(info.get(b"author-time", b"0"), info.get(b"author-tz", b"+0000")),
                summary=info.get(b"summary", b"").decode(errors="replace"),
                text=raw[1:].rstrip(b"\n").decode(errors="replace"), first_of_group=bool(group),
            ))
        stream.finish("blame")
    return lines


def _when(seconds: bytes, tz: bytes) -> datetime:
    offset = timedelta(hours=int(tz[1:3] or 0), minutes=int(tz[3:5] or 0))
    return datetime.fromtimestamp(int(seconds), timezone(-offset if tz.startswith(b"-") else offset))


def is_markdown(name: str) -> bool:
    return name.lower().endswith(_MARKDOWN)


def find_readme(entries: Sequence[TreeEntry]) -> TreeEntry | None:
    """The readme of a directory: markdown first, then a bare README, README.txt, any other README.*."""
    def rank(entry: TreeEntry) -> tuple[int, str]:
        suffix = entry.name[len("readme"):].lower()
        order = 0 if is_markdown(entry.name) else 1 if suffix == "" else 2 if suffix == ".txt" else 3
        return order, entry.name

    # Symlinks are blobs too, but their content is a path, not a readme.
    candidates = [e for e in entries if e.type == "blob" and e.mode != "120000"
                  and e.name.lower().startswith("readme") and e.name[len("readme"):][:1] in ("", ".")]
    return min(candidates, key=rank, default=None)


def _archive_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    parts = prefix.split("/")
    if any(part in ("", ".", "..") for part in parts) or any(ord(c) < 32 or c == "\\" for c in prefix):
        raise InvalidInput(f"bad archive prefix {prefix!r}", field="prefix")
    return prefix + "/"


async def stream_archive(runner: GitRunner, storage_id: str, oid: str, fmt: str, prefix: str) -> AsyncIterator[bytes]:
    """``git archive`` of commit ``oid`` in 64 KiB chunks, every path under ``prefix/``.

    Nothing is yielded until git has printed something, so a failure before any output raises
    :class:`GitError` on the first ``__anext__``, before a caller starts its response. git is
    killed if the consumer stops early.
    """
    if fmt not in ARCHIVE_FORMATS:
        raise InvalidInput(f"unknown archive format {fmt!r}", field="format")
    root = _archive_prefix(prefix)
    commit = await asyncio.to_thread(_resolve, runner, storage_id, oid)
    path = runner.path(storage_id)
    args = ["--git-dir", str(path), "archive", f"--format={fmt}", f"--prefix={root}", "--end-of-options", commit]
    with tempfile.TemporaryFile() as errors:
        proc = await asyncio.create_subprocess_exec(
            *runner.command(args), cwd=path, env=runner.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=errors,
        )
        assert proc.stdout is not None
        try:
            while chunk := await proc.stdout.read(ARCHIVE_CHUNK):
                yield chunk
            if await proc.wait() != 0:
                errors.seek(0)
                raise GitError(f"git archive failed: {errors.read(4096).decode(errors='replace').strip()}")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def ref_commit_dates(runner: GitRunner, storage_id: str, refs_prefix: str) -> list[tuple[str, str, datetime, str]]:
    """(name under ``refs_prefix``, commit id, committer date, subject) for every ref there, newest first.

    Annotated tags are peeled to what they point at (``%(*...)``).
    """
    prefix = refs_prefix.rstrip("/") + "/"
    if not prefix.startswith("refs/"):
        raise InvalidInput(f"bad ref prefix {refs_prefix!r}", field="refs_prefix")
    fields = ("refname", "objectname", "*objectname", "committerdate:iso-strict", "*committerdate:iso-strict",
              "creatordate:iso-strict", "subject", "*subject")
    fmt = "%00".join(f"%({name})" for name in fields)
    out = runner._in(storage_id, ["for-each-ref", "--sort=-committerdate", f"--format={fmt}", prefix]).stdout
    found = []
    for line in out.decode(errors="replace").split("\n"):
        if not line:
            continue
        name, oid, peeled, date, peeled_date, created, subject, peeled_subject = line.split("\0")
        if not (peeled_date or date or created):
            continue  # a lightweight tag of a blob or tree: nothing to date it by
        when = datetime.fromisoformat(peeled_date or date or created)
        found.append((name.removeprefix(prefix), peeled or oid, when, peeled_subject or subject))
    # Lightweight and annotated tags keep their dates in different fields; git sorts by one of them.
    found.sort(key=lambda ref: ref[2], reverse=True)
    return found


def looks_like_sha(text: str) -> bool:
    """A full or abbreviated commit id as written in a URL (at least 4 hex digits)."""
    return 4 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


async def stream_blob(runner: GitRunner, storage_id: str, sha: str) -> AsyncIterator[bytes]:
    """A blob's bytes in 64 KiB chunks, however large; git is killed if the consumer stops early."""
    if not _OID.fullmatch(sha):
        raise NotFound(f"no object {sha}")
    path = runner.path(storage_id)
    proc = await asyncio.create_subprocess_exec(
        *runner.command(["--git-dir", str(path), "cat-file", "blob", sha]), cwd=path, env=runner.env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.read(ARCHIVE_CHUNK):
            yield chunk
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def list_tree_head(runner: GitRunner, storage_id: str, tree_sha: str, base: str,
                   limit: int) -> tuple[list[TreeEntry], int]:
    """The first ``limit`` entries of a tree in git's order, and how many it has: a tree of a
    million entries is counted, never held."""
    if not _OID.fullmatch(tree_sha):
        raise NotFound(f"no tree {tree_sha}")
    entries: list[TreeEntry] = []
    total = 0
    with _stream(runner, storage_id, ["ls-tree", "-l", "-z", tree_sha]) as git:
        for record in _tokens(git.out):
            if not record:
                continue
            total += 1
            if len(entries) < limit:
                entry = _parse_ls_tree(record.decode(errors="replace"))
                full = f"{base}/{entry.path}" if base else entry.path
                entries.append(TreeEntry(entry.path, full, entry.type, entry.mode, entry.sha, entry.size))
        git.finish("ls-tree")
    return entries, total
