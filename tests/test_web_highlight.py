"""Highlighted lines: escaped, one per source line, and kept within their byte budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from bulwark.web import highlight
from bulwark.web.kept import Kept


def test_lines_are_escaped_and_split_at_every_line_end() -> None:
    source = 'def main():\n    """a\n    string"""\n    return "<script>" + 1\n'
    out, cut = highlight.lines("app.py", source)
    assert not cut and len(out) == 4
    assert "<script>" not in "".join(out) and "&lt;script&gt;" in out[3]
    assert out[1].count("<span") == out[1].count("</span>")  # a string spanning lines is closed on each


def test_kept_values_are_reused_and_stay_within_their_budget() -> None:
    kept: Kept[str] = Kept(max_bytes=200_000)
    made: list[int] = []

    def make(i: int) -> str:
        made.append(i)
        return "x" * 12_000

    first = kept.get("a", lambda: make(0), len)
    assert kept.get("a", lambda: make(1), len) is first and made == [0]
    for i in range(50):
        kept.get(i, cast(Callable[[], str], lambda i=i: make(i)), len)  # mypy infers no lambda with a default
        assert kept.bytes <= 200_000
    kept.get("a", lambda: make(99), len)
    assert made[-1] == 99  # dropped long ago, made again
    kept.get("huge", lambda: "y" * 60_000, len)  # a quarter of the budget or more is never kept
    assert kept.get("huge", lambda: "z", len) == "z"
