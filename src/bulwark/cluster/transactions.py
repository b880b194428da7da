"""A replica's half of a replicated ref update: prepare, then commit or abort.

The node leading a push asks every other up-to-date replica to *prepare* the same ref
update: fetch the new objects from the leader, then lock the refs and check their old
values with ``git update-ref --stdin`` (``start``/``update``/``prepare``), and answer
with a vote (a hash of the update). The process stays open, holding the ref locks, until
the leader says ``commit`` or ``abort``, or until it has waited too long and aborts by
itself, so a leader that died never leaves a replica's refs locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bulwark.errors import Conflict, GitError, NotFound
from bulwark.git.runner import ZERO_OID, GitRunner, config_env

log = logging.getLogger("bulwark.cluster")

RefLine = tuple[str, str, str]  # old, new, ref


def vote_of(lines: Sequence[RefLine]) -> str:
    """What every replica must agree on: the exact set of ``old new ref`` updates."""
    text = "\n".join(sorted(f"{old} {new} {ref}" for old, new, ref in lines))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _Prepared:
    storage_id: str
    proc: asyncio.subprocess.Process
    expiry: asyncio.TimerHandle


class Transactions:
    """The prepared ref updates a replica holds for leaders, by transaction id."""

    def __init__(self, git: GitRunner, *, hold_for: float = 15.0) -> None:
        self.git = git
        self.hold_for = hold_for
        self._prepared: dict[str, _Prepared] = {}
        self._expiring: set[asyncio.Future[None]] = set()

    async def prepare(
        self, storage_id: str, txn: str, lines: Sequence[RefLine], source_url: str, source_config: Mapping[str, str]
    ) -> str:
        if txn in self._prepared:
            raise Conflict(f"transaction {txn} is prepared already")
        if not self.git.exists(storage_id):
            raise NotFound(f"no copy of {storage_id} on this node")
        await self._fetch_missing(storage_id, [new for _old, new, _ref in lines if new != ZERO_OID],
                                  source_url, source_config)
        proc = await asyncio.create_subprocess_exec(
            *self.git.command(["update-ref", "--stdin"]),
            cwd=self.git.path(storage_id),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.git.env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        script = ["start"]
        for old, new, ref in lines:
            script.append(f"delete {ref} {old}" if new == ZERO_OID else f"update {ref} {new} {old}")
        script.append("prepare")
        proc.stdin.write(("\n".join(script) + "\n").encode())
        await proc.stdin.drain()
        answers = []
        for _ in range(2):  # "start: ok", then "prepare: ok"
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            answers.append(line.decode().strip())
        if answers != ["start: ok", "prepare: ok"]:
            proc.stdin.close()
            _, stderr = await proc.communicate()
            message = stderr.decode(errors="replace").strip().splitlines()
            raise Conflict(f"could not prepare the ref update: {message[-1] if message else answers}")
        expiry = asyncio.get_running_loop().call_later(self.hold_for, self._expire, txn)
        self._prepared[txn] = _Prepared(storage_id, proc, expiry)
        return vote_of(lines)

    async def commit(self, txn: str) -> None:
        await self._finish(txn, "commit")

    async def abort(self, txn: str) -> None:
        with contextlib.suppress(NotFound):
            await self._finish(txn, "abort")

    def held(self) -> int:
        return len(self._prepared)

    async def _finish(self, txn: str, verb: str) -> None:
        prepared = self._prepared.pop(txn, None)
        if prepared is None:
            raise NotFound(f"no prepared transaction {txn} (it may have expired)")
        prepared.expiry.cancel()
        proc = prepared.proc
        assert proc.stdin is not None
        proc.stdin.write(f"{verb}\n".encode())
        proc.stdin.close()
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        if verb == "commit" and (proc.returncode != 0 or b"commit: ok" not in stdout):
            raise GitError(f"could not commit the ref update: {stderr.decode(errors='replace').strip()}")

    def _expire(self, txn: str) -> None:
        log.warning("aborting transaction %s: its leader said neither commit nor abort in time", txn)
        task = asyncio.ensure_future(self.abort(txn))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _fetch_missing(
        self, storage_id: str, oids: list[str], source_url: str, source_config: Mapping[str, str]
    ) -> None:
        missing = [oid for oid in dict.fromkeys(oids) if not await self._has(storage_id, oid)]
        if not missing:
            return
        proc = await asyncio.create_subprocess_exec(
            *self.git.command(
                ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", source_url, *missing],
                extra_config={"fetch.fsckObjects": "true"},
            ),
            cwd=self.git.path(storage_id),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**self.git.env, **config_env(source_config)},
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 300)
        if proc.returncode != 0:
            raise GitError(f"could not fetch the pushed objects from the leader: {stderr.decode(errors='replace')}")

    async def _has(self, storage_id: str, oid: str) -> bool:
        proc = await asyncio.create_subprocess_exec(
            *self.git.command(["cat-file", "-e", oid]),
            cwd=self.git.path(storage_id),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=self.git.env,
        )
        return await proc.wait() == 0

