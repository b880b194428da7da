"""One replication at a time on a data directory, and none across a promotion.

The serving node replicates in its HA loop, while ``bulwark repl promote`` runs in another
process on the same data directory. Stopping replication is a flag in the store that a cycle
reads as it begins, so a cycle already under way (a fetch from the old primary, a batch being
applied) would go on after the flag is lowered and could write the old primary's refs onto a
node that now takes writes, over pushes it acknowledged. So every cycle holds an exclusive
``flock`` on a file in the data directory, and a promotion lowers the flag, then takes the same
lock and keeps it until it is done. A killed process's lock goes with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bulwark.errors import Unavailable

GATE_FILE = "ha-replication.lock"


class ReplicationGate:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / GATE_FILE

    @contextlib.contextmanager
    def cycle(self) -> Iterator[bool]:
        """Held for one replication cycle; yields False (and holds nothing) if another process has it."""
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def exclusive(self, timeout: float, *, waiting: Callable[[], None] | None = None,
                  poll: float = 0.1) -> Iterator[None]:
        """Held while no replication may run; waits up to ``timeout`` seconds for a running cycle.

        ``waiting`` is called once, if the lock is not free at once (to tell the user why).
        """
        fd = self._open()
        try:
            deadline = time.monotonic() + timeout
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Unavailable(
                            f"the node's replication did not stop within {timeout:.0f}s (its process holds "
                            f"{self.path}); stop the node, then promote it again"
                        ) from None
                    if waiting is not None and not told:
                        waiting()
                        told = True
                    time.sleep(poll)
            yield
        finally:
            os.close(fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
