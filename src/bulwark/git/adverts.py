"""Ref advertisements kept in memory, so a fetch that finds nothing new starts no git process.

Most fetches find nothing new: CI polls, developers run ``git fetch`` out of habit. Such a
fetch is one ``info/refs`` request and, in protocol v2, one ``ls-refs`` command, and git's
answer to both depends only on the repository's refs and config. Those answers are kept
here, per repository and per request, and served while the repository is unchanged.

"Unchanged" is checked on every use, against a fingerprint of the files that make up
the refs: ``HEAD``, ``packed-refs``, ``config``, ``shallow`` and every directory and file
under ``refs/`` (inode, size and nanosecond times). Git replaces a ref by renaming a new
file over it, so every ref update, by whatever process, gives the file a new inode and
the fingerprint changes. Ref writes made by this process also bump a generation that is
part of the fingerprint (``invalidate``), so a push is visible to the very next fetch even
when the file system's clock has not moved on.

An answer is kept only if the fingerprint was the same before and after git produced
it: an answer read while a push was landing is served once and forgotten.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

# Files at the top of a repository whose change may change an advertisement.
_TOP_FILES = ("HEAD", "packed-refs", "config", "shallow")
_REF_DIRS = ("refs", "reftable")

Fingerprint = tuple[Hashable, ...]


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fingerprint(repo_path: str, max_entries: int) -> Fingerprint | None:
    """What the repository's refs look like on disk; ``None`` if they are too many loose files
    to be worth checking on every request (git packs them at the next maintenance)."""
    parts: list[Hashable] = []
    for name in _TOP_FILES:
        try:
            parts.append(_stat_key(os.stat(os.path.join(repo_path, name))))
        except FileNotFoundError:
            parts.append(None)
    pending = [os.path.join(repo_path, d) for d in _REF_DIRS]
    seen = 0
    while pending:
        directory = pending.pop()
        try:
            st = os.stat(directory)
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        parts.append((directory, _stat_key(st)))
        seen += len(entries)
        if seen > max_entries:
            return None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            else:
                try:
                    parts.append((entry.name, _stat_key(entry.stat(follow_symlinks=False))))
                except FileNotFoundError:  # replaced while we looked: a write is under way
                    return None
    return tuple(parts)


class AdvertisementCache:
    """Answers of git to advertisement requests, per repository path and request key.

    Bounded by total size, least recently used first out. Thread-safe: the API's worker
    threads invalidate while the event loop reads.
    """

    def __init__(self, max_bytes: int = 64 * 1024**2, *, max_entry: int = 1024**2, max_loose: int = 512) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.max_loose = max_loose
        self._entries: OrderedDict[tuple[str, Hashable], tuple[Fingerprint, bytes]] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def fingerprint(self, repo_path: str) -> Fingerprint | None:
        if not self.enabled:
            return None
        with self._lock:
            generation = self._generations.get(repo_path, 0)
        on_disk = fingerprint(repo_path, self.max_loose)
        return None if on_disk is None else (generation, *on_disk)

    def get(self, repo_path: str, key: Hashable) -> tuple[bytes | None, Fingerprint | None]:
        """The kept answer if the repository is unchanged since, else ``None`` and the current
        fingerprint to hand to ``put`` with git's fresh answer."""
        current = self.fingerprint(repo_path)
        with self._lock:
            entry = self._entries.get((repo_path, key))
            if entry is not None and current is not None and entry[0] == current:
                self._entries.move_to_end((repo_path, key))
                self._hits += 1
                return entry[1], current
            self._misses += 1
        return None, current

    def put(self, repo_path: str, key: Hashable, before: Fingerprint | None, answer: bytes) -> bool:
        """Keep ``answer`` if the repository is still as it was (``before``) when git started."""
        if before is None or len(answer) > self.max_entry or self.fingerprint(repo_path) != before:
            return False
        with self._lock:
            old = self._entries.pop((repo_path, key), None)
            if old is not None:
                self._bytes -= len(old[1])
            self._entries[(repo_path, key)] = (before, answer)
            self._bytes += len(answer)
            while self._bytes > self.max_bytes and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
        return True

    def invalidate(self, repo_path: str) -> None:
        """This process changed (or is about to change) the refs of ``repo_path``."""
        with self._lock:
            self._generations[repo_path] = self._generations.get(repo_path, 0) + 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self._bytes, self._hits, self._misses)
