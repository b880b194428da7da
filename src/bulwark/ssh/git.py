"""Git over an SSH channel, served by the same git service as smart HTTP.

Pushes and protocol v2 fetches are served the way HTTP serves them, one stateless git run per
request (so refusals, kept advertisements and recording are the same code); protocol v0 fetches
and archives, whose conversations keep state between rounds, get one git process for the whole
session. Every wait on the client is bounded: a session silent both ways for ``idle_timeout``
seconds is ended, and git cleans up as it does when an HTTP client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx

from bulwark.errors import BulwarkError, NotFound, PayloadTooLarge, Unauthenticated, Unavailable
from bulwark.git import pktline
from bulwark.gitservice import slots as gitslots
from bulwark.gitservice.access import authorize, git_config
from bulwark.gitservice.push import Kept, recorder
from bulwark.gitservice.session import (
    CHUNK,
    RECEIVE_PACK,
    SECTION_LIMITS,
    SECTION_PACKETS,
    UPLOAD_ARCHIVE,
    UPLOAD_PACK,
    GitSession,
    closed_on_error,
)
from bulwark.models import Account
from bulwark.monitoring.metrics import Metrics, Refusal, Transport, count_refused
from bulwark.node import Node
from bulwark.services.repositories import RepoAccess
from bulwark.services.ssh_keys import Holder
from bulwark.ssh import commands
from bulwark.ssh.relay import Relay, relay_fetch, relay_push, stateful_here

log = logging.getLogger("bulwark.ssh")

_PROTOCOL = re.compile(r"[A-Za-z0-9=:._-]{1,256}")
T = TypeVar("T")


class Reader(Protocol):
    async def read(self, n: int = -1) -> Any: ...


class Writer(Protocol):
    def write(self, data: Any) -> None: ...

    async def drain(self) -> None: ...


class Idle:
    """When either side last moved a byte; a wait on the client ends once both were silent too long."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    async def bounded(self, waiting: Awaitable[T]) -> T:
        task = asyncio.ensure_future(waiting)
        try:
            while True:
                left = self.last + self.timeout - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the session was idle for {self.timeout:g}s")
                done, _ = await asyncio.wait({task}, timeout=left)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()


class ClientStream:
    """The client's bytes, read as pkt-line sections (a push's commands, a v2 request) and then as a
    plain stream (a pack)."""

    def __init__(self, stdin: Reader, idle: Idle, service: str) -> None:
        self.stdin = stdin
        self.idle = idle
        # A push's commands and a v2 request are read whole before git starts; as over HTTP.
        kind = RECEIVE_PACK if service == RECEIVE_PACK else UPLOAD_PACK
        self.limit, self.max_packets = SECTION_LIMITS[kind], SECTION_PACKETS[kind]
        self.reader = pktline.PktLineReader()
        self.ended = False

    async def _more(self) -> bool:
        chunk = await self.idle.bounded(self.stdin.read(CHUNK))
        if not chunk:
            self.ended = True
            return False
        self.idle.touch()
        self.reader.feed(chunk)
        return True

    async def section(self) -> tuple[bytes, list[pktline.Packet]] | None:
        """The raw bytes and the packets up to a flush (which ends them); None if the client ended
        its input first, having sent nothing of it."""
        raw, packets = bytearray(), list[pktline.Packet]()
        while True:
            for packet in self.reader.packets():
                raw += b"0000" if packet.kind is pktline.Kind.FLUSH else _raw(packet)
                if packet.kind is pktline.Kind.FLUSH:
                    return bytes(raw), packets
                packets.append(packet)
                if len(packets) > self.max_packets or len(raw) > self.limit:
                    raise pktline.PktLineError("the request is too long before its first flush packet")
            if not await self._more():
                if raw or self.reader.pending():
                    raise pktline.PktLineError("the request ends before its flush packet")
                return None

    async def rest(self, limit: int) -> AsyncGenerator[bytes, None]:
        """What follows the sections read, to the end of input, at most ``limit`` bytes."""
        left = self.reader.rest()
        self.reader = pktline.PktLineReader()
        seen = len(left)
        if left:
            yield left
        while not self.ended:
            chunk = await self.idle.bounded(self.stdin.read(CHUNK))
            if not chunk:
                return
            self.idle.touch()
            seen += len(chunk)
            if seen > limit:
                raise PayloadTooLarge(f"this push is larger than the limit of {limit} bytes")
            yield chunk


