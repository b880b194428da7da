"""Cursors of lists in name order: where the next page starts, carried in the next page's link.

A cursor holds the place of the last repository of a page (its owner's login and its name, folded)
and a fingerprint of the list it was made for (the path, filters and order), as URL-safe base64 of
JSON. It tells nothing the page did not show. A cursor that does not decode, or was made for another
list, is refused with a 422 naming the parameter, never taken for a place in the wrong list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from starlette.requests import Request

from bulwark.errors import InvalidInput

MAX_CURSOR = 1024
_NOT_OURS = "cursor is not one this list gave out: follow the Link header, or use page= instead"


def _fingerprint(request: Request) -> str:
    query = sorted((k, v) for k, v in request.query_params.multi_items() if k not in ("page", "per_page", "cursor"))
    return hashlib.sha256(json.dumps([request.url.path, query]).encode()).hexdigest()[:16]


def encode(request: Request, place: tuple[str, str]) -> str:
    raw = json.dumps({"l": _fingerprint(request), "k": list(place)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(request: Request) -> tuple[str, str] | None:
    """The place the request's ``cursor`` holds; None when there is none."""
    text = request.query_params.get("cursor")
    if text is None:
        return None
    if not text or len(text) > MAX_CURSOR:
        raise InvalidInput(_NOT_OURS, field="cursor")
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidInput(_NOT_OURS, field="cursor") from None
    if not isinstance(data, dict) or data.get("l") != _fingerprint(request):
        raise InvalidInput(_NOT_OURS, field="cursor")
    place = data.get("k")
    if (
        not isinstance(place, list)
        or len(place) != 2
        or not all(isinstance(part, str) and 0 < len(part) <= 255 for part in place)
    ):
        raise InvalidInput(_NOT_OURS, field="cursor")
    return place[0], place[1]
