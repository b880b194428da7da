"""A replica's half of a replicated ref update: prepare, then commit or abort.

The node leading a push asks every other up-to-date replica to *prepare* the same ref
update: take in the new objects, then lock the refs and check their old values with
``git update-ref --stdin`` (``start``/``update``/``prepare``), and answer with a vote (a
hash of the update). The objects come with the request as a thin pack the leader made
against its current refs, which every up-to-date replica has too; a push too large to
send that way (or a pack that does not apply) is fetched from the leader over HTTP.

The ``update-ref`` process stays open, holding the ref locks, until
the leader says ``commit`` or ``abort``, or until it has waited too long and aborts by
itself, so a leader that died never leaves a replica's refs locked.

Every prepare and commit carries the leader's lock token. A replica checks in etcd that the
token is still the repository's lock before it prepares and again before it commits, so a
leader whose lease ran out (cut off, paused) cannot change a replica afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from bulwark.errors import BulwarkError, Conflict, GitError, NotFound
from bulwark.git.runner import ZERO_OID, GitRunner, config_env

log = logging.getLogger("bulwark.cluster")

# Pushes up to this size travel with the prepare request; larger ones are fetched by each follower,
# so no node holds a large pack in memory.
PACK_LIMIT = 8 * 1024**2
# Below this many objects a follower writes loose objects, as receive-pack does (transfer.unpackLimit).
UNPACK_LIMIT = 100

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
    token: str | None


class StaleLeader(Conflict):
    """The leader's lock token is no longer the repository's lock: its lease ran out."""


# Aborts that arrived before their prepare had finished (a leader that stopped waiting), kept
# this long so the prepare, when done, lets go of its ref locks at once.
EARLY_ABORTS = 256


class Transactions:
    """The prepared ref updates a replica holds for leaders, by transaction id."""

    def __init__(
        self,
        git: GitRunner,
        *,
        hold_for: float = 15.0,
        pack_limit: int = PACK_LIMIT,
        leader_alive: Callable[[str], bool] | None = None,
        check_every: float = 1.0,
        lock_holds: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.git = git
        self.hold_for = hold_for
        # Whether the node at a URL still holds its etcd session. A leader that died between
        # "prepare" and "commit" would otherwise leave the refs locked here for ``hold_for``,
        # and every push to them fail meanwhile.
        self.leader_alive = leader_alive
        self.check_every = check_every
        self.pack_limit = pack_limit
        # Whether a token is still a repository's lock in etcd (RepoLocks.holds): the fencing check.
        self.lock_holds = lock_holds
        self._prepared: dict[str, _Prepared] = {}
        self._early_aborts: dict[str, None] = {}
        self._background_tasks: set[asyncio.Future[None]] = set()

    async def prepare(
        self, storage_id: str, txn: str, lines: Sequence[RefLine], source_url: str, source_config: Mapping[str, str],
        pack: bytes | None = None, leader: str | None = None, token: str | None = None,
    ) -> str:
        if txn in self._prepared:
            raise Conflict(f"transaction {txn} is prepared already")
        if not self.git.exists(storage_id):
            raise NotFound(f"no copy of {storage_id} on this node")
        await self._check_token(storage_id, token)
        wanted = [new for _old, new, _ref in lines if new != ZERO_OID]
        missing = await self._missing(storage_id, wanted)
        if missing and pack:
            try:
                await self._unpack(storage_id, pack)
            except GitError as exc:
                log.warning("the pack sent with transaction %s did not apply (%s); fetching instead", txn, exc)
            missing = await self._missing(storage_id, missing)
        if missing:
            await self._fetch(storage_id, missing, source_url, source_config)
        proc = await self.git.start(storage_id, ["update-ref", "--stdin"])
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
        self._prepared[txn] = _Prepared(storage_id, proc, expiry, token)
        if txn in self._early_aborts:
            await self.abort(txn)
            raise Conflict(f"transaction {txn} was aborted by its leader while it was being prepared")
        if (leader is not None and self.leader_alive is not None) or (token is not None and self.lock_holds):
            self._background(self._watch_leader(txn, leader))
        return vote_of(lines)

    async def commit(self, txn: str, token: str | None = None) -> None:
        prepared = self._prepared.get(txn)
        if prepared is not None and (token or prepared.token):
            try:
                await self._check_token(prepared.storage_id, token or prepared.token)
            except BaseException:
                await self.abort(txn)
                raise
        await self._finish(txn, "commit")

    async def abort(self, txn: str) -> None:
        if txn not in self._prepared:
            self._early_aborts[txn] = None
            while len(self._early_aborts) > EARLY_ABORTS:
                del self._early_aborts[next(iter(self._early_aborts))]
        with contextlib.suppress(NotFound):
            await self._finish(txn, "abort")

    async def _check_token(self, storage_id: str, token: str | None) -> None:
        if token is None or self.lock_holds is None:
            return
        try:
            holds = await anyio.to_thread.run_sync(self.lock_holds, storage_id, token)
        except BulwarkError as exc:
            raise StaleLeader(f"cannot check the leader's lock in etcd: {exc}") from None
        if not holds:
            raise StaleLeader("the leader no longer holds the repository lock (its lease ran out); refused")

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
        self._background(self.abort(txn))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    async def _watch_leader(self, txn: str, leader: str | None) -> None:
        """Abort a prepared update once its leader is gone: its node lost its etcd session, or its
        lock token is no longer the repository's lock. The second covers a leader killed and started
        again within the lease's TTL: its node is alive under the same name, but the push died with
        the old process and its lock with the old lease."""
        while True:
            await asyncio.sleep(self.check_every)
            prepared = self._prepared.get(txn)
            if prepared is None:
                return
            try:
                gone = await anyio.to_thread.run_sync(self._leader_gone, prepared, leader)
            except BulwarkError:
                continue  # etcd unreachable: cannot tell, and the expiry still bounds the wait
            if gone:
                log.warning("aborting transaction %s: %s", txn, gone)
                await self.abort(txn)
                return

    def _leader_gone(self, prepared: _Prepared, leader: str | None) -> str | None:
        if leader is not None and self.leader_alive is not None and not self.leader_alive(leader):
            return f"its leader {leader} lost its cluster session"
        if prepared.token is not None and self.lock_holds is not None \
                and not self.lock_holds(prepared.storage_id, prepared.token):
            return "its leader no longer holds the repository lock"
        return None

    async def thin_pack(self, storage_id: str, wanted: Sequence[str]) -> bytes | None:
        """The objects a replica with this node's current refs lacks for ``wanted``, as a thin pack;
        ``None`` if it exceeds ``pack_limit`` or git could not make it (followers then fetch)."""
        tips = await self._git(storage_id, ["for-each-ref", "--format=%(objectname)"])
        if tips is None:
            return None
        revs = "".join(f"{oid}\n" for oid in wanted) + "--not\n" + tips.decode()
        proc = await self.git.start(storage_id, ["pack-objects", "--stdout", "--thin", "--revs",
                                                 "--delta-base-offset", "-q"], stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        feeding = asyncio.ensure_future(_feed(proc.stdin, revs.encode()))
        pack = bytearray()
        try:
            while chunk := await proc.stdout.read(65536):
                pack += chunk
                if len(pack) > self.pack_limit:
                    return None
            return bytes(pack) if await proc.wait() == 0 else None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding

    async def _unpack(self, storage_id: str, pack: bytes) -> None:
        """Write a thin pack's objects, checked as strictly as a push's."""
        if len(pack) < 32 or pack[:4] != b"PACK":
            raise GitError("not a pack")
        objects = int.from_bytes(pack[8:12], "big")
        args = (["unpack-objects", "-q", "--strict"] if objects < UNPACK_LIMIT
                else ["index-pack", "--stdin", "--fix-thin", "--strict"])
        proc = await self.git.start(storage_id, args, stdout=asyncio.subprocess.DEVNULL)
        _, stderr = await asyncio.wait_for(proc.communicate(pack), 300)
        if proc.returncode != 0:
            raise GitError(f"git {args[0]}: {stderr.decode(errors='replace').strip()[-300:]}")

    async def _fetch(self, storage_id: str, oids: list[str], source_url: str, source_config: Mapping[str, str]) -> None:
        proc = await self.git.start(
            storage_id, ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", source_url, *oids],
            extra_config={"fetch.fsckObjects": "true"}, extra_env=config_env(source_config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 300)
        if proc.returncode != 0:
            raise GitError(f"could not fetch the pushed objects from the leader: {stderr.decode(errors='replace')}")

    async def _missing(self, storage_id: str, oids: Sequence[str]) -> list[str]:
        """Which of ``oids`` this replica lacks, in one git process."""
        wanted = list(dict.fromkeys(oids))
        if not wanted:
            return []
        out = await self._git(storage_id, ["cat-file", "--batch-check=%(objectname)"],
                              "".join(f"{oid}\n" for oid in wanted).encode())
        if out is None:
            return wanted
        return [line.split()[0] for line in out.decode().splitlines() if line.endswith(" missing")]

    async def _git(self, storage_id: str, args: list[str], input: bytes | None = None) -> bytes | None:
        """Git's output, or ``None`` if it failed."""
        proc = await self.git.start(
            storage_id, args, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(input), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        return out if proc.returncode == 0 else None


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    stdin.close()
