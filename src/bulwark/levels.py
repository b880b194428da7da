"""The levels every check and status command speaks."""

from __future__ import annotations

import enum


class Level(enum.IntEnum):
    """Nagios levels; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3
