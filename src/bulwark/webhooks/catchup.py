"""Ref moves that git holds but no webhook event announced, found when a node starts delivering.

Two faults leave them. A node killed after git moved a push's refs and before the push was
recorded: the client never saw it succeed, but the refs moved. And an HA replica whose fetch
brought a repository's refs ahead of the metadata that announces them (a fetch takes every
ref), promoted when its primary died before that metadata arrived.

The node that starts delivering (at start-up, or promoted) compares each hooked repository's
branches and tags with the ones last announced (``hook_refs``, written with every recorded
push) and queues the push, create and delete events of the difference. Who pushed is not known
then, so those events name the server (``payloads.SERVER``) as pusher and sender.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bulwark.errors import BulwarkError
from bulwark.git.runner import ZERO_OID
from bulwark.models import Repository
from bulwark.webhooks import payloads

if TYPE_CHECKING:
    from bulwark.webhooks.service import HookService

# The refs whose moves webhooks announce and whose last announced value is kept.
ANNOUNCED = ("refs/heads/", "refs/tags/")


def announced_updates(updates: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [u for u in updates if u[2].startswith(ANNOUNCED)]


def unannounced(
    announced: dict[str, str], actual: dict[str, str], present: Callable[[str], bool]
) -> list[tuple[str, str, str]]:
    """The updates (old, new, ref) that take the announced refs to the actual ones.

    A ref whose announced object this copy does not have is behind, not moved: the announced
    push never reached this copy's git (a replica's fetch that had not run yet), so nothing is
    said of it.
    """
    updates = []
    for ref in sorted(set(announced) | set(actual)):
        old, new = announced.get(ref), actual.get(ref)
        if old == new or (old is not None and not present(old)):
            continue
        updates.append((old or ZERO_OID, new or ZERO_OID, ref))
    return updates


class CatchUp:
    """Announce what git holds beyond the last announced refs, repository by repository."""

    def __init__(self, service: HookService) -> None:
        self.service = service

    def run(self, stop: Callable[[], bool] = lambda: False) -> str:
        told = adopted = failed = 0
        for repo in self.service.store.list_repos():
            if stop():
                return f"stopped after announcing {told} ref moves"
            if not any(hook.active for hook in self.service.hooks.hooks_for(repo.id, repo.owner_id)):
                continue
            try:
                result = self.repository(repo)
            except BulwarkError:
                failed += 1  # a repository git cannot read now; the next start tries again
                continue
            if result is None:
                adopted += 1
            else:
                told += result
        if not (told or adopted or failed):
            return "nothing unannounced"
        parts = [f"announced {told} ref moves no event had announced"]
        if adopted:
            parts.append(f"read the refs of {adopted} repositories for the first time")
        if failed:
            parts.append(f"could not read {failed} repositories")
        return ", ".join(parts)

    def repository(self, repo: Repository) -> int | None:
        """How many ref moves of ``repo`` were announced now; None if its refs were read for the
        first time (taken as announced)."""
        hooks, git = self.service.hooks, self.service.git
        # The announced refs first, then git: a push recorded in between is then seen by
        # ``claim_ref`` and is not announced twice.
        announced = hooks.announced_refs(repo.id)
        actual = {ref.name: ref.oid for ref in git.refs(repo.storage_id, *(p.rstrip("/") for p in ANNOUNCED))}
        if announced is None:
            hooks.adopt_refs(repo.id, actual)
            return None
        moves = unannounced(announced, actual,
                            lambda oid: git.object_type(repo.storage_id, oid) is not None)
        told = 0
        for old, new, ref in moves:
            deliveries = self.service.push_deliveries(repo, payloads.SERVER, [(old, new, ref)])
            with self.service.store.transaction():
                if hooks.claim_ref(repo.id, ref, announced.get(ref), actual.get(ref)):
                    self.service.enqueue(repo, deliveries)
                    told += 1
        if told:
            self.service.queued()
        return told
