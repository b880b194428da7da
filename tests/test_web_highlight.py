"""Highlighted lines: escaped, one per source line, and kept within their byte budget."""

from __future__ import annotations

from bulwark.web import highlight


def test_lines_are_escaped_and_split_at_every_line_end() -> None:
    source = 'def main():\n    """a\n    string"""\n    return "<script>" + 1\n'
    out, cut = highlight.lines("app.py", source)
    assert not cut and len(out) == 4
    assert "<script>" not in "".join(out) and "&lt;script&gt;" in out[3]
    assert out[1].count("<span") == out[1].count("</span>")  # a string spanning lines is closed on each


def test_kept_renderings_are_reused_and_stay_within_their_budget() -> None:
    kept = highlight.Kept(max_bytes=200_000)
    text = "x = 1\n" * 100
    first = kept.lines("a" * 40, "a.py", text)
    assert kept.lines("a" * 40, "a.py", text)[0] is first[0]
    for i in range(50):
        kept.lines(f"{i:040x}", "b.py", text)
    assert kept._bytes <= 200_000
    assert kept.lines("a" * 40, "a.py", text)[0] is not first[0]  # dropped long ago, rendered again
