"""How many git processes serve requests at once: on the node, and for one client.

Every fetch and push runs a git process, which costs memory for as long as its client
keeps the request open, so an anonymous client trickling bytes into hundreds of requests
could otherwise hold hundreds of processes. A request waits up to ``wait`` seconds for a
slot (a burst of CI clones queues rather than fails) and is then refused with ``Busy``,
which git users see in git's words and HTTP clients as 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from bulwark.errors import Unavailable


class Busy(Unavailable):
    """No git process slot became free in time."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    total: int  # git processes on the node
    per_client: int  # git processes for one client (its login, or its address if anonymous)
    wait: float  # seconds a request may wait for a slot


def admits(running: int, client_running: int, limits: Limits) -> bool:
    return running < limits.total and client_running < limits.per_client


class Slot:
    """One git process's place; ``release`` is safe to call more than once."""

    def __init__(self, slots: GitSlots, client: str) -> None:
        self._slots = slots
        self.client = client
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self.client)


class GitSlots:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.running = 0
        self.by_client: Counter[str] = Counter()
        self.refused = 0  # requests refused for want of a slot, for the metrics
        self._freed = asyncio.Condition()

    async def acquire(self, client: str) -> Slot:
        def free() -> bool:
            return admits(self.running, self.by_client[client], self.limits)

        async with self._freed:
            try:
                if not free():
                    await asyncio.wait_for(self._freed.wait_for(free), self.limits.wait)
            except TimeoutError:
                self.refused += 1
                mine = self.by_client[client] >= self.limits.per_client
                raise Busy(
                    f"you already have {self.limits.per_client} git requests running on this server; "
                    "wait for them to finish, then try again"
                    if mine else
                    f"the server is busy: all {self.limits.total} git processes are serving other requests; "
                    "try again in a few seconds",
                    retry_after=5,
                ) from None
            self.running += 1
            self.by_client[client] += 1
        return Slot(self, client)

    def _release(self, client: str) -> None:
        self.running -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]
        # Wake the waiters from a task: release is called from synchronous clean-up too.
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._freed:
            self._freed.notify_all()
