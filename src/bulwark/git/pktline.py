"""The pkt-line framing of the git protocol, and the ref updates a push asks for.

Pure functions and an incremental reader: nothing here does I/O, so the HTTP
layer can validate what a client sent before it starts a git process.

A pkt-line is four hex digits giving the length (including those four) and then
the payload. Lengths 0, 1 and 2 are the flush, delimiter (protocol v2) and
response-end (protocol v2) packets; 3 is invalid; 4 is an empty data packet.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bulwark.errors import BadRequest

MAX_PKT_LEN = 65520  # LARGE_PACKET_MAX in git: the length field included
MAX_PAYLOAD = MAX_PKT_LEN - 4
ZERO_OID = "0" * 40


class PktLineError(BadRequest):
    """Bytes that are not well-formed pkt-lines, or commands git would refuse as malformed."""


class Kind(enum.Enum):
    DATA = "data"
    FLUSH = "flush"  # 0000: end of a section or of a request
    DELIM = "delim"  # 0001: separates a v2 command's capabilities from its arguments
    RESPONSE_END = "response-end"  # 0002: end of a v2 response over a stateless connection


@dataclass(frozen=True)
class Packet:
    kind: Kind
    payload: bytes = b""


FLUSH = Packet(Kind.FLUSH)
DELIM = Packet(Kind.DELIM)
RESPONSE_END = Packet(Kind.RESPONSE_END)
_SPECIAL = {0: FLUSH, 1: DELIM, 2: RESPONSE_END}
_LENGTH = re.compile(rb"[0-9a-fA-F]{4}")


def encode(payload: bytes | str) -> bytes:
    """One data pkt-line carrying ``payload``."""
    data = payload.encode() if isinstance(payload, str) else payload
    if len(data) > MAX_PAYLOAD:
        raise ValueError(f"pkt-line payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
    return b"%04x" % (len(data) + 4) + data


def flush() -> bytes:
    return b"0000"


def parse_length(header: bytes) -> int:
    """The length field of a pkt-line; ``PktLineError`` unless it is one git accepts."""
    if _LENGTH.fullmatch(header) is None:
        raise PktLineError(f"malformed pkt-line: bad length header {header[:4]!r}")
    length = int(header, 16)
    if length == 3:
        raise PktLineError("malformed pkt-line: length 0003 is not valid")
    if length > MAX_PKT_LEN:
        raise PktLineError(f"malformed pkt-line: length {length} exceeds {MAX_PKT_LEN}")
    return length


class PktLineReader:
    """Turns bytes fed in arbitrary pieces into complete packets.

    ``packets()`` is lazy: it parses only as far as the caller iterates, so a caller
    can stop at a flush and take what follows (a packfile, say) from ``rest()``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.consumed = 0  # bytes of complete packets handed out so far

    def feed(self, data: bytes) -> None:
        if self._pos:
            # Drop what has been parsed so the buffer only ever holds one partial packet and new data.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def packets(self) -> Iterator[Packet]:
        while len(self._buf) - self._pos >= 4:
            length = parse_length(bytes(self._buf[self._pos : self._pos + 4]))
            if length in _SPECIAL:
                packet = _SPECIAL[length]
                size = 4
            else:
                if len(self._buf) - self._pos < length:
                    return
                packet = Packet(Kind.DATA, bytes(self._buf[self._pos + 4 : self._pos + length]))
                size = length
            self._pos += size
            self.consumed += size
            yield packet

    def skim(self) -> tuple[int, Packet | None]:
        """Step over every complete packet without making objects of them: how many there
        were, and the last one (how a request ends is all a framing check needs)."""
        buf, pos, end = self._buf, self._pos, len(self._buf)
        count, last_at, last_length = 0, -1, 0
        while end - pos >= 4:
            length = parse_length(bytes(buf[pos : pos + 4]))
            size = 4 if length in _SPECIAL else length
            if end - pos < size:
                break
            count, last_at, last_length = count + 1, pos, length
            pos += size
        self.consumed += pos - self._pos
        self._pos = pos
        if last_at < 0:
            return 0, None
        if last_length in _SPECIAL:
            return count, _SPECIAL[last_length]
        return count, Packet(Kind.DATA, bytes(buf[last_at + 4 : last_at + last_length]))

    def pending(self) -> int:
        """Bytes fed but not yet handed out as packets."""
        return len(self._buf) - self._pos

    def rest(self) -> bytes:
        return bytes(self._buf[self._pos :])


def parse_all(data: bytes) -> list[Packet]:
    """Every packet of ``data``, which must end on a packet boundary."""
    reader = PktLineReader()
    reader.feed(data)
    packets = list(reader.packets())
    if reader.pending():
        raise PktLineError("malformed pkt-line: data ends inside a packet")
    return packets