def _raw(packet: pktline.Packet) -> bytes:
    if packet.kind is pktline.Kind.DELIM:
        return b"0001"
    if packet.kind is pktline.Kind.RESPONSE_END:
        return b"0002"
    return pktline.encode(packet.payload)


@dataclass
class Channel:
    """One SSH session's streams and what the client sent with its command."""

    stdin: Reader
    stdout: Writer
    stderr: Writer
    env: dict[str, str]


class Refused(BulwarkError):
    """A session ended with a sentence on stderr and exit status 1."""


async def serve(node: Node, holder: Holder, command: str, channel: Channel, *, metrics: Metrics | None,
                slots: gitslots.GitSlots | None, idle_timeout: float,
                relay_client: httpx.AsyncClient | None = None) -> int:
    """Run ``command`` for ``holder`` over ``channel``; the exit status. On a cluster node,
    ``relay_client`` carries the session's requests to the node's smart HTTP (see relay.py)."""
    asked = commands.parse(command)  # NotAGitCommand: the caller says so
    protocol = channel.env.get("GIT_PROTOCOL")
    protocol = protocol if protocol and _PROTOCOL.fullmatch(protocol) else None
    service = asked.service
    try:
        _, access = await asyncio.to_thread(
            authorize, node, RECEIVE_PACK if service == RECEIVE_PACK else UPLOAD_PACK, asked.owner, asked.name,
            who=lambda: holder.principal, credential=f"ssh-key {holder.key.id}",
        )
    except (NotFound, Unauthenticated):
        # The same words whether it is missing or hidden: a private repository's existence is not told.
        raise Refused(f"Repository not found: {asked.full_name}") from None
    except Unavailable:
        # Maintenance, an HA replica asked to take a push: the caller says the node's sentence.
        count_refused(metrics, service, Refusal.UNAVAILABLE, Transport.SSH)
        raise
    v2 = "version=2" in (protocol or "").split(":")
    if node.cluster is not None and relay_client is not None and (service == RECEIVE_PACK or
                                                                  (service == UPLOAD_PACK and v2)):
        # The node's HTTP service takes a slot for each request it runs.
        return await _relayed(Relay(node, relay_client, holder, access, protocol), node, service, channel,
                              Idle(idle_timeout))
    if node.cluster is not None:
        await asyncio.to_thread(stateful_here, node, access)
    client = f"account {holder.user.id}" if holder.user is not None else f"deploy key {holder.key.id}"
    try:
        slot = await slots.acquire(client) if slots is not None else None
    except gitslots.Busy:
        count_refused(metrics, service, Refusal.BUSY, Transport.SSH)
        raise  # the caller says so
    idle = Idle(idle_timeout)
    stream = ClientStream(channel.stdin, idle, service)
    git = _Git(node, access, service, protocol, metrics, slot, channel, idle)
    git.pusher = holder.user
    try:
        if service == RECEIVE_PACK:
            try:
                return await git.push(stream)
            except PayloadTooLarge:
                count_refused(metrics, service, Refusal.TOO_LARGE, Transport.SSH)
                raise
        if service == UPLOAD_PACK and v2:
            return await git.fetch_v2(stream)
        return await git.conversation()
    finally:
        if slot is not None:
            slot.release()


