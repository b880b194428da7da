"""Source code as table rows of highlighted lines, each with its own anchor (``#L12``).

Pygments' lexer gives the tokens; the lines are put together here so that a token spanning lines
(a long string, a comment block) is split at each line end and every line stands on its own.
Pygments' own HTML formatter cannot do that and name anchors the way GitHub's links do.
"""

from __future__ import annotations

import functools

from markupsafe import Markup, escape
from pygments import lex
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.token import STANDARD_TYPES, _TokenType
from pygments.util import ClassNotFound

# Beyond these the file is shown plain: a lexer's time grows with the text.
MAX_HIGHLIGHT_BYTES = 512 * 1024
MAX_LINES = 20_000


def _lexer(filename: str, text: str) -> Lexer:
    if len(text) > MAX_HIGHLIGHT_BYTES:
        return TextLexer()
    try:
        return get_lexer_for_filename(filename, text, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False, ensurenl=False)


def _css_class(kind: _TokenType) -> str:
    while kind not in STANDARD_TYPES:
        kind = kind.parent
    return STANDARD_TYPES[kind]


def lines(filename: str, text: str) -> tuple[list[Markup], bool]:
    """The highlighted lines of ``text`` (escaped, safe to put in a page), and whether they were cut."""
    out: list[Markup] = []
    current: list[str] = []
    last_css, run = "", ""  # adjacent tokens of one class share one span: a smaller page

    def flush() -> None:
        nonlocal run
        if run:
            current.append(f'<span class="{last_css}">{escape(run)}</span>' if last_css else str(escape(run)))
        run = ""

    for kind, value in lex(text, _lexer(filename, text)):
        css = _css_class(kind) if value.strip() else last_css  # whitespace takes its neighbour's class
        pieces = value.split("\n")
        for i, piece in enumerate(pieces):
            if i > 0:
                flush()
                out.append(Markup("".join(current)))
                current = []
                if len(out) >= MAX_LINES:
                    return out, True
            if piece:
                if css != last_css:
                    flush()
                    last_css = css
                run += piece
    flush()
    if current:
        out.append(Markup("".join(current)))
    return out, False




def rows(lines: list[Markup]) -> Markup:
    """The table rows of a file page, each line with its anchor: put together once per blob."""
    return Markup("".join(
        f'<tr id="L{n}"><td class="num"><a href="#L{n}">{n}</a></td><td class="text">{line}</td></tr>\n'
        for n, line in enumerate(lines, 1)))


@functools.cache
def stylesheet() -> str:
    return str(HtmlFormatter(style="default").get_style_defs(".code"))