# -- fetch requests -------------------------------------------------------------------


def wanted(data: bytes, *, limit: int) -> list[str]:
    """The object ids a fetch request's first section wants (protocol v0 or v2), at most
    ``limit`` of them; ``data`` may go on past the section and end inside a packet."""
    reader = PktLineReader()
    reader.feed(data)
    wants: list[str] = []
    try:
        for packet in reader.packets():
            if packet.kind is Kind.FLUSH or len(wants) >= limit:
                break
            if packet.kind is Kind.DATA and packet.payload.startswith(b"want "):
                oid = packet.payload[5:].split(b" ", 1)[0].split(b"\0", 1)[0].strip()
                if _WANT.fullmatch(oid):
                    wants.append(oid.decode())
    except PktLineError:
        pass  # git itself will say what is wrong with the request
    return wants


_WANT = re.compile(rb"[0-9a-f]{40}|[0-9a-f]{64}")


# -- receive-pack requests ------------------------------------------------------------

_OID = re.compile(rb"[0-9a-f]{40}")
_REF_FORBIDDEN = frozenset(" ~^:?*[\\\x7f")


@dataclass(frozen=True)
class RefUpdate:
    """One ``<old> <new> <ref>`` command of a push."""

    old: str
    new: str
    ref: str

    @property
    def is_create(self) -> bool:
        return self.old == ZERO_OID

    @property
    def is_delete(self) -> bool:
        return self.new == ZERO_OID


@dataclass(frozen=True)
class ReceiveRequest:
    """The command section of a receive-pack request: what the push wants to change."""

    commands: tuple[RefUpdate, ...]
    capabilities: tuple[str, ...] = ()
    shallow: tuple[str, ...] = ()


def check_oid(text: bytes) -> str:
    if not _OID.fullmatch(text):
        raise PktLineError(f"malformed object id {text[:64]!r}: expected 40 lowercase hex digits")
    return text.decode()


def check_ref_name(raw: bytes) -> str:
    """A full ref name as ``git check-ref-format`` accepts it, and under ``refs/``."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PktLineError(f"ref name {raw[:200]!r} is not valid UTF-8") from None
    problem = _ref_name_problem(name)
    if problem:
        raise PktLineError(f"invalid ref name {name[:200]!r}: {problem}")
    return name


def _ref_name_problem(name: str) -> str | None:
    if not name.startswith("refs/"):
        return "must start with refs/"
    if name.endswith(("/", ".")):
        return "must not end with '/' or '.'"
    if any(ord(c) < 32 for c in name) or any(c in _REF_FORBIDDEN for c in name):
        return "contains a control character, space or one of ~^:?*[\\"
    if ".." in name or "@{" in name:
        return "contains '..' or '@{'"
    for part in name.split("/"):
        if not part:
            return "contains an empty path component"
        if part.startswith(".") or part.endswith(".lock"):
            return "a component starts with '.' or ends with '.lock'"
    return None


def parse_command(payload: bytes) -> tuple[RefUpdate, tuple[str, ...] | None]:
    """One command line; the capabilities after a NUL if the line carries them."""
    line = payload.removesuffix(b"\n")
    line, nul, caps = line.partition(b"\0")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise PktLineError(f"malformed ref update {line[:200]!r}: expected '<old-oid> <new-oid> <ref>'")
    old, new, ref = parts
    update = RefUpdate(check_oid(old), check_oid(new), check_ref_name(ref))
    capabilities = tuple(caps.decode("utf-8", "replace").split()) if nul else None
    return update, capabilities


def parse_receive_request(packets: Sequence[Packet]) -> ReceiveRequest:
    """The commands of a receive-pack request: the packets before its first flush.

    The shape is ``*shallow command-with-capabilities *command``; an empty section is
    a client probing the connection (git sends a lone flush before a large push).
    """
    shallow: list[str] = []
    commands: list[RefUpdate] = []
    capabilities: tuple[str, ...] = ()
    for packet in packets:
        if packet.kind is not Kind.DATA:
            raise PktLineError(f"unexpected {packet.kind.value} packet in the ref update commands")
        payload = packet.payload
        if payload.startswith(b"shallow ") and not commands:
            shallow.append(check_oid(payload.removeprefix(b"shallow ").removesuffix(b"\n")))
            continue
        if payload.startswith(b"push-cert"):
            raise PktLineError("signed pushes are not supported by this server")
        update, caps = parse_command(payload)
        if not commands:
            capabilities = caps or ()
        elif caps is not None:
            raise PktLineError("only the first ref update may carry capabilities")
        commands.append(update)
    return ReceiveRequest(tuple(commands), capabilities, tuple(shallow))
