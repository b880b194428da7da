"""Which node serves a repository request: pure decisions over the cluster's state.

Reads go to an up-to-date replica on a live node, this node's own if it has one,
otherwise spread at random over the others (a node being drained comes last).
Writes go to the node that will lead the push: this node if its replica is up to
date, otherwise the first up-to-date live replica, so that pushes arriving through
different nodes mostly meet on one leader.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bulwark.cluster.state import Placement
from bulwark.roles import Traffic


@dataclass(frozen=True)
class Route:
    node: str
    url: str
    local: bool


def choose(
    placement: Placement,
    access: Traffic,
    *,
    me: str,
    alive: Collection[str],
    urls: Mapping[str, str],
    draining: Collection[str] = (),
    avoid: Collection[str] = (),
    rng: random.Random | None = None,
) -> Route | None:
    """The node to send the request to, or None when no up-to-date replica is reachable."""
    candidates = [n for n in placement.up_to_date() if n in alive and n in urls and n not in avoid]
    if not candidates:
        return None
    if me in candidates:
        return Route(me, urls[me], True)
    preferred = [n for n in candidates if n not in draining] or candidates
    node = preferred[0] if access is Traffic.WRITE else (rng or random).choice(preferred)
    return Route(node, urls[node], False)
