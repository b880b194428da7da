"""The ref barrier: a backup's moment of "no ref moves now", on a standalone or HA node.

Every git process of the node runs with a ``reference-transaction`` hook that, when a
ref update is about to commit (``prepared``), takes a shared lock on one file and lets go
at once. A backup holds that lock exclusively while it reads the metadata and every
repository's refs, so ref updates that start meanwhile wait (for as long as the reading
takes: milliseconds per repository) instead of failing, and what the backup reads is one
point in time. Updates that passed the hook before the backup began may land during it;
each touches one repository and is either in the snapshot or not, which is still a
consistent cut.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from bulwark.errors import Unavailable

BARRIER = "ref-barrier"
HOOKS = "hooks"

_HOOK = """#!/bin/sh
# Bulwark: ref updates wait here while a backup reads every repository's refs (generated; do not edit).
[ "$1" = prepared ] || exec cat >/dev/null
exec flock -s -w 300 '{barrier}' cat >/dev/null
"""


def hooks_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / HOOKS


def install(data_dir: Path) -> Path:
    """Write the hook for this data dir; return the folder to give git as ``core.hooksPath``."""
    folder = hooks_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    barrier = Path(data_dir).resolve() / BARRIER
    barrier.touch(exist_ok=True)
    path = folder / "reference-transaction"
    text = _HOOK.format(barrier=str(barrier).replace("'", "'\\''"))
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, path)
    return folder


@contextlib.contextmanager
def held(data_dir: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold the barrier: no ref update of this node commits until the block ends."""
    path = Path(data_dir).resolve() / BARRIER
    path.touch(exist_ok=True)
    with open(path, "rb") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable("another backup is reading this node's refs; try again") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
