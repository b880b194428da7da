"""A request-rate limit per client address for the API and the pages, so that one client's flood
(of wrong passwords, or of expensive lists) cannot take the node's time from everyone else.

Each address has a token bucket: ``burst`` requests at once, refilled at ``rate`` a second. A
request that finds the bucket empty is answered 429 with ``Retry-After`` before anything else is
done for it (no credential is checked, no body read). Every answer carries GitHub's
``X-RateLimit-*`` headers, so clients that pace themselves by them keep working. Git routes have
their own limits (gitservice/slots.py); health checks, metrics, replication and node-to-node calls
are not limited, since the load balancer, Prometheus and peers must always get through.

The limit is per node: behind a load balancer an address gets ``rate`` on each node it reaches.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulwark.http import clients
from bulwark.http.errors import error_response

# Paths the limit applies to; everything else (git, /status, /metrics, /internal) is not limited,
# and neither is replication: a replica catching up pages through changes as fast as it can.
LIMITED = ("/api/", "/manage/")
EXEMPT = ("/manage/v1/replication/",)
# Addresses remembered at once; beyond that the longest idle (a full bucket) is forgotten.
MAX_ADDRESSES = 100_000


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float  # when ``tokens`` was counted


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: int  # whole requests left in the bucket after this one
    retry_after: float  # seconds until one request is allowed again (0 when allowed)
    full_in: float  # seconds until the bucket is full again


def take(bucket: Bucket | None, now: float, *, rate: float, burst: int) -> tuple[Bucket, Verdict]:
    """One request against ``bucket`` (None: an address not seen lately, its bucket full)."""
    tokens = float(burst) if bucket is None else min(float(burst), bucket.tokens + (now - bucket.at) * rate)
    allowed = tokens >= 1.0
    if allowed:
        tokens -= 1.0
    after = Bucket(tokens, now)
    wait = 0.0 if allowed else (1.0 - tokens) / rate
    return after, Verdict(allowed, int(tokens), wait, (burst - tokens) / rate)


class RateLimiter:
    """The buckets of the addresses seen lately; used from the event loop only (no lock)."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self._max = max_addresses
        self.refused_total = 0

    def check(self, address: str) -> Verdict:
        now = self._clock()
        bucket, verdict = take(self._buckets.pop(address, None), now, rate=self.rate, burst=self.burst)
        self._buckets[address] = bucket  # most recent last
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if not verdict.allowed:
            self.refused_total += 1
        return verdict

    def counts(self) -> dict[str, int]:
        return {"refused": self.refused_total}


class RateLimit:
    """ASGI middleware: :class:`RateLimiter` on the limited paths, keyed by the client's address."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter | None, trusted_proxies: Sequence[str] = ()) -> None:
        self.app = app
        self.limiter = limiter
        self.trusted = list(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if self.limiter is None or not path.startswith(LIMITED) or path.startswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        address = clients.client_address(request, self.trusted)
        verdict = self.limiter.check(address)
        headers = {
            "X-RateLimit-Limit": str(self.limiter.burst),
            "X-RateLimit-Remaining": str(verdict.remaining),
            "X-RateLimit-Reset": str(math.ceil(time.time() + verdict.full_in)),
            "X-RateLimit-Used": str(self.limiter.burst - verdict.remaining),
            "X-RateLimit-Resource": "core",
        }
        if not verdict.allowed:
            seconds = max(1, math.ceil(verdict.retry_after))
            response: Response = error_response(
                request, 429,
                f"API rate limit exceeded for {address}: more than {self.limiter.rate:g} requests a second "
                f"(bursts of {self.limiter.burst}). Try again in {seconds} second{'s' if seconds != 1 else ''}.",
                retry_after=seconds,
            )
            response.headers.update(headers)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode()) for k, v in headers.items())]
            await send(message)

        await self.app(scope, receive, send_with_headers)
