"""The cluster's counting, in one place: how many make a majority, whether votes reach it, and
which replicas disagree with the rest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulwark.cluster.state import Placement  # state counts with majority() too


def majority(members: int) -> int:
    """How many of ``members`` make a strict majority."""
    return members // 2 + 1


def has_quorum(votes: int, members: int) -> bool:
    """Whether ``votes`` are a strict majority of all ``members``, counted whether they answered or not."""
    return votes >= majority(members)


def disagreeing(placement: Placement, votes: Mapping[str, str | None]) -> list[str]:
    """Up-to-date replicas whose checksum is not the one most of them have (a plurality, not
    necessarily a majority), or that have no copy at all.

    On a tie the checksum of the first node by name wins: there is no way to tell which
    copy is right, and a fixed rule keeps successive cycles from flipping between them.
    When no replica has a copy, all of them are marked (and the repository shows as lost).
    """
    current = set(placement.up_to_date())
    answers = {n: c for n, c in votes.items() if n in current}
    missing = [n for n, c in answers.items() if c is None]
    present = {n: c for n, c in answers.items() if c is not None}
    if not present:
        return sorted(missing)
    tally = Counter(present.values())
    best = max(tally.values())
    winners = {c for c, k in tally.items() if k == best}
    winner = present[min(n for n, c in present.items() if c in winners)]
    return sorted(missing + [n for n, c in present.items() if c != winner])