async def _relayed(relay: Relay, node: Node, service: str, channel: Channel, idle: Idle) -> int:
    stream = ClientStream(channel.stdin, idle, service)

    async def send(chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            channel.stdout.write(chunk)
            await idle.bounded(channel.stdout.drain())
            idle.touch()

    await send(relay.advertisement(service))
    while True:
        section = await stream.section()
        if section is None or not section[1]:
            return 0  # the client is done (a flush, or the end of its input)
        if service == RECEIVE_PACK:
            prelude, rest = section[0], stream.rest(node.settings.max_push_bytes)
            request = pktline.parse_receive_request(section[1])
            if all(command.is_delete for command in request.commands):
                # No pack follows deletions, and the client waits for the report with its input
                # open: the request ends here (with its push options, if it sends them).
                if "push-options" in request.capabilities:
                    options = await stream.section()
                    prelude += options[0] if options is not None else b""
                rest = _nothing()
            await send(relay_push(relay, prelude, rest))
            return 0
        await send(relay_fetch(relay, section[0]))


class _Git:
    def __init__(self, node: Node, access: RepoAccess, service: str, protocol: str | None, metrics: Metrics | None,
                 slot: gitslots.Slot | None, channel: Channel, idle: Idle) -> None:
        self.node, self.access, self.service, self.protocol = node, access, service, protocol
        self.metrics, self.channel, self.idle = metrics, channel, idle
        del slot  # held by the caller for the whole session
        self.pusher: Account | None = None  # the key's user; None for a deploy key

    async def _spawn(self, service: str, *, advertise: bool = False, stateful: bool = False) -> GitSession:
        proc = await self.node.git.spawn(self.access.repo.storage_id, service, advertise=advertise,
                                         protocol=self.protocol, extra_config=git_config(self.access, service),
                                         stateful=stateful)
        return GitSession(proc, self.node.git, self.access, service, metrics=self.metrics, transport=Transport.SSH)

    async def _send(self, data: bytes) -> None:
        self.channel.stdout.write(data)
        await self.idle.bounded(self.channel.stdout.drain())
        self.idle.touch()

    async def _stream(self, session: GitSession, first: bytes) -> int:
        async for chunk in session.stream(first):
            await self._send(chunk)
        return await session.finish()

    async def _advertise(self, service: str, key: tuple[str | bytes | None, ...] | None) -> None:
        kept = Kept(self.node.git, self.access, key) if key is not None else None
        if kept is not None and kept.answer is not None:
            await self._send(kept.answer)
            return
        session = await self._spawn(service, advertise=True)
        try:
            async with closed_on_error(session):
                session.no_input()
                first = await session.first_output()
                if not first and session.proc.returncode != 0:
                    raise Refused(f"git-{service} could not list the refs of {self.access.full_name}")
                answer, whole = await kept.read(session, first) if kept is not None else (first, False)
                if whole:
                    await self._send(answer)
                else:
                    await self._stream(session, answer)
        finally:
            await session.close()

    async def push(self, stream: ClientStream) -> int:
        await self._advertise(RECEIVE_PACK, None)
        section = await stream.section()
        if section is None or not section[1]:
            return 0  # nothing to push: the client said so with a flush (or left)
        prelude, packets = section
        request = pktline.parse_receive_request(packets)
        session = await self._spawn(RECEIVE_PACK)
        session.on_success = recorder(self.node, self.access, request.commands, self.pusher)
        try:
            async with closed_on_error(session):
                session.send_input(prelude, stream.rest(self.node.settings.max_push_bytes))
                first = await session.first_output()
                return await self._stream(session, first)
        finally:
            await session.close()

    async def fetch_v2(self, stream: ClientStream) -> int:
        await self._advertise(UPLOAD_PACK, ("info/refs", self.protocol))
        while True:
            section = await stream.section()
            if section is None or not section[1]:
                return 0  # the client is done (an empty request, or the end of its input)
            whole, packets = section
            key = ("ls-refs", self.protocol, whole) if packets[0].payload == b"command=ls-refs\n" else None
            kept = Kept(self.node.git, self.access, key) if key is not None else None
            if kept is not None and kept.answer is not None:
                await self._send(kept.answer)
                continue
            session = await self._spawn(UPLOAD_PACK)
            try:
                async with closed_on_error(session):
                    session.send_input(whole, _nothing())
                    first = await session.first_output()
                    answer, done = await kept.read(session, first) if kept is not None else (first, False)
                    if done:
                        await self._send(answer)
                    elif await self._stream(session, answer) != 0:
                        return 1
            finally:
                await session.close()

    async def conversation(self) -> int:
        """A v0 fetch or an archive: one git process talks to the client until either ends."""
        session = await self._spawn(self.service, stateful=True)
        idle = self.idle

        async def client_input() -> AsyncGenerator[bytes, None]:
            while chunk := await idle.bounded(self.channel.stdin.read(CHUNK)):
                idle.touch()
                yield chunk

        try:
            async with closed_on_error(session):
                session.send_input(b"", client_input())
                first = await session.first_output()
                return await self._stream(session, first)
        finally:
            await session.close()


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield


__all__ = ["UPLOAD_ARCHIVE", "Channel", "Refused", "serve"]
