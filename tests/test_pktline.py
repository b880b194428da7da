"""pkt-line framing and receive-pack command parsing: pure, no server."""

from __future__ import annotations

import pytest

from bulwark.git import pktline
from bulwark.git.pktline import (
    DELIM,
    FLUSH,
    RESPONSE_END,
    Kind,
    Packet,
    PktLineError,
    PktLineReader,
    parse_all,
    parse_receive_request,
)

A = "a" * 40
B = "b" * 40
Z = "0" * 40


def data(payload: bytes) -> Packet:
    return Packet(Kind.DATA, payload)


def test_encode_and_parse_round_trip() -> None:
    raw = pktline.encode("hello\n") + b"0001" + pktline.encode(b"") + b"0002" + pktline.flush()
    assert raw.startswith(b"000ahello\n0001")
    assert parse_all(raw) == [data(b"hello\n"), DELIM, data(b""), RESPONSE_END, FLUSH]


def test_reader_is_incremental_byte_by_byte() -> None:
    raw = pktline.encode("want " + A + "\n") + pktline.encode("done\n") + b"0000PACK..."
    reader = PktLineReader()
    got: list[Packet] = []
    for i in range(len(raw)):
        reader.feed(raw[i : i + 1])
        for packet in reader.packets():
            got.append(packet)
            if packet is FLUSH:
                break
        if got and got[-1] is FLUSH:
            break
    assert got == [data(f"want {A}\n".encode()), data(b"done\n"), FLUSH]
    # What follows the flush is not parsed: it may be a packfile.
    reader.feed(raw[i + 1 :])
    assert reader.rest() == b"PACK..."


def test_reader_stops_where_the_caller_stops() -> None:
    reader = PktLineReader()
    reader.feed(b"0000" + b"not pkt-lines at all")
    it = reader.packets()
    assert next(it) is FLUSH
    assert reader.rest() == b"not pkt-lines at all"


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"zzzz", "bad length header"),
        (b"00g4", "bad length header"),
        (b"0003", "0003"),
        (b"fff1" + b"x" * 70000, "exceeds 65520"),
        (b"ffff", "exceeds 65520"),
        (b"-004", "bad length header"),
        (b" 004", "bad length header"),
    ],
)
def test_bad_lengths_are_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(PktLineError, match=message):
        parse_all(raw)


def test_largest_packet_is_accepted_and_truncation_detected() -> None:
    payload = b"x" * pktline.MAX_PAYLOAD
    assert parse_all(pktline.encode(payload)) == [data(payload)]
    with pytest.raises(ValueError):
        pktline.encode(payload + b"x")
    with pytest.raises(PktLineError, match="ends inside a packet"):
        parse_all(pktline.encode("hello")[:-1])


def test_pktline_errors_are_bad_requests() -> None:
    with pytest.raises(PktLineError) as info:
        parse_all(b"0003")
    assert info.value.status_code == 400


def test_receive_request_with_capabilities_and_shallow() -> None:
    packets = [
        data(f"shallow {B}\n".encode()),
        data(f"{Z} {A} refs/heads/main\0report-status side-band-64k agent=git/2.39\n".encode()),
        data(f"{A} {Z} refs/heads/old".encode()),
        data(f"{A} {B} refs/tags/v1.0\n".encode()),
    ]
    req = parse_receive_request(packets)
    assert req.shallow == (B,)
    assert req.capabilities == ("report-status", "side-band-64k", "agent=git/2.39")
    assert [(c.old, c.new, c.ref) for c in req.commands] == [
        (Z, A, "refs/heads/main"),
        (A, Z, "refs/heads/old"),
        (A, B, "refs/tags/v1.0"),
    ]
    assert req.commands[0].is_create and req.commands[1].is_delete
    assert not req.commands[2].is_create and not req.commands[2].is_delete


def test_empty_receive_request_is_a_probe() -> None:
    req = parse_receive_request([])
    assert req.commands == () and req.capabilities == ()


