"""The one exception hierarchy of Bulwark.

Every error a user can cause derives from :class:`BulwarkError` and carries the
HTTP status it maps to, so the HTTP layer and the CLI turn it into a clear
message without knowing which layer raised it.
"""

from __future__ import annotations


class BulwarkError(Exception):
    """Base of every error Bulwark raises on purpose."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(BulwarkError):
    """The request or command is malformed or fails validation."""

    status_code = 422

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BadRequest(BulwarkError):
    """The request cannot be parsed at all (bad JSON, bad pkt-line)."""

    status_code = 400


class ClientGone(BadRequest):
    """The client disconnected; nobody reads the answer, but the request must still end."""


class Unauthenticated(BulwarkError):
    """Credentials are missing or wrong."""

    status_code = 401


class Forbidden(BulwarkError):
    """The caller is known but may not do this."""

    status_code = 403


class NotFound(BulwarkError):
    """The thing does not exist, or the caller may not know it exists."""

    status_code = 404


class AlreadyExists(BulwarkError):
    """A unique name (login, repository name) is taken."""

    status_code = 422


class Conflict(BulwarkError):
    """The operation conflicts with the current state (a concurrent change)."""

    status_code = 409


class PayloadTooLarge(BulwarkError):
    status_code = 413


class Unavailable(BulwarkError):
    """The node does not take this kind of request now (maintenance, replica, fenced)."""

    status_code = 503


class ReadOnlyNode(Unavailable):
    """This node takes no writes: it is a replica, or a primary that was superseded."""


class StoreError(BulwarkError):
    """The metadata store failed in a way the caller cannot fix."""

    status_code = 500


class GitError(BulwarkError):
    """A git subprocess failed."""

    status_code = 500


class PeerUnreachable(BulwarkError):
    """Another node could not be reached (refused, timed out, or answered garbage)."""

    status_code = 502


class StaleEpoch(BulwarkError):
    """A node-to-node request carried an epoch other than the receiver's."""

    status_code = 409


class ValidationFailed(InvalidInput):
    """A field breaks a rule of its own (too long, not text): GitHub's "Validation Failed",
    which names the resource, the field and the rule (``code``)."""

    def __init__(self, message: str, *, resource: str, field: str, code: str = "custom") -> None:
        super().__init__(message, field=field)
        self.resource = resource
        self.code = code


class UnsupportedMediaType(BulwarkError):
    """A request body in a format the endpoint does not take (a form where JSON is expected)."""

    status_code = 415


class TooManyAttempts(Forbidden):
    """Sign-ins for this login or from this address failed too often: wait ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(Unavailable):
    """The node refuses this now rather than queue it (too much of the same work in progress)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after
