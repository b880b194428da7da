"""A push's work beyond git's own: recording it, and in a cluster leading its vote; and the kept
answers to fetches' advertisements. The same for every transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio

from bulwark.cluster.push_leader import Outcome, Push
from bulwark.git import pktline, report
from bulwark.git.runner import GitRunner
from bulwark.gitservice.session import RECEIVE_PACK, GitSession
from bulwark.models import Account
from bulwark.monitoring.metrics import Refusal, count_refused
from bulwark.node import Node
from bulwark.services.repositories import RepoAccess

log = logging.getLogger("bulwark.git")


def recorder(
    node: Node, access: RepoAccess, commands: Sequence[pktline.RefUpdate], pusher: Account | None = None
) -> Callable[[], Awaitable[None]]:
    """What runs when receive-pack succeeded, before its last bytes reach the client (session.py):
    a push whose report the client saw is recorded, with its webhook deliveries. A deploy key
    pushes for the repository's owner."""

    async def record() -> None:
        try:
            await asyncio.to_thread(node.record_push, access.repo, [(c.old, c.new, c.ref) for c in commands],
                                    pusher or access.owner)
        except Exception:
            # The refs are updated already; a stale pushed_at must not turn that into a failure.
            log.exception("could not record the push to %s", access.full_name)

    return record


def lead_push(session: GitSession, node: Node, push: Push, capabilities: Sequence[str]) -> None:
    """Hold git's answer until the push is recorded on a majority; then send it, or an error."""
    coordinator = node.cluster.coordinator  # type: ignore[union-attr]
    outcome: list[Outcome] = []

    async def finish() -> Outcome:
        if not outcome:
            outcome.append(await coordinator.finish(push))
        return outcome[0]

    async def release(output: bytes) -> bytes:
        result = await finish()
        if result.acknowledged:
            # A ref the replicas voted down: git says only "failed to update ref"; say why.
            return report.explain_refusal(output, push.refusal, capabilities) if push.refusal else output
        log.warning("push to %s not acknowledged: %s", push.storage_id, result.message)
        session.not_acknowledged = True
        count_refused(session.metrics, RECEIVE_PACK, Refusal.NOT_ACKNOWLEDGED, session.transport)
        return report.rewrite(output, f"push failed: {result.message}", capabilities, refused=push.refusal)

    async def on_close() -> None:
        with anyio.CancelScope(shield=True):
            await finish()

    session.hold_output = release
    session.on_close = on_close


class Kept:
    """The kept answer to one advertisement request, or what it takes to keep git's answer."""

    def __init__(self, git: GitRunner, access: RepoAccess, key: tuple[str | bytes | None, ...]) -> None:
        self.adverts = git.adverts
        self.repo_path = str(git.path(access.repo.storage_id))
        self.key = key
        self.answer, self.before = self.adverts.get(self.repo_path, key) if self.adverts.enabled else (None, None)

    async def read(self, session: GitSession, first: bytes) -> tuple[bytes, bool]:
        """Git's answer from ``first`` on, and whether it is whole: then it is kept for next time and
        the session is closed. An answer too large to keep, or refs that cannot be fingerprinted,
        give what was read so far, and the session streams the rest."""
        if self.before is None:
            return first, False
        answer, whole = await session.read_more(first, self.adverts.max_entry)
        if not whole:
            return answer, False
        if await session.finish() == 0:
            self.adverts.put(self.repo_path, self.key, self.before, answer)
        await session.close()
        return answer, True
