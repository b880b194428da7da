"""The body of a git request: decoded, bounded and checked before git sees it.

A fetch's wants and haves, or a push's commands, are read here piece by piece: gzip is
inflated at most ``CHUNK`` bytes at a time, the total is capped, a stalled client is
given up on, and the pkt-line framing of a fetch is checked to its end. Nothing here
holds more than one piece and the first section (up to its first flush packet).
"""

from __future__ import annotations

import asyncio
import collections
import random
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

from starlette.requests import ClientDisconnect, Request

from bulwark.errors import BadRequest, BulwarkError, ClientGone, PayloadTooLarge
from bulwark.git.pktline import Kind, Packet, PktLineError, PktLineReader

CHUNK = 64 * 1024
# A gzip body may inflate this many times its size, past the first INFLATE_FREE bytes: wants
# and haves compress a few times at most, while a bomb of empty packets compresses a
# thousandfold and would cost the node seconds of parsing per kilobyte sent.
INFLATE_RATIO = 100
INFLATE_FREE = 16 * 1024
# Packets in a whole fetch request: a wide margin over the wants and haves of a mirror fetch.
FETCH_PACKET_LIMIT = 1_000_000
# Past a grace, every RATE_WINDOW seconds of a body must bring MIN_RATE bytes a second: a client
# trickling a byte now and then (or sending a burst, then next to nothing) would otherwise hold a
# git process, and its memory, for as long as it pleased without ever tripping the idle timeout.
# A push's grace is long (the client's pack-objects may think before it writes); a fetch's body
# of wants and haves is made in memory and sent at once.
MIN_RATE = 1024
RATE_WINDOW = 10.0
PUSH_RATE_GRACE = 30.0
FETCH_RATE_GRACE = 5.0
MARK_SPACING = 0.5
# How often a waiting body is looked at, so that one which stopped altogether is given up too.
RATE_TICK = 1.0


def _too_slow_text() -> str:
    return f"the request body arrives slower than {MIN_RATE} bytes a second over {RATE_WINDOW:g} s; given up"


class RateFloor:
    """Whether a body has fallen below ``rate`` bytes a second over the last ``window`` seconds,
    counted from ``grace`` seconds after it began."""

    def __init__(self, *, grace: float, rate: int = MIN_RATE, window: float = RATE_WINDOW) -> None:
        self.grace, self.rate, self.window = grace, rate, window
        self._marks: collections.deque[tuple[float, int]] = collections.deque([(0.0, 0)])

    def too_slow(self, received: int, elapsed: float) -> bool:
        """``received`` bytes in all, ``elapsed`` seconds since the body began."""
        marks = self._marks
        # Marks half a second apart at most: a client sending a million tiny pieces adds no more.
        if elapsed - marks[-1][0] >= MARK_SPACING:
            marks.append((elapsed, received))
        # Keep one mark at or before the window's start, to measure the window from.
        while len(marks) > 1 and marks[1][0] <= elapsed - self.window:
            marks.popleft()
        if elapsed < self.grace:
            return False
        since, base = marks[0]
        span = elapsed - since
        return span >= self.window and received - base < self.rate * span


class RequestTimeout(BulwarkError):
    status_code = 408


def check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise BadRequest("malformed Content-Length")
    if int(declared) > limit:
        raise PayloadTooLarge(f"the request body of {declared} bytes exceeds the limit of {limit} bytes")


class Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        # In pieces of at most CHUNK, as gzip yields them: a push's commands are then read and
        # answered even when the server received them together with more than the size limit.
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]

    def finish(self) -> None:
        pass


