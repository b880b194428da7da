"""The git runner: the one place that runs ``git`` against repositories on disk.

Repositories live under ``<root>/<id[:2]>/<id>.git`` where ``id`` is the
repository's immutable storage id, so renames and transfers never move data.
Reads used by the API are synchronous (the HTTP layer calls them from a worker
thread); the smart-HTTP data path spawns asyncio subprocesses and streams them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bulwark.errors import GitError, NotFound
from bulwark.git import leftovers
from bulwark.git.adverts import AdvertisementCache
from bulwark.git.model import (
    _LOG_FORMAT,
    _OID,
    Commit,
    FsckResult,
    Ref,
    TreeEntry,
    _parse_commit,
    _parse_ls_tree,
    checksum_of,
    read_ref_files,
    steady_fsck,
)

log = logging.getLogger("bulwark.git")

ZERO_OID = "0" * 40
# How long a git process asked to stop (SIGTERM) has to remove its lock files before SIGKILL.
TERM_GRACE = 5.0
# How often a git that may be stopped early asks whether to go on (GitRunner.run's stop).
STOP_POLL = 0.5


# Repository-level settings every Bulwark repository has.
REPOSITORY_CONFIG = (
    ("receive.fsckObjects", "true"),
    ("transfer.fsckObjects", "true"),
    ("receive.denyDeleteCurrent", "true"),
    ("uploadpack.allowFilter", "true"),
    ("uploadpack.allowAnySHA1InWant", "true"),
    ("core.logAllRefUpdates", "true"),
)
# The suffix of a repository being created (``<id>.git.creating-<pid>-<thread>``) or removed.
CREATING = ".creating-"
DELETING = ".deleting"


class GitRunner:
    """Runs git in repositories named by storage id under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        git: str = "git",
        config: Mapping[str, str] | None = None,
        advert_cache_bytes: int = 64 * 1024**2,
    ) -> None:
        self.root = root
        self.git = git
        # Answers to fetches that find nothing new, served without starting git (0: off).
        self.adverts = AdvertisementCache(advert_cache_bytes)
        # Ref checksums by storage id, with a hash of the fingerprint they were computed at.
        self._checksums: dict[str, tuple[int, str]] = {}
        self._checksums_lock = threading.Lock()
        # Settings passed with -c to every git process, e.g. a shared core.hooksPath.
        self.config = dict(config or {})
        self.env = {
            **os.environ,
            # Only the repository's own config counts: nothing from the host's user or system.
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
        }
        # One pass at a time over a repository's leftovers, so two never race on one lock file.
        self.clearing = threading.Lock()
        self._template_lock = threading.Lock()
        self._template_files: list[tuple[str, bytes | None, int]] | None = None

    # -- layout ----------------------------------------------------------------------

    def path(self, storage_id: str) -> Path:
        if not storage_id.isalnum():
            raise ValueError(f"bad storage id {storage_id!r}")
        return self.root / storage_id[:2] / f"{storage_id}.git"

    def exists(self, storage_id: str) -> bool:
        return (self.path(storage_id) / "HEAD").is_file()

    def init_bare(self, storage_id: str, default_branch: str) -> Path:
        """A new empty repository, made whole or not at all: its files are written under a
        temporary name and renamed into place, so a crash never leaves half a repository (the
        start-up sweep removes the temporary one). The files are those ``git init`` and
        :data:`REPOSITORY_CONFIG` made once for this runner, so a create starts no git process."""
        path = self.path(storage_id)
        if path.exists():
            return self._init_with_git(path, default_branch)  # git completes what is there
        path.parent.mkdir(parents=True, exist_ok=True)
        building = path.with_name(f"{path.name}{CREATING}{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(building, ignore_errors=True)
        try:
            for relative, content, mode in self._template():
                target = building / relative
                if content is None:
                    target.mkdir(mode=mode, parents=True, exist_ok=True)
                else:
                    target.write_bytes(content)
                    os.chmod(target, mode)
            (building / "HEAD").write_text(f"ref: refs/heads/{default_branch}\n")
            os.replace(building, path)
        except OSError as exc:
            shutil.rmtree(building, ignore_errors=True)
            if self.exists(storage_id):
                return path  # another create of the same repository got there first
            raise GitError(f"cannot create the repository {storage_id}: {exc}") from exc
        return path

    def _init_with_git(self, path: Path, default_branch: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run(["init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path)])
        for key, value in REPOSITORY_CONFIG:
            self.run(["config", key, value], cwd=path)
        return path

    def _template(self) -> list[tuple[str, bytes | None, int]]:
        """The files of a new repository as this git makes them, less those nothing on a server
        reads: (path, content or None for a directory, mode), directories first."""
        with self._template_lock:
            if self._template_files is None:
                with tempfile.TemporaryDirectory(prefix="bulwark-init-") as scratch:
                    made = self._init_with_git(Path(scratch) / "template.git", "main")
                    files: list[tuple[str, bytes | None, int]] = []
                    for folder, dirs, names in os.walk(made):
                        base = Path(folder)
                        for name in sorted(dirs):
                            files.append((str((base / name).relative_to(made)), None, 0o755))
                        for name in sorted(names):
                            item = base / name
                            if name.endswith(".sample") or name == "description":
                                continue  # hook examples and gitweb's text: never read on a server
                            files.append((str(item.relative_to(made)), item.read_bytes(),
                                          item.stat().st_mode & 0o777))
                self._template_files = files
            return self._template_files

    def remove(self, storage_id: str) -> None:
        path = self.path(storage_id)
        self.refs_changed(storage_id)
        with self._checksums_lock:
            self._checksums.pop(storage_id, None)
        if path.exists():
            # Rename first so a crash half-way never leaves a half-deleted repository in place.
            doomed = path.with_name(path.name + DELETING)
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    # -- running ---------------------------------------------------------------------

    def command(self, args: Sequence[str], extra_config: Mapping[str, str] | None = None) -> list[str]:
        cmd = [self.git]
        for key, value in {**self.config, **(extra_config or {})}.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd + list(args)

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 300,
        secret_config: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run git; ``secret_config`` is passed through the environment, never on the
        command line, so credentials do not show in the process list.

        ``stop`` is asked twice a second while git runs; when it says yes, git is stopped
        (SIGTERM, so it removes its lock files) and :class:`GitError` says so.
        """
        env = self.env
        if secret_config or extra_env:
            env = {**env, **config_env(secret_config or {}), **(extra_env or {})}
        if cwd is None and len(args) > 1 and args[0] == "--git-dir" and os.path.isdir(args[1]):
            # Inside the repository, so that a scan of processes' working directories sees who
            # works in it (git/leftovers.py): every git process on a repository runs there.
            cwd = Path(args[1]).absolute()
            args = ["--git-dir", str(cwd), *args[2:]]
        with subprocess.Popen(
            self.command(args),
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        ) as popen:
            try:
                stdout, stderr = _communicate(popen, input, timeout, stop)
            except BaseException:
                _stop(popen)
                raise
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
        if check and proc.returncode != 0:
            raise GitError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc

    def _in(self, storage_id: str, args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        path = self.path(storage_id)
        if not path.is_dir():
            raise NotFound("repository data is missing on this node")
        return self.run(["--git-dir", str(path), *args], **kwargs)  # type: ignore[arg-type]

    async def spawn(
        self,
        storage_id: str,
        service: str,
        *,
        advertise: bool,
        protocol: str | None = None,
        extra_config: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        stateful: bool = False,
    ) -> asyncio.subprocess.Process:
        """Start ``git upload-pack|receive-pack --stateless-rpc`` with pipes on all ends; or, with
        ``stateful``, ``git upload-pack|upload-archive`` speaking to one client for the whole
        conversation (as over SSH)."""
        if stateful:
            if service not in ("upload-pack", "upload-archive") or advertise:
                raise ValueError(service)
            args = [service]
        elif service not in ("upload-pack", "receive-pack"):
            raise ValueError(service)
        else:
            args = [service, "--stateless-rpc"]
        if advertise:
            args.append("--advertise-refs")
        args.append(str(self.path(storage_id)))
        if service == "receive-pack" and not advertise:
            await asyncio.to_thread(self.clear_stale_locks, storage_id)
        env = dict(self.env)
        if protocol:
            env["GIT_PROTOCOL"] = protocol
        env.update(extra_env or {})
        return await asyncio.create_subprocess_exec(
            *self.command(args, extra_config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )

    async def start(
        self,
        storage_id: str,
        args: Sequence[str],
        *,
        extra_config: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        stdin: int = asyncio.subprocess.PIPE,
        stdout: int = asyncio.subprocess.PIPE,
        stderr: int = asyncio.subprocess.PIPE,
    ) -> asyncio.subprocess.Process:
        """Start ``git args`` in a repository, its pipes as asked: for the cluster's push path,
        whose processes are fed and read as they run (cluster/push_follower.py)."""
        return await asyncio.create_subprocess_exec(
            *self.command(args, extra_config), cwd=self.path(storage_id), stdin=stdin, stdout=stdout,
            stderr=stderr, env={**self.env, **(extra_env or {})},
        )

    def clear_stale_locks(self, storage_id: str) -> None:
        """Before a push: remove ref lock files a killed git left (older than the grace, with
        no live process in the repository), so a crash never makes a branch unwritable."""
        with self.clearing:
            cleared = leftovers.clear(self.path(storage_id), label=storage_id, locks_only=True)
        sentence = cleared.sentence()
        if sentence:
            log.warning("%s", sentence)

    # -- reads -----------------------------------------------------------------------

    def refs(self, storage_id: str, *patterns: str) -> list[Ref]:
        out = self._in(
            storage_id, ["for-each-ref", "--format=%(objectname) %(objecttype) %(refname)", *patterns]
        ).stdout.decode()
        refs = []
        for line in out.splitlines():
            oid, type_, name = line.split(" ", 2)
            refs.append(Ref(name=name, oid=oid, type=type_))
        return refs

    def missing_objects(self, storage_id: str, oids: Sequence[str]) -> list[str]:
        """Which of ``oids`` this copy does not have: the tips of its refs are known from their
        files, and only the rest are asked of git (a fetch wants tips nearly always)."""
        read = read_ref_files(self.path(storage_id)) if oids else None
        tips = set(read[1].values()) if read is not None else set()
        unknown = [oid for oid in dict.fromkeys(oids) if oid not in tips]
        if not unknown:
            return []
        proc = self._in(storage_id, ["cat-file", "--batch-check=%(objectname)"],
                        input="".join(f"{oid}\n" for oid in unknown).encode(), check=False)
        if proc.returncode != 0:
            return []  # not a question git could answer here; the fetch itself will say
        return [line.split(" ", 1)[0] for line in proc.stdout.decode().splitlines() if line.endswith(" missing")]

    def ref_checksum(self, storage_id: str) -> str:
        """``checksum_of`` this copy's refs, kept while their files are unchanged (the fingerprint
        kept advertisements use), so comparing every repository's checksums starts git only for
        the repositories whose refs moved since the last comparison."""
        path = str(self.path(storage_id))
        before = self.adverts.fingerprint(path)
        key = None if before is None else hash(before)
        with self._checksums_lock:
            kept = self._checksums.get(storage_id)
        if kept is not None and key is not None and kept[0] == key:
            return kept[1]
        value = checksum_of(GitRunner.refs(self, storage_id))
        if key is not None and self.adverts.fingerprint(path) == before:  # no write while git read them
            with self._checksums_lock:
                self._checksums[storage_id] = (key, value)
        return value

    def resolve(self, storage_id: str, rev: str) -> str | None:
        if rev.startswith("-"):
            return None
        args = ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"]
        proc = self._in(storage_id, args, check=False)
        return proc.stdout.decode().strip() or None if proc.returncode == 0 else None

    def head_branch(self, storage_id: str) -> str | None:
        proc = self._in(storage_id, ["symbolic-ref", "--quiet", "--short", "HEAD"], check=False)
        return proc.stdout.decode().strip() or None if proc.returncode == 0 else None

    # This node's own copy, also where ``refs`` and ``head_branch`` are routed elsewhere (a
    # cluster's ClusterGit answers them from an up-to-date replica, which may be another node's).

    def local_refs(self, storage_id: str, *patterns: str) -> list[Ref]:
        return GitRunner.refs(self, storage_id, *patterns)

    def local_head(self, storage_id: str) -> str | None:
        return GitRunner.head_branch(self, storage_id) if GitRunner.exists(self, storage_id) else None

    def set_head(self, storage_id: str, branch: str) -> None:
        self._in(storage_id, ["symbolic-ref", "HEAD", f"refs/heads/{branch}"])
        self.refs_changed(storage_id)

    def refs_changed(self, storage_id: str) -> None:
        """Kept ref advertisements of ``storage_id`` are stale: this process changed its refs."""
        self.adverts.invalidate(str(self.path(storage_id)))

    def log(
        self, storage_id: str, rev: str, *, limit: int, skip: int = 0, path: str | None = None
    ) -> list[Commit]:
        args = ["log", f"--format={_LOG_FORMAT}", f"--max-count={limit}", f"--skip={skip}", "--end-of-options", rev]
        if path:
            args += ["--", path]
        proc = self._in(storage_id, args, check=False)
        if proc.returncode != 0:
            return []
        return [_parse_commit(rec) for rec in proc.stdout.decode(errors="replace").split("\x1e") if rec.strip()]

    def pushed_commits(self, storage_id: str, old: str, new: str, ref: str, *, limit: int) -> list[Commit]:
        """The commits a push of ``ref`` from ``old`` to ``new`` brought, oldest first, at most
        ``limit`` (the newest). For a new ref: those on no other branch or tag."""
        if new == ZERO_OID:
            return []
        if old != ZERO_OID:
            span = ["--end-of-options", new, f"^{old}"]
        else:
            # --not toggles: every other branch and tag negated, then ``new`` itself.
            others = [f"--exclude={ref}", "--glob=refs/heads/*", f"--exclude={ref}", "--glob=refs/tags/*"]
            span = ["--not", *others, "--not", "--end-of-options", new]
        proc = self._in(storage_id, ["log", f"--format={_LOG_FORMAT}", f"--max-count={limit}", *span], check=False)
        if proc.returncode != 0:
            return []
        commits = [_parse_commit(rec) for rec in proc.stdout.decode(errors="replace").split("\x1e") if rec.strip()]
        return commits[::-1]

    def is_ancestor(self, storage_id: str, ancestor: str, descendant: str) -> bool:
        proc = self._in(storage_id, ["merge-base", "--is-ancestor", "--end-of-options", ancestor, descendant],
                        check=False)
        return proc.returncode == 0

    def commit(self, storage_id: str, rev: str) -> Commit | None:
        oid = self.resolve(storage_id, rev)
        if oid is None:
            return None
        commits = self.log(storage_id, oid, limit=1)
        return commits[0] if commits else None

    def object_type(self, storage_id: str, spec: str) -> str | None:
        proc = self._in(storage_id, ["cat-file", "-t", spec], check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def tree_entry(self, storage_id: str, rev: str, path: str) -> TreeEntry | None:
        """The entry at ``path`` in the tree of commit ``rev``; the root tree for ``""``."""
        # A full object id needs no resolving first (a page's commit, already resolved): one process fewer.
        oid = rev if _OID.fullmatch(rev) else self.resolve(storage_id, rev)
        if oid is None:
            return None
        if path == "":
            proc = self._in(storage_id, ["rev-parse", "--verify", "--quiet", f"{oid}^{{tree}}"], check=False)
            tree = proc.stdout.decode().strip()
            if proc.returncode != 0 or not tree:
                return None
            return TreeEntry(name="", path="", type="tree", mode="040000", sha=tree, size=0)
        proc = self._in(storage_id, ["ls-tree", "-l", "-z", oid, "--", path], check=False)
        for record in proc.stdout.decode(errors="replace").split("\0"):
            if record:
                entry = _parse_ls_tree(record)
                if entry.path == path:
                    return entry
        return None

    def list_tree(self, storage_id: str, tree_sha: str, base: str) -> list[TreeEntry]:
        proc = self._in(storage_id, ["ls-tree", "-l", "-z", tree_sha])
        entries = []
        for record in proc.stdout.decode(errors="replace").split("\0"):
            if record:
                entry = _parse_ls_tree(record)
                full = f"{base}/{entry.path}" if base else entry.path
                entries.append(TreeEntry(entry.path, full, entry.type, entry.mode, entry.sha, entry.size))
        return entries

    def read_blob(self, storage_id: str, sha: str) -> bytes:
        return self._in(storage_id, ["cat-file", "blob", sha]).stdout

    def update_ref(self, storage_id: str, ref: str, new: str, old: str | None = None) -> None:
        """Set ``ref`` to ``new`` if it still points at ``old`` (compare-and-set)."""
        args = ["update-ref", "--no-deref", ref, new]
        if old is not None:
            args.append(old)
        try:
            self._in(storage_id, args)
        finally:
            self.refs_changed(storage_id)

    def delete_ref(self, storage_id: str, ref: str, old: str | None = None) -> None:
        args = ["update-ref", "--no-deref", "-d", ref]
        if old is not None:
            args.append(old)
        try:
            self._in(storage_id, args)
        finally:
            self.refs_changed(storage_id)

    def fsck(self, storage_id: str) -> FsckResult:
        """``git fsck --strict``, on a repository that may be taking pushes meanwhile.

        git fsck lists the objects before it reads the refs, so a push that lands in between
        looks like a missing commit: a failure while the refs moved is checked again.
        """
        if not self.path(storage_id).is_dir():
            return FsckResult(storage_id, False, "repository directory is missing")

        def check(*tips: str) -> FsckResult:
            args = ["fsck", "--no-progress", "--strict", *tips]
            proc = self._in(storage_id, args, check=False, timeout=3600)
            output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
            return FsckResult(storage_id, proc.returncode == 0, output)

        def heads() -> tuple[str, ...] | None:
            with contextlib.suppress(GitError, NotFound):
                return tuple(sorted({ref.oid for ref in self.refs(storage_id)}))
            return None

        return steady_fsck(check, heads, lambda tips: check(*tips))

    def disk_usage(self, storage_id: str) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.path(storage_id)):
            for name in files:
                with contextlib.suppress(OSError):  # a file removed by a concurrent gc
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total


def _communicate(popen: subprocess.Popen[bytes], input: bytes | None, timeout: float,
                 stop: Callable[[], bool] | None) -> tuple[bytes, bytes]:
    if stop is None:
        return popen.communicate(input, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            # communicate() may be called again after a timeout; only the first call sends input.
            return popen.communicate(input, timeout=max(0.0, min(STOP_POLL, left)))
        except subprocess.TimeoutExpired:
            if left <= STOP_POLL:
                raise
            if stop():
                raise GitError("git was stopped: the work it was doing is no longer wanted") from None
        input = None


def _stop(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM first: git then removes its lock files and temporary objects. SIGKILL after the grace."""
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        popen.terminate()
    try:
        popen.wait(TERM_GRACE)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
    # Not waiting for the pipes to close: a grandchild git left running may hold them open.


def config_env(config: Mapping[str, str]) -> dict[str, str]:
    """Git settings as GIT_CONFIG_* variables (git >= 2.31)."""
    env = {"GIT_CONFIG_COUNT": str(len(config))}
    for i, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


