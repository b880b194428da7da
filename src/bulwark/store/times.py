"""Times as both backends store them: UTC, fixed width, microseconds.

Equal instants give equal text and text order is time order, so the SQLite and etcd
stores agree and a record round-trips unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bulwark.errors import InvalidInput


def dump_time(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"time {value.isoformat()} has no time zone")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def dump_optional_time(value: datetime | None) -> str | None:
    return None if value is None else dump_time(value)


def load_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def load_optional_time(text: str | None) -> datetime | None:
    return None if text is None else load_time(text)