@pytest.mark.parametrize(
    "line, message",
    [
        (f"{A} {B}", "expected '<old-oid> <new-oid> <ref>'"),
        (f"{A} {B} refs/heads/x extra", "expected"),
        (f"{A[:-1]} {B} refs/heads/x", "malformed object id"),
        (f"{A.upper()} {B} refs/heads/x", "malformed object id"),
        (f"{'g' * 40} {B} refs/heads/x", "malformed object id"),
        (f"{A} {B} heads/x", "must start with refs/"),
        (f"{A} {B} HEAD", "must start with refs/"),
        (f"{A} {B} refs/heads/../../config", "'..'"),
        (f"{A} {B} refs/heads/a\x01b", "control character"),
        (f"{A} {B} refs/heads/a\x7fb", "control character"),
        (f"{A} {B} refs/heads/a~1", "control character"),
        (f"{A} {B} refs/heads/a:b", "control character"),
        (f"{A} {B} refs/heads/a[b", "control character"),
        (f"{A} {B} refs/heads/a\\b", "control character"),
        (f"{A} {B} refs/heads/a@{{1}}", "'@{'"),
        (f"{A} {B} refs/heads//a", "empty path component"),
        (f"{A} {B} refs/heads/", "must not end with"),
        (f"{A} {B} refs/heads/a.", "must not end with"),
        (f"{A} {B} refs/heads/.hidden", "starts with '.'"),
        (f"{A} {B} refs/heads/main.lock", "ends with '.lock'"),
    ],
)
def test_bad_commands_are_rejected(line: str, message: str) -> None:
    with pytest.raises(PktLineError, match=message):
        parse_receive_request([data(line.encode() + b"\0report-status")])


def test_ref_names_git_accepts_are_accepted() -> None:
    for name in ("refs/heads/feature/x-1_2", "refs/tags/v1.0.0", "refs/heads/ünïcode", "refs/notes/commits"):
        req = parse_receive_request([data(f"{Z} {A} {name}".encode())])
        assert req.commands[0].ref == name


def test_only_the_first_command_carries_capabilities() -> None:
    packets = [data(f"{Z} {A} refs/heads/a\0report-status".encode()), data(f"{Z} {A} refs/heads/b\0x".encode())]
    with pytest.raises(PktLineError, match="only the first"):
        parse_receive_request(packets)


def test_special_packets_and_signed_pushes_are_rejected_in_commands() -> None:
    with pytest.raises(PktLineError, match="delim"):
        parse_receive_request([DELIM])
    with pytest.raises(PktLineError, match="signed pushes"):
        parse_receive_request([data(b"push-cert\0report-status\n")])
    with pytest.raises(PktLineError, match="UTF-8"):
        parse_receive_request([data(f"{Z} {A} refs/heads/".encode() + b"\xff")])


def test_skim_steps_over_what_packets_would_hand_out() -> None:
    data = pktline.encode("want 1\n") + b"0004" + pktline.flush() + pktline.encode("done\n") + b"00"
    reader, skimmer = PktLineReader(), PktLineReader()
    reader.feed(data)
    skimmer.feed(data)
    handed = list(reader.packets())
    count, last = skimmer.skim()
    assert count == len(handed) == 4 and last == handed[-1] == Packet(Kind.DATA, b"done\n")
    assert skimmer.consumed == reader.consumed and skimmer.pending() == reader.pending() == 2
    skimmer.feed(b"00")
    assert skimmer.skim() == (1, pktline.FLUSH)


def test_wanted_reads_the_wants_of_v0_and_v2_fetches_up_to_the_first_flush() -> None:
    v0 = (pktline.encode(f"want {A} multi_ack_detailed side-band-64k\n") + pktline.encode(f"want {B}\n")
          + pktline.flush() + pktline.encode(f"have {Z}\n") + pktline.encode("done\n"))
    assert pktline.wanted(v0, limit=10) == [A, B]
    v2 = (pktline.encode("command=fetch\n") + pktline.encode("agent=git/2\n") + b"0001"
          + pktline.encode(f"want {B}\n") + pktline.encode("want-ref refs/heads/main\n")
          + pktline.encode(f"have {A}\n") + pktline.encode("done\n") + pktline.flush())
    assert pktline.wanted(v2, limit=10) == [B]
    assert pktline.wanted(v0, limit=1) == [A]
    # Cut inside a packet, or not pkt-lines at all: what could be read, and no error (git will say).
    assert pktline.wanted(v0[:90], limit=10) == [A]
    assert pktline.wanted(b"zzzz" + v0, limit=10) == []
    assert pktline.wanted(pktline.encode("want not-an-id\n"), limit=10) == []
