"""Pacing of clients that keep sending bad requests, so refusing them costs the node next to nothing.

Refusing a request is cheap, but not free: a client that sends gzip bombs, wrong passwords past
their lockout or requests past its rate limit back to back, on many connections, would have the
node spend all its time refusing it. So every address has a bucket of strikes: ``burst`` of them,
regained at ``rate`` a second. A refusal for abuse takes one: 400, 408, 413, 415 and 429, and a
403 that carries ``Retry-After`` (a sign-in lockout). An address out of strikes is paced: its
requests wait their turn, ``rate`` a second, before anything is done for them.
A request whose turn is more than ``MAX_WAIT`` away waits that long and is then refused with 429,
so that a client on hundreds of connections gets an answer on each now and then, never a fast one.
Waiting costs a connection (capped per address by the server) and no work.

Health checks, metrics, replication and node-to-node calls are not paced, and neither is a
request another node routed here: its first node paces the client.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulwark.http import clients
from bulwark.http.errors import error_response

EXEMPT = ("/status", "/metrics", "/internal/", "/manage/v1/replication/")
STRIKES = frozenset({400, 408, 413, 415, 429})
# A paced request waits at most this long for its turn; then it is refused (and its turn not taken).
MAX_WAIT = 5.0
MAX_ADDRESSES = 100_000


@dataclass(frozen=True)
class Limits:
    burst: int  # strikes an address has
    rate: float  # strikes regained a second; and requests a second an address out of strikes is served


@dataclass
class Standing:
    strikes: float
    at: float  # when ``strikes`` was counted
    next_turn: float = 0.0  # when a paced request of this address may next be served


def strikes_now(standing: Standing, now: float, limits: Limits) -> float:
    return min(float(limits.burst), standing.strikes + (now - standing.at) * limits.rate)


def turn(standing: Standing, now: float, limits: Limits) -> float | None:
    """Seconds a request of this address waits before it is served, taking that turn (None: not
    paced; inf: no turn within MAX_WAIT)."""
    if strikes_now(standing, now, limits) >= 1.0:
        return None
    at = max(now, standing.next_turn)
    if at - now > MAX_WAIT:
        return math.inf
    standing.next_turn = at + 1.0 / limits.rate
    return at - now


class Pacer:
    """The standing of the addresses seen lately; used from the event loop only (no lock)."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.limits = limits
        self._clock = clock
        self._standing: OrderedDict[str, Standing] = OrderedDict()
        self._max = max_addresses
        self.paced_total = 0
        self.refused_total = 0

    def wait(self, address: str) -> float | None:
        """Seconds the next request of ``address`` waits (None: not paced; inf: refused after MAX_WAIT)."""
        standing = self._standing.get(address)
        seconds = None if standing is None else turn(standing, self._clock(), self.limits)
        if seconds == math.inf:
            self.refused_total += 1
        elif seconds is not None:
            self.paced_total += 1
        return seconds

    def strike(self, address: str) -> None:
        now = self._clock()
        standing = self._standing.pop(address, None) or Standing(float(self.limits.burst), now)
        standing.strikes = max(0.0, strikes_now(standing, now, self.limits) - 1.0)
        standing.at = now
        self._standing[address] = standing  # most recent last
        while len(self._standing) > self._max:
            self._standing.popitem(last=False)

    def counts(self) -> dict[str, int]:
        return {"paced": self.paced_total, "refused": self.refused_total}


def is_strike(status: int, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return status in STRIKES or (status == 403 and any(k.lower() == b"retry-after" for k, _ in headers))


class Pacing:
    """ASGI middleware: waits out an address's turn before the request, counts its strikes after."""

    def __init__(self, app: ASGIApp, *, pacer: Pacer | None, trusted_proxies: Sequence[str] = (),
                 routed: Callable[[Request], bool] = lambda request: False) -> None:
        self.app = app
        self.pacer = pacer
        self.trusted = list(trusted_proxies)
        self.routed = routed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pacer = self.pacer
        if pacer is None or scope["type"] != "http" or scope["path"].startswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.routed(request):
            await self.app(scope, receive, send)
            return
        address = clients.client_address(request, self.trusted)
        seconds = pacer.wait(address)
        if seconds:
            await asyncio.sleep(min(seconds, MAX_WAIT))
        if seconds == math.inf:
            response = error_response(
                request, 429,
                f"too many bad requests from {address}; its requests are now served one every "
                f"{1 / pacer.limits.rate:g} s. Try again later.",
                retry_after=math.ceil(MAX_WAIT),
            )
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and is_strike(message["status"], message.get("headers", [])):
                pacer.strike(address)
            await send(message)

        await self.app(scope, receive, counting)
