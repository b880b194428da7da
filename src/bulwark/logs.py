"""Logging set-up: one JSON object per line, or plain text for people."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "bulwark.access":
            # Access lines are JSON already: merge them instead of quoting them.
            payload = {"time": _now(), "level": record.levelname.lower(), "logger": record.name, **json.loads(message)}
        else:
            payload = {"time": _now(), "level": record.levelname.lower(), "logger": record.name, "message": message}
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