class Gunzip:
    """Incremental gzip decoding that never inflates more than ``CHUNK`` bytes at a time."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self.received = 0
        self.inflated = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        fed = self.received + len(data)
        while True:
            if self._z.eof:
                if data or self._z.unused_data:
                    raise BadRequest("corrupt gzip request body: data after the end of the gzip stream")
                return
            # Never inflate more than one byte past what the ratio allows: a bomb is refused after
            # INFLATE_FREE bytes, not after a whole CHUNK that the framing would then have to read.
            allowed = max(INFLATE_FREE, INFLATE_RATIO * self.received) - self.inflated
            most = max(1, min(CHUNK, allowed + 1))
            try:
                out = self._z.decompress(data, most)
            except zlib.error as exc:
                raise BadRequest(f"corrupt gzip request body: {exc}") from None
            data = self._z.unconsumed_tail
            self.received = fed - len(data)  # compressed bytes inflated so far
            self.inflated += len(out)
            if self.inflated > INFLATE_FREE and self.inflated > INFLATE_RATIO * self.received:
                raise BadRequest(
                    f"the gzip request body inflates more than {INFLATE_RATIO} times its size; refused"
                )
            if out:
                yield out
            # A full piece may leave output pending inside zlib: ask again, with no new input.
            if not data and len(out) < most:
                return

    def finish(self) -> None:
        if not self._z.eof:
            raise BadRequest("corrupt gzip request body: the gzip stream is truncated")


def decoder_for(request: Request) -> Identity | Gunzip:
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return Identity()
    if encoding in ("gzip", "x-gzip"):
        return Gunzip()
    raise BadRequest(f"unsupported Content-Encoding {encoding!r}: use gzip or none")


class FetchFraming:
    """Checks that a fetch request is pkt-lines to its very end, and ends as clients end one."""

    def __init__(self, max_packets: int = FETCH_PACKET_LIMIT) -> None:
        self._reader = PktLineReader()
        self._last: Packet | None = None
        self.max_packets = max_packets
        self.packets = 0

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)
        count, last = self._reader.skim()
        self.packets += count
        self._last = last or self._last
        if self.packets > self.max_packets:
            raise PktLineError(f"the request sends more than {self.max_packets} pkt-lines")

    def finish(self) -> None:
        if self._reader.pending():
            raise PktLineError("the request body is truncated: it ends inside a pkt-line")
        last = self._last
        if last is None:
            raise PktLineError("the request body is empty; expected pkt-lines")
        if not (last.kind is Kind.FLUSH or last.payload == b"done\n"):
            raise PktLineError("the request body is truncated: it does not end with a flush or 'done' packet")


async def decoded_body(
    request: Request, *, limit: int, idle_timeout: float, framing: FetchFraming | None = None,
    rate_grace: float = PUSH_RATE_GRACE,
) -> AsyncGenerator[bytes, None]:
    """The request body, decoded, in pieces; raises once it exceeds ``limit``, stalls or breaks ``framing``.

    The last piece is held back until the body has ended well: git then never sees a
    complete request that is about to be refused (a push would land despite the error).
    """
    decoder = decoder_for(request)
    chunks = request.stream().__aiter__()
    total = received = 0
    held: bytes | None = None
    # A little later for some than for others: many slow bodies begun together (an attack) are then
    # given up over a second or two, not all in one turn of the event loop.
    floor = RateFloor(grace=rate_grace * random.uniform(1.0, 1.2))
    # The clocks run only while waiting for the client: time git takes to read what it was
    # given (a slow disk under a push) is not the client's.
    waited = idle = 0.0
    loop = asyncio.get_running_loop()
    next_chunk: asyncio.Future[bytes] | None = None
    try:
        while True:
            if next_chunk is None:
                next_chunk = asyncio.ensure_future(chunks.__anext__())
            began = loop.time()
            done, _ = await asyncio.wait({next_chunk}, timeout=RATE_TICK)
            waited += loop.time() - began
            idle += loop.time() - began
            if not done:
                if idle >= idle_timeout:
                    raise RequestTimeout(f"no request body data arrived for {idle_timeout:g} seconds")
                if floor.too_slow(received, waited):
                    raise RequestTimeout(_too_slow_text())
                continue
            arrived, next_chunk = next_chunk, None
            try:
                chunk = arrived.result()
            except StopAsyncIteration:
                break
            except ClientDisconnect:
                raise ClientGone("the client disconnected while sending its request") from None
            idle = 0.0
            received += len(chunk)
            if floor.too_slow(received, waited):
                raise RequestTimeout(_too_slow_text())
            for piece in decoder.feed(chunk):
                total += len(piece)
                if total > limit:
                    raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
                if framing is not None:
                    framing.feed(piece)
                if held is not None:
                    yield held
                held = piece
                # Inflating and checking a piece is CPU work: let other requests in between pieces.
                await asyncio.sleep(0)
    finally:
        if next_chunk is not None:
            next_chunk.cancel()
    decoder.finish()
    if framing is not None:
        framing.finish()
    if held is not None:
        yield held


async def first_section(
    body: AsyncIterator[bytes], limit: int, *, max_packets: int, keep: int | None = None
) -> tuple[bytes, list[Packet]]:
    """Read up to the first flush packet: every byte read so far, and the packets before the
    flush (only the first ``keep`` of them, if given). More than ``limit`` bytes or
    ``max_packets`` packets before the flush is refused."""
    reader = PktLineReader()
    raw = bytearray()
    packets: list[Packet] = []
    count = 0
    async for chunk in body:
        raw += chunk
        reader.feed(chunk)
        for packet in reader.packets():
            if packet.kind is Kind.FLUSH:
                return bytes(raw), packets
            count += 1
            if count > max_packets:
                raise PktLineError(f"the request sends more than {max_packets} pkt-lines before its first flush")
            if keep is None or len(packets) < keep:
                packets.append(packet)
        if len(raw) > limit:
            raise PktLineError(f"the request sends more than {limit} bytes before its first flush packet")
    if not raw:
        raise PktLineError("the request body is empty; expected pkt-lines")
    raise PktLineError("the request body is truncated: it ends before its first flush packet")


async def read_small(prelude: bytes, body: AsyncGenerator[bytes, None], limit: int) -> tuple[bytes, bool]:
    """``prelude`` and the rest of ``body`` if it all fits in ``limit`` bytes (then ``True``);
    else what was read, and ``body`` goes on from there."""
    data = bytearray(prelude)
    async for chunk in body:
        data += chunk
        if len(data) > limit:
            return bytes(data), False
    return bytes(data), True
