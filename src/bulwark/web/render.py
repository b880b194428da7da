"""Templates and the headers every page carries.

Jinja2 escapes every value put into a page (``autoescape``); the only HTML that goes in unescaped
is what this package made safe itself: highlighted code (Pygments escapes the source) and README
content, rendered by markdown-it and then cleaned by nh3. Pages are rendered on a worker thread,
so a large tree or diff never holds up the event loop.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

HERE = Path(__file__).parent

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache, private",
}


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("year", 31536000), ("month", 2592000), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def path_url(path: str) -> str:
    """A repository path in a URL: each segment quoted, the slashes kept."""
    return quote(path, safe="/")


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["size"] = _size
    env.filters["q"] = path_url
    env.filters["short"] = lambda sha: sha[:7]
    env.filters["isodate"] = lambda when: when.isoformat() if when else ""
    return env


async def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context`` and what every page shows (who is signed in, the
    node's state, the form token), with the security headers."""
    values = {**getattr(request.state, "web", {}), **context}
    body = await run_in_threadpool(environment().get_template(template).render, **values)
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A friendly page for an error; rendered here and now (it is small)."""
    values = {**getattr(request.state, "web", {}), "status": status, "message": message}
    values.setdefault("viewer", None)
    values.setdefault("csrf", "")
    values.setdefault("read_only", None)
    body = environment().get_template("error.html").render(**values)
    return HTMLResponse(body, status_code=status, headers=HEADERS)


_MARKDOWN = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table").enable("strikethrough")
# What a README may keep: formatting, links and images, no scripts, styles, forms or frames.
_TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em",
         "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span",
         "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul"}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"},
               "td": {"align"}, "th": {"align"}, "ol": {"start"}}


def markdown(text: str) -> Markup:
    """A README rendered to HTML and cleaned of anything that could run or restyle the page."""
    html = _MARKDOWN.render(text)
    clean = nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
                      link_rel="nofollow noopener noreferrer")
    return Markup(clean)
