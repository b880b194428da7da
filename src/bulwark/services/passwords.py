"""Password checks on a small pool of threads of their own.

argon2 is slow and memory-hungry on purpose (19 MiB for about 30 ms per check). Run on the
threads that serve requests, a burst of wrong passwords took all of them, so ``/status``,
token requests and git traffic waited behind it, and memory grew with every thread. Here at
most ``threads`` checks run at once and at most ``waiting`` more wait for a thread; beyond
that a sign-in is refused at once (503) rather than queued.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from bulwark.errors import Overloaded
from bulwark.security import PasswordHasher

# Checks running at once: bounds argon2's memory at threads x 19 MiB.
THREADS = 2
# Checks waiting for a thread; a caller waiting on the synchronous ``verify`` holds a request
# thread meanwhile, so this also bounds the request threads that password sign-ins can hold.
WAITING = 8


class PasswordChecks:
    def __init__(self, hasher: PasswordHasher, *, threads: int = THREADS, waiting: int = WAITING) -> None:
        self.hasher = hasher
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bulwark-password")
        self._slots = threading.BoundedSemaphore(threads + waiting)

    def submit(self, stored_hash: str | None, password: str) -> Future[bool]:
        """Check ``password`` against ``stored_hash`` (None: against a dummy, always false)."""
        if not self._slots.acquire(blocking=False):
            raise Overloaded(
                "too many password sign-ins at once; try again in a moment, or use a token", retry_after=1
            )
        try:
            future = self._pool.submit(self.hasher.verify_or_dummy, stored_hash, password)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """``submit`` and wait, for callers already on a worker thread."""
        return self.submit(stored_hash, password).result()
