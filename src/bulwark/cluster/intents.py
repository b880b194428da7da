"""Pushes that never said how they ended.

A push leader records an *intent* (``intents/<storage id>``, no lease) in the transaction
that takes the repository's lock, and deletes it in the transaction that records the
replicas' new generations. An intent found afterwards means the leader died, hung or was
cut off somewhere in between: some replicas may have committed refs that etcd does not
know about, while their generation still says "up to date". Before anyone trusts those
replicas again, the next holder of the lock compares their ref checksums on disk and marks
every replica that disagrees with the majority as outdated, so the reconciler repairs it.

The decision is a pure function (:func:`judge`); :func:`settle` gathers the checksums and
writes the verdict with compare-and-set, while its caller holds the repository lock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bulwark.cluster import keys, state
from bulwark.cluster.locks import RepoLocks
from bulwark.cluster.state import BUILDING, Placement
from bulwark.cluster.voting import disagreeing, has_quorum
from bulwark.errors import BulwarkError, Unavailable
from bulwark.etcd import Compare, Etcd, Op

log = logging.getLogger("bulwark.cluster")


@dataclass(frozen=True)
class Verdict:
    """What the comparison of an unsettled push's replicas decided."""

    settled: bool  # enough replicas answered to tell
    outdated: tuple[str, ...]  # up-to-date replicas whose refs are not the majority's

    def sentence(self, storage_id: str) -> str:
        if not self.settled:
            return f"{storage_id}: too few replicas answered to settle an unfinished push"
        if not self.outdated:
            return f"{storage_id}: an unfinished push left the replicas in agreement"
        behind = state.names(self.outdated)
        return f"{storage_id}: an unfinished push left {behind} behind the majority; marked outdated"


def judge(placement: Placement, checksums: Mapping[str, str | None]) -> Verdict:
    """Settle only when a majority of all the replicas answered: fewer cannot outvote the
    ones that did not, and the repository waits (pushes to it are refused) until they do."""
    answered = {n: c for n, c in checksums.items() if n in placement.up_to_date()}
    if not has_quorum(len(answered), len(placement.replicas)):
        return Verdict(False, ())
    return Verdict(True, tuple(disagreeing(placement, answered)))


def settle(
    etcd: Etcd,
    placement: Placement,
    checksum_of: Callable[[str], str | None],
    *,
    token: str,
) -> tuple[Verdict, Placement]:
    """Compare the up-to-date replicas (``checksum_of(node)``, which raises ``BulwarkError``
    for a node it cannot ask) and mark the disagreeing ones outdated, only while ``token``
    is still the repository's lock. Returns the verdict and the placement as it now is."""
    checksums: dict[str, str | None] = {}
    for node in placement.up_to_date():
        try:
            checksums[node] = checksum_of(node)
        except BulwarkError as exc:
            log.warning("cluster: no checksum of %s from %s while settling a push: %s", placement.storage_id, node, exc)
    verdict = judge(placement, checksums)
    if not verdict.settled or not verdict.outdated:
        return verdict, placement
    top = placement.generation
    marked = placement.with_replicas(
        {n: BUILDING if n in verdict.outdated and g == top else g for n, g in placement.replicas.items()}
    )
    key = keys.placement(placement.storage_id)
    result = etcd.txn(
        [Compare.unchanged(key, placement.revision), Compare.value_is(keys.lock(placement.storage_id), token)],
        [Op.put(key, marked.to_json())],
    )
    if not result.succeeded:
        raise Unavailable(f"the replicas of {placement.storage_id} changed while they were being compared; try again")
    log.warning("cluster: %s", verdict.sentence(placement.storage_id))
    return verdict, Placement(marked.storage_id, marked.replicas, marked.wanted_rf, result.revision)


def left_behind(etcd: Etcd) -> dict[str, str]:
    """Every recorded intent, by storage id: the reconciler settles those whose lock is free."""
    return {keys.tail(kv.key, keys.INTENTS): kv.text for kv in etcd.get_prefix(keys.INTENTS)}


def clear(etcd: Etcd, storage_id: str, value: str, *, token: str | None = None) -> bool:
    """Delete the intent ``value`` of ``storage_id`` (only if unchanged, and while ``token`` holds the lock)."""
    compare = [Compare.value_is(keys.intent(storage_id), value)]
    if token is not None:
        compare.append(Compare.value_is(keys.lock(storage_id), token))
    return etcd.txn(compare, [Op.delete(keys.intent(storage_id))]).succeeded


def sweep(etcd: Etcd, locks: RepoLocks, checksum_of: Callable[[str, str], str | None]) -> str:
    """Settle every intent whose repository lock is free (its leader is gone): one pass, a sentence.

    Run by the elected reconciler's node, so a divergence left by a dead leader is found within
    a cycle even if nobody pushes to that repository again."""
    settled, waiting = [], 0
    for storage_id, value in sorted(left_behind(etcd).items()):
        token = locks.try_acquire(storage_id)
        if token is None:
            continue  # a push is under way: it settles the intent itself, or leaves a new one
        try:
            placement = state.get_placement(etcd, storage_id)
            if placement is None:
                clear(etcd, storage_id, value, token=token)  # the repository is gone
                continue
            verdict, _ = settle(etcd, placement, functools.partial(_for_repo, checksum_of, storage_id), token=token)
            if verdict.settled and clear(etcd, storage_id, value, token=token):
                settled.append(verdict.sentence(storage_id))
            else:
                waiting += 1
        except BulwarkError as exc:
            log.warning("cluster: could not settle the unfinished push to %s: %s", storage_id, exc)
            waiting += 1
        finally:
            with contextlib.suppress(BulwarkError):
                locks.release(storage_id, token)
    if not settled and not waiting:
        return "no unfinished pushes"
    return "; ".join(settled + ([f"{waiting} unfinished push(es) wait for more replicas"] if waiting else []))


def _for_repo(checksum_of: Callable[[str, str], str | None], storage_id: str, node: str) -> str | None:
    return checksum_of(node, storage_id)
