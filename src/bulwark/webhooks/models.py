"""The values of webhooks: a hook, one delivery of an event to it, and one attempt of a delivery."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class ContentType(enum.StrEnum):
    JSON = "json"
    FORM = "form"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"


@dataclass(frozen=True)
class Hook:
    """A repository's hook (``repo_id`` set) or an organization's (``org_id`` set)."""

    id: int
    repo_id: int | None
    org_id: int | None
    url: str
    content_type: ContentType
    secret: str  # kept in clear: the HMAC needs it; never shown back
    insecure_ssl: bool
    events: tuple[str, ...]
    active: bool
    created_at: datetime
    updated_at: datetime

    def wants(self, event: str) -> bool:
        return self.active and (event == "ping" or "*" in self.events or event in self.events)


@dataclass(frozen=True)
class Delivery:
    """One event for one hook. ``guid`` is the X-GitHub-Delivery header: the same on every retry
    and on a redelivery, so receivers can tell a delivery they have seen."""

    id: int
    guid: str
    hook_id: int
    repo_id: int | None  # the repository the event is about: deliveries of one keep their order
    event: str
    action: str | None
    payload: str  # the JSON body, fixed when the event happened
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_at: datetime
    redelivery: bool = False
    delivered_at: datetime | None = None
    status_code: int | None = None
    duration_ms: int | None = None


@dataclass(frozen=True)
class Attempt:
    id: int
    delivery_id: int
    at: datetime
    status_code: int | None
    duration_ms: int
    request_headers: dict[str, str]
    response_headers: dict[str, str]
    response_body: str
    error: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class HookFigures:
    """What monitoring reads: the outbox and how delivery goes."""

    pending: int
    oldest_pending_at: datetime | None
    attempts: int
    failed_attempts: int
    gave_up: int
    failing_hooks: int
