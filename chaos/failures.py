"""What a failed git command told its user, sorted into the kinds the checker rules on.

Bulwark promises that every refusal reads as git's own: ``! [remote rejected] main -> main
(reason)`` or ``remote: reason`` lines (an HTTP error with a plain-text body, which git shows
line by line). A bare HTTP status, a broken connection or "the remote end hung up
unexpectedly" are what a refusal must never look like.
"""

from __future__ import annotations

import enum
import re


class Failure(enum.StrEnum):
    REFUSED = "refused"  # in git's words: a [remote rejected] line or remote: lines
    REJECTED = "rejected"  # git's own non-fast-forward refusal: another writer won the race
    HUNG_UP = "hung up"  # the connection broke: hung up, RPC failed, early EOF, empty reply
    BARE_5XX = "bare 5xx"  # an HTTP 5xx without a word (a load balancer with no node to send to, or worse)
    UNREACHABLE = "unreachable"  # nothing listened: connection refused or failed
    CLIENT_ERROR = "4xx"  # authentication or not found: never expected of our own repositories
    TIMEOUT = "timeout"  # still running at the client's deadline
    OTHER = "other"


_HUNG_UP = re.compile(
    r"hung up unexpectedly|RPC failed|unexpected disconnect|early EOF|Empty reply from server"
    r"|transfer closed with|Recv failure|Connection reset by peer|protocol error: bad pack header"
)
_REMOTE_REJECTED = re.compile(r"! \[remote rejected\] .+ \(.+\)")
_REMOTE_LINE = re.compile(r"^remote: \S", re.MULTILINE)
_REJECTED = re.compile(r"! \[rejected\] .+ \((fetch first|non-fast-forward|stale info)\)")
_STATUS = re.compile(r"returned error: (\d{3})")
_UNREACHABLE = re.compile(r"Failed to connect|Couldn't connect|Connection refused|Could not resolve host")


def classify(error: str, timed_out: bool = False) -> Failure:
    """The kind of a failure from git's stderr (``timed_out``: the client gave up on it)."""
    if timed_out:
        return Failure.TIMEOUT
    if _REMOTE_REJECTED.search(error):
        return Failure.REFUSED
    if _HUNG_UP.search(error):
        return Failure.HUNG_UP
    if _REMOTE_LINE.search(error):
        return Failure.REFUSED
    if _REJECTED.search(error):
        return Failure.REJECTED
    status = _STATUS.search(error)
    if status and status.group(1).startswith("5"):
        return Failure.BARE_5XX
    if _UNREACHABLE.search(error):
        return Failure.UNREACHABLE
    if status and status.group(1).startswith("4"):
        return Failure.CLIENT_ERROR
    return Failure.OTHER


def reason(error: str) -> str:
    """The refusal's reason, for tallies: the text in parentheses, or the first remote: line."""
    match = re.search(r"! \[remote rejected\] \S+ -> \S+ \((.+)\)", error)
    if match:
        text = match.group(1)
    else:
        line = next((ln for ln in error.splitlines() if ln.startswith("remote: ")), error.strip())
        text = line.removeprefix("remote: ")
    # Numbers and hexadecimal ids vary from one refusal to the next; the tally counts the words.
    text = re.sub(r"\b[0-9a-f]{7,40}\b", "<id>", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:160]
