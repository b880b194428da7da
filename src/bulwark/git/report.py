"""Receive-pack answers that tell a pushing user why, in git's own words.

A push refused over HTTP with a bare status code reaches the user as "RPC failed ... the
remote end hung up unexpectedly". Answered instead with receive-pack's report (``unpack
ok`` then ``ng <ref> <reason>`` per command) and the reason on the progress band, git
prints ``remote: <reason>`` and ``! [remote rejected] main -> main (<reason>)``, as it does
for its own refusals. These functions build such answers, or rewrite git's answer when the
cluster did not acknowledge a push git had accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

from bulwark.git import pktline
from bulwark.git.pktline import Kind, PktLineError

# Sideband payloads stay well under the 64k pkt-line bound.
_BAND_CHUNK = 32 * 1024
# git shows the ``ng`` reason in parentheses on one line: keep it short.
_REASON_LIMIT = 300


def uses_sideband(capabilities: Sequence[str]) -> bool:
    return "side-band-64k" in capabilities or "side-band" in capabilities


def one_line(text: str, limit: int = _REASON_LIMIT) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def refusal(refs: Sequence[str], reason: str, capabilities: Sequence[str]) -> bytes:
    """Receive-pack's answer refusing every ref of a push, with ``reason`` for each."""
    report = [b"unpack ok\n", *(f"ng {ref} {one_line(reason)}\n".encode() for ref in refs)]
    return _answer(report, _messages(reason), capabilities)


def rewrite(output: bytes, reason: str, capabilities: Sequence[str], *, refused: str | None = None) -> bytes:
    """Git's answer to a push that the cluster did not acknowledge: every ref git reported
    ``ok`` becomes ``ng`` with ``reason``; a ref git refused because the replicas voted
    against it (``refused``) gets that reason instead of git's "failed to update ref".
    Anything that cannot be parsed is replaced by a plain refusal of nothing."""
    try:
        bands, report = _split(output, uses_sideband(capabilities))
    except (ValueError, PktLineError):
        return _answer([b"unpack ok\n"], _messages(reason), capabilities)
    lines: list[bytes] = []
    for line in report:
        text = line.decode("utf-8", "replace").rstrip("\n")
        if text.startswith("ok "):
            lines.append(f"ng {text[3:].split(' ')[0]} {one_line(reason)}\n".encode())
        elif text.startswith("ng ") and refused is not None and _vote_failure(text):
            lines.append(f"ng {text.split(' ')[1]} {one_line(refused)}\n".encode())
        else:
            lines.append(line)
    return _answer(lines, bands + _messages(refused or reason), capabilities)


def explain_refusal(output: bytes, refused: str, capabilities: Sequence[str]) -> bytes:
    """Git's answer to a push whose ref update the replicas voted down, with their reason."""
    return rewrite(output, refused, capabilities, refused=refused) if b"ng " in output else output


def _vote_failure(text: str) -> bool:
    # What receive-pack says when the reference-transaction hook refused the "prepared" state.
    return "failed to update ref" in text or "reference-transaction" in text or "transaction" in text


def _messages(reason: str) -> list[bytes]:
    return [f"{line}\n".encode() for line in reason.splitlines() if line.strip()]


def _split(output: bytes, sideband: bool) -> tuple[list[bytes], list[bytes]]:
    """Git's answer as (progress messages, report lines)."""
    packets = pktline.parse_all(output)
    if not sideband:
        return [], [p.payload for p in packets if p.kind is Kind.DATA]
    inner = bytearray()
    progress: list[bytes] = []
    for packet in packets:
        if packet.kind is not Kind.DATA or not packet.payload:
            continue
        band, data = packet.payload[0], packet.payload[1:]
        if band == 1:
            inner += data
        elif band == 2:
            progress.append(data)
        else:
            raise ValueError("git reported a fatal error on band 3")
    return progress, [p.payload for p in pktline.parse_all(bytes(inner)) if p.kind is Kind.DATA]


def _answer(report: Sequence[bytes], messages: Sequence[bytes], capabilities: Sequence[str]) -> bytes:
    body = b"".join(pktline.encode(line) for line in report) + pktline.flush()
    if not uses_sideband(capabilities):
        # Without a progress band there is nowhere for messages: the report says it all.
        return body
    out = bytearray()
    for message in messages:
        out += pktline.encode(b"\x02" + message)
    for start in range(0, len(body), _BAND_CHUNK):
        out += pktline.encode(b"\x01" + body[start:start + _BAND_CHUNK])
    return bytes(out + pktline.flush())

