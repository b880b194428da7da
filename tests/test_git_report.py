"""Receive-pack answers built and rewritten so that git shows the reason for a refused push."""

from __future__ import annotations

from bulwark.git import pktline, report
from bulwark.git.pktline import Kind

SIDEBAND = ("report-status", "side-band-64k")


def decode(answer: bytes, sideband: bool = True) -> tuple[list[str], list[str]]:
    """(messages on the progress band, report lines) of a receive-pack answer."""
    packets = [p for p in pktline.parse_all(answer) if p.kind is Kind.DATA]
    if not sideband:
        return [], [p.payload.decode() for p in packets]
    inner = b"".join(p.payload[1:] for p in packets if p.payload[0] == 1)
    messages = [p.payload[1:].decode() for p in packets if p.payload[0] == 2]
    return messages, [p.payload.decode() for p in pktline.parse_all(inner) if p.kind is Kind.DATA]


def git_answer(lines: list[str], progress: list[str]) -> bytes:
    inner = b"".join(pktline.encode(line) for line in lines) + pktline.flush()
    out = b"".join(pktline.encode(b"\x02" + m.encode()) for m in progress)
    return out + pktline.encode(b"\x01" + inner) + pktline.flush()


def test_a_refusal_names_every_ref_and_says_why_on_the_progress_band() -> None:
    answer = report.refusal(["refs/heads/main", "refs/tags/v1"], "only 1 of 3 replicas\nare up", SIDEBAND)
    messages, lines = decode(answer)
    assert messages == ["only 1 of 3 replicas\n", "are up\n"]
    assert lines == ["unpack ok\n", "ng refs/heads/main only 1 of 3 replicas are up\n",
                     "ng refs/tags/v1 only 1 of 3 replicas are up\n"]


def test_without_sideband_the_report_alone_carries_the_reason() -> None:
    _, lines = decode(report.refusal(["refs/heads/main"], "busy", ("report-status",)), sideband=False)
    assert lines == ["unpack ok\n", "ng refs/heads/main busy\n"]


def test_an_unacknowledged_push_turns_git_s_ok_into_ng_and_keeps_its_own_refusals() -> None:
    output = git_answer(["unpack ok\n", "ok refs/heads/a\n", "ng refs/heads/b non-fast-forward\n"], ["hello\n"])
    messages, lines = decode(report.rewrite(output, "push failed: 1 of 3", SIDEBAND))
    assert lines == ["unpack ok\n", "ng refs/heads/a push failed: 1 of 3\n", "ng refs/heads/b non-fast-forward\n"]
    assert messages == ["hello\n", "push failed: 1 of 3\n"]


def test_a_ref_the_replicas_voted_down_gets_their_reason() -> None:
    output = git_answer(["unpack ok\n", "ng refs/heads/a failed to update ref\n", "ok refs/heads/b\n"], [])
    _, lines = decode(report.explain_refusal(output, "only 1 of 3 replicas agreed", SIDEBAND))
    assert lines[1] == "ng refs/heads/a only 1 of 3 replicas agreed\n"
    assert lines[2] == "ng refs/heads/b only 1 of 3 replicas agreed\n"


def test_an_answer_that_cannot_be_parsed_still_refuses() -> None:
    messages, lines = decode(report.rewrite(b"garbage", "push failed", SIDEBAND))
    assert lines == ["unpack ok\n"] and messages == ["push failed\n"]


def test_long_reasons_are_cut_to_one_line() -> None:
    assert len(report.one_line("x " * 1000)) == 300 and "\n" not in report.one_line("a\nb")
