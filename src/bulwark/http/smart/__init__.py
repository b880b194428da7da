"""Git smart HTTP: ``info/refs``, ``git-upload-pack`` and ``git-receive-pack``.

The real ``git upload-pack|receive-pack --stateless-rpc`` does the protocol work;
this module decides who may talk to it, checks the request's framing before git
starts, and streams bytes both ways with bounded memory whatever the pack size.
Clients see what ``git http-backend`` would answer.

Submodules: ``handlers`` (the routes), ``access``, ``body``, ``session`` (the git process) and ``cluster``.
"""

from __future__ import annotations

from bulwark.errors import UnsupportedMediaType
from bulwark.http.smart.body import REFUSAL_DRAIN_LIMIT
from bulwark.http.smart.cluster import CATCH_UP_WAIT, WANTS_CHECKED
from bulwark.http.smart.handlers import (
    FETCH_READ_WHOLE,
    LS_REFS_KEPT_LIMIT,
    UPLOAD_BODY_LIMIT,
    info_refs,
    receive_pack,
    routes,
    upload_pack,
)
from bulwark.http.smart.session import NO_CACHE, SEND_STALL_TIMEOUT, GitResponse

__all__ = [
    "CATCH_UP_WAIT",
    "FETCH_READ_WHOLE",
    "LS_REFS_KEPT_LIMIT",
    "NO_CACHE",
    "REFUSAL_DRAIN_LIMIT",
    "SEND_STALL_TIMEOUT",
    "UPLOAD_BODY_LIMIT",
    "WANTS_CHECKED",
    "GitResponse",
    "UnsupportedMediaType",
    "info_refs",
    "receive_pack",
    "routes",
    "upload_pack",
]
