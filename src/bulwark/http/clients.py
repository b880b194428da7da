"""Who the client of a request is, for per-client limits.

Behind a load balancer every connection comes from the balancer, so its
``X-Forwarded-For`` names the client, but only a balancer listed in ``trusted_proxies`` may
say so: anyone else could name whoever they like. The address taken is the rightmost one
not itself a trusted proxy, which is the last hop a trusted proxy saw.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def is_trusted(address: str, trusted: Sequence[str]) -> bool:
    return _trusted(address, _networks(tuple(trusted)))


def real_address(peer: str, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """The client's address, given the connection's ``peer`` and its X-Forwarded-For."""
    networks = _networks(tuple(trusted))
    if not forwarded_for or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


def client_address(request: Request, trusted: Sequence[str]) -> str:
    peer = request.client.host if request.client else "unknown"
    return real_address(peer, request.headers.get("x-forwarded-for"), trusted)
