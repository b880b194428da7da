"""The HTTP server's own guards, below the app: slow headers, too many connections.

Uvicorn times out a connection only between requests, so a client that sends its headers
a byte at a time holds a connection (and a file handle) for as long as it likes, and a
node accepts connections until it runs out of file handles. The protocol below closes a
connection whose request headers have not all arrived within ``header_timeout`` seconds,
and refuses connections beyond ``max_per_address`` from one address (trusted proxies excepted:
every client of a cluster comes through them). A node holding ``max_connections`` makes room for
a new one by closing the connection that has waited longest for its request headers (a slow or
idle one; never one whose request is under way), so that many addresses' slow connections
cannot keep a health check or a clone out; only when none waits is the new one refused.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bulwark.http.clients import is_trusted

log = logging.getLogger("bulwark.http")

# Connections waiting for headers from which an address counts as holding its share of a full node.
WAITING_OF_ITS_OWN = 8


class Guard:
    """What every connection of one server counts against."""

    def __init__(self, *, header_timeout: float, max_connections: int, max_per_address: int,
                 trusted: Sequence[str] = ()) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.trusted = tuple(trusted)
        self.open = 0
        self.by_address: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0
        self.evicted = 0
        # Connections waiting for request headers, oldest first, each with what closes it; and per address.
        self.waiting: dict[int, Callable[[], None]] = {}
        self.waiting_by_address: Counter[str] = Counter()

    def admit(self, address: str) -> str | None:
        """Count a new connection in; why not, if it is refused."""
        limited = not is_trusted(address, self.trusted)
        if limited and self.by_address[address] >= self.max_per_address:
            return f"{address} has {self.max_per_address} connections open already"
        if self.open >= self.max_connections:
            # An address with several connections of its own still waiting is not kept out: it is
            # refused, rather than closing someone's connection (slow clients would only close each
            # other's). A client's few (a health check just connected, a kept-alive one) do not count.
            if not self.waiting or self.waiting_by_address[address] >= WAITING_OF_ITS_OWN:
                return f"{self.open} connections are open, the most this node takes"
            oldest = next(iter(self.waiting))
            self.evicted += 1
            self.waiting[oldest]()  # which stops waiting and leaves, making room
        self.open += 1
        self.by_address[address] += 1
        return None

    def wait(self, key: int, address: str, close: Callable[[], None]) -> None:
        """A connection (``key``) waits for request headers; ``close`` closes it to make room."""
        if key not in self.waiting:
            self.waiting_by_address[address] += 1
        self.waiting[key] = close

    def stop_waiting(self, key: int, address: str) -> None:
        if self.waiting.pop(key, None) is not None:
            self.waiting_by_address[address] -= 1
            if self.waiting_by_address[address] <= 0:
                del self.waiting_by_address[address]

    def leave(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


def guarded_protocol(guard: Guard) -> type[HttpToolsProtocol]:
    """Uvicorn's httptools protocol, counting connections in ``guard`` and timing headers out."""

    class GuardedProtocol(HttpToolsProtocol):
        _address = ""
        _admitted = False
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = self.client[0] if self.client else "unknown"
            refusal = guard.admit(self._address)
            if refusal is not None:
                guard.refused += 1
                if guard.refused % 1000 == 1:  # one line per thousand, not a flood of them
                    log.warning("refusing connections: %s (%d refused so far)", refusal, guard.refused)
                transport.abort()
                return
            self._admitted = True
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._admitted:
                self._admitted = False
                guard.leave(self._address)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # the next request on a kept-alive connection gets the same time

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            self._disarm()
            # Up to a quarter more for some: connections opened together (an attack) then time
            # out over seconds, not in one turn of the event loop that would hold up everyone.
            timeout = guard.header_timeout * random.uniform(1.0, 1.25)
            self._header_timer = self.loop.call_later(timeout, self._too_slow)
            guard.wait(id(self), self._address, self._evict)

        def _disarm(self) -> None:
            guard.stop_waiting(id(self), self._address)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._disarm()
            guard.timed_out += 1
            self._close_with_408()

        def _evict(self) -> None:
            """Make room for a new connection: this one waits for headers and is the oldest to."""
            self._disarm()
            self._close_with_408()
            if self._admitted:  # counted out now, not when the loop gets to connection_lost
                self._admitted = False
                guard.leave(self._address)

        def _close_with_408(self) -> None:
            if not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

    return GuardedProtocol


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the soft limit it then has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_budget(file_limit: int, wanted: int) -> int:
    """Connections a node may hold: ``wanted``, less than the file handles left for git, the store
    and the logs (each git process takes a few handles)."""
    return max(64, min(wanted, file_limit // 2))


def stats(guard: Guard) -> dict[str, Any]:
    return {"open": guard.open, "refused": guard.refused, "timed_out": guard.timed_out, "evicted": guard.evicted}
